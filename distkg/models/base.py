"""The small interface every TKG embedding model fills in (in the spirit of tkbc).

A model turns a batch of queries into query representations, holds a table of candidate entity
representations, and matches the two into scores. Everything else is built on these three:
1-vs-all training, chunked filtered ranking (``score_candidates`` is the evaluation Scorer
protocol), and distillation (FitNet reads the query representation, RKD the entity table).

A query row is ``(entity, relation, t0, t1)``: the known entity, the relation (``r + R`` for head
queries, answered through reciprocal relations), and the time ids of the fact's start and end
(equal for point-in-time data).

Interval rule (docs/PROTOCOL.md): a fact with two ends is represented at the mean of its start and end
time representations. For the bilinear models (TA-DistMult, TNTComplEx) this is exactly the mean
of the scores at the two ends; for TTransE it is the translation by the interval's midpoint.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from distkg.data import TKGDataset


class ScoringForm(ABC):
    """A backbone's scoring over supplied vectors: how the query's entity, relation and time vectors
    join into the query representation, and how it is matched with candidate vectors.

    Why apart from the model: the KG model scores its own embedding tables with it, and the LLM
    teacher (distkg.llm.teacher) scores the LLM's projected embeddings E(p) with the same form, so
    P_LLM is the backbone's own scoring (docs/METHOD.md), written once.
    """

    @abstractmethod
    def join(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The operator that joins an entity vector with a relation (or relation-time) vector."""

    @abstractmethod
    def match(self, q: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """[B, D] x [C, D] -> [B, C] scores."""

    def query(self, e: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The query from separate entity, relation and time vectors: (e . r) . t with . the join."""
        return self.join(self.join(e, r), t)

    def table_query(self, entity: torch.Tensor, relation: torch.Tensor, time: torch.Tensor,
                    queries: torch.Tensor) -> torch.Tensor:
        """Query representations of [B, 4] ``queries`` looked up in embedding tables, with the
        interval rule (the mean of the start and end time vectors)."""
        t = 0.5 * (time[queries[:, 2]] + time[queries[:, 3]])
        return self.query(entity[queries[:, 0]], relation[queries[:, 1]], t)


class DistMultForm(ScoringForm):
    """Trilinear (TA-DistMult): the query joins multiplicatively, candidates match by dot product."""

    def join(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b

    def match(self, q: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        # q @ candidates.T, written as linear: the same matmul here, and one Gemm with the table as its
        # (prepackable) constant in an exported ONNX file, where a MatMul after a Transpose is not
        return torch.nn.functional.linear(q, candidates)


DISTMULT = DistMultForm()


class TKGModel(nn.Module, ABC):
    """Queries -> representation, a candidate table, and a score between them."""

    dim_step: int = 1  # dims must be a multiple of this (distkg.models.check_dim)
    form: ClassVar[ScoringForm | None] = None  # the scoring over supplied vectors, where the model has one

    def __init__(self, dataset: TKGDataset, dim: int) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.num_entities = dataset.num_entities
        self.num_relations = dataset.num_relations  # base relations; 2x with reciprocals
        self.num_times = dataset.num_times
        self.dim = dim

    @abstractmethod
    def query_repr(self, queries: torch.Tensor) -> torch.Tensor:
        """[B, 4] queries -> [B, D] query representations (the FitNet hint)."""

    @abstractmethod
    def candidate_table(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """[C, D] representations of candidate entities start..stop-1."""

    @abstractmethod
    def match(self, q: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """[B, D] x [C, D] -> [B, C] scores; higher is more plausible."""

    def regularizer(self, queries: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        """Extra training penalty for a batch (N3, smoothness, ...); zero unless a model adds one."""
        return queries.new_zeros((), dtype=torch.float32)

    def entity_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """Candidate rows ``ids``, [K, D]: RKD's entity vectors and the candidates of the sampled losses.
        A lookup in the entity table where the model has one (``ent``), so with ``sparse_entities`` a
        step's gradient touches these rows only."""
        ent = getattr(self, "ent", None)
        return ent(ids) if isinstance(ent, nn.Embedding) else self.candidate_table()[ids]

    def sparse_entities(self) -> bool:
        """Make the entity table's lookups give sparse gradients, so that a step whose losses read
        entity rows only by lookup (queries' entities, ``entity_embeddings``: the sampled losses)
        costs the optimiser those rows, not all E of them (Adagrad's update of untouched rows is zero).
        False where the model has no entity table to do it on."""
        ent = getattr(self, "ent", None)
        if not isinstance(ent, nn.Embedding):
            return False
        ent.sparse = True
        return True

    # ------------------------------------------------------------------------- built on the above
    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        """Scores over all entities, [B, num_entities]."""
        return self.match(self.query_repr(queries), self.candidate_table())

    def score_candidates(self, queries: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """The evaluation Scorer protocol."""
        return self.match(self.query_repr(queries), self.candidate_table(start, stop))



class DotProductModel(TKGModel):
    """Models whose candidates are the rows of ``self.ent`` and whose score is a dot product with them."""

    ent: nn.Embedding

    def candidate_table(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return self.ent.weight[start:stop]

    def match(self, q: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return DISTMULT.match(q, candidates)


def embedding(n: int, dim: int, std: float) -> nn.Embedding:
    """An embedding table with normal(0, std) init (small init suits 1-vs-all training)."""
    emb = nn.Embedding(n, dim)
    nn.init.normal_(emb.weight, std=std)
    return emb
