"""The one thing the evaluator asks of a model: scores for a slice of candidate entities.

Why a slice (start, stop) and not all entities: the ranking loop bounds memory by asking for
[query_chunk, cand_chunk] blocks, so a model never has to materialise scores it cannot hold.

Query rows are ``(entity, relation, t0, t1)`` with the KNOWN entity first:
  - tail query (s, r, ?, t):  (s, r,     t0, t1), candidates are objects;
  - head query (?, r, o, t):  (o, r + R, t0, t1), candidates are subjects,
i.e. head queries are answered through reciprocal relations (as tkbc and TeLM do), so a model
scores ``2 * num_relations`` relation ids. Higher score = more plausible.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import torch


@runtime_checkable
class Scorer(Protocol):
    """What ``rank`` / ``evaluate`` call; any model can satisfy it with a thin adapter."""

    num_entities: int

    def score_candidates(self, queries: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Scores [B, stop - start] of candidates start..stop-1 for queries [B, 4] (int64)."""
        ...


QueryFn = Callable[[torch.Tensor], torch.Tensor]


class DotProductScorer:
    """score(q, c) = query_fn(q) . E[c]: the shape of most factorisation models (DistMult,
    TNTComplEx after flattening, the students); generic enough for tests and the benchmark."""

    def __init__(self, entity_emb: torch.Tensor, query_fn: QueryFn) -> None:
        if entity_emb.ndim != 2:
            raise ValueError(f"entity_emb must be [N, d], got {tuple(entity_emb.shape)}")
        self.entity_emb = entity_emb
        self.query_fn = query_fn
        self.num_entities = int(entity_emb.shape[0])

    @classmethod
    def distmult(cls, entity_emb: torch.Tensor, relation_emb: torch.Tensor) -> "DotProductScorer":
        """DistMult-like: query vector e_entity * w_relation (relation_emb holds 2R rows,
        the reciprocal relations included); time is ignored."""

        def query_fn(q: torch.Tensor) -> torch.Tensor:
            return entity_emb[q[:, 0]] * relation_emb[q[:, 1]]

        return cls(entity_emb, query_fn)

    def score_candidates(self, queries: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return self.query_fn(queries) @ self.entity_emb[start:stop].T
