"""The LLM teacher (docs/METHOD.md): an LLM encodes entity, relation and time texts, a learned projection
maps them into the KG space, E(p) = sigmoid(W LLM(p) + b), and a backbone's scoring form over those
embeddings gives scores over all entities; softmax of them is P_LLM.

Query side: the query (e, r', t0, t1) is made of E(text of e), E(text of r') and E(text of the
time). Head queries use the reciprocal relation, whose text is "inverse of <relation>". Time texts
are the ISO date for daily data and "from <first> to <last>" of the year bucket for interval
data ("unknown time" for the unknown id); an interval fact uses the mean of its two ends' time
embeddings (the interval rule of distkg.models.base).

Scoring (``llm.form`` names the backbone): the backbone model's own scoring form over supplied
vectors (distkg.models, ``ScoringForm``: the KG model scores its tables with it too), scaled by a
learned temperature because sigmoid embeddings live in (0, 1) and their raw scores are too flat
for a useful softmax:
  tadistmult  <E(e) * E(r') * E(t), E(c)>     (relation and time joined as TA-DistMult joins e and r_t)
  ttranse     -||E(e) + E(r') + E(t) - E(c)||
"""

from __future__ import annotations

import math

import torch
from torch import nn

from distkg.data import TKGDataset
from distkg.errors import ConfigError
from distkg.llm.encoder import TextEncoder
from distkg.llm.loading import LoadedLM
from distkg.models import ScoringForm, scoring_form
from distkg.models.base import TKGModel


def scaled_match(form: ScoringForm, log_scale: torch.Tensor, q: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """[B, D] x [C, D] -> [B, C] scores in the backbone's form, times the learned scale."""
    return form.match(q, candidates) * log_scale.exp()


def time_texts(dataset: TKGDataset) -> list[str]:
    if dataset.time_kind == "point":
        return list(dataset.time_labels)
    texts = [f"from {lo} to {hi}" if lo != hi else f"in {lo}" for lo, hi in dataset.buckets]
    return texts + ["unknown time"]


class LLMTeacher(TKGModel):
    def __init__(self, lm: LoadedLM, dataset: TKGDataset, dim: int = 400, form: str = "tadistmult",
                 max_tokens: int = 32, encode_batch: int = 64, entity_texts: list[str] | None = None) -> None:
        super().__init__(dataset, dim)
        try:
            self.scoring = scoring_form(form)  # the backbone's own scoring over supplied vectors
        except (ValueError, ConfigError) as e:
            raise ValueError(f"llm.form: {e}") from None
        self.lm_model = lm.model  # registered, so .parameters() includes the LoRA adapters
        self.encoder = TextEncoder(lm, max_tokens=max_tokens, batch_size=encode_batch)
        hidden = lm.model.config.hidden_size
        self.head = nn.Linear(hidden, dim)
        # sigmoid embeddings are all positive, so raw scores are large and close together: start the
        # scale at 1/sqrt(dim) so initial logits differ by O(0.1), not O(10) (a saturated softmax)
        # shape [1], not a scalar: DeepSpeed's engine broadcasts parameters as bytes, which 0-d tensors refuse
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1 / math.sqrt(dim))))
        self.form = form
        self.device = lm.device  # the LM's resolved device (distkg.device); the head lives there too
        self.given: dict[str, torch.Tensor] = {}  # kind -> every E(p) of that kind, computed elsewhere
        self.texts = {
            "entity": list(dataset.entity_text) if entity_texts is None else list(entity_texts),  # distkg.llm.prompts
            "relation": list(dataset.relation_text) + [f"inverse of {t}" for t in dataset.relation_text],
            "time": time_texts(dataset),
        }

    # ------------------------------------------------------------------------------- embeddings
    def embed(self, kind: str, ids: torch.Tensor, grad: bool = False) -> torch.Tensor:
        """E(p) for the texts of ``ids``: each distinct text is encoded once (per call, and per
        weights version through the encoder's cache when ``grad`` is False), or read from a table
        given to ``use_tables`` (a scoring pool shares its shards' entity tables that way)."""
        return self.embed_all([(kind, ids)], grad)[0]

    def embed_all(self, wanted: list[tuple[str, torch.Tensor]], grad: bool = False) -> list[torch.Tensor]:
        """``embed`` of several (kind, ids) at once, with ONE encoder call for all their texts: a
        fine-tuning step's entities, relations, times and candidates go through the LM together
        (on a GPU one padded forward instead of one per kind, or per kind and token length)."""
        out: list[torch.Tensor | None] = [None] * len(wanted)
        todo: list[tuple[int, list[str], torch.Tensor]] = []
        for i, (kind, ids) in enumerate(wanted):
            if not grad and kind in self.given:
                out[i] = self.given[kind][ids.cpu()].to(self.device)
                continue
            uniq, inverse = torch.unique(ids.cpu(), return_inverse=True)
            todo.append((i, [self.texts[kind][j] for j in uniq.tolist()], inverse))
        if todo:
            hidden = self.encoder.encode([t for _, texts, _ in todo for t in texts], grad=grad).to(self.device)
            proj = torch.sigmoid(self.head(hidden))
            start = 0
            for i, texts, inverse in todo:
                out[i] = proj[start: start + len(texts)][inverse.to(self.device)]
                start += len(texts)
        return out  # type: ignore[return-value]

    def _query_from(self, queries: torch.Tensor, e: torch.Tensor, r: torch.Tensor, both: torch.Tensor) -> torch.Tensor:
        return self.scoring.query(e, r, 0.5 * (both[: len(queries)] + both[len(queries):]))

    def _query_parts(self, queries: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        return [("entity", queries[:, 0]), ("relation", queries[:, 1]), ("time", torch.cat([queries[:, 2], queries[:, 3]]))]

    def _query(self, queries: torch.Tensor, grad: bool) -> torch.Tensor:
        return self._query_from(queries, *self.embed_all(self._query_parts(queries), grad))

    def query_repr(self, queries: torch.Tensor) -> torch.Tensor:
        return self._query(queries, grad=False)

    def candidate_table(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        stop = self.num_entities if stop is None else stop
        return self.embed("entity", torch.arange(start, stop), grad=False)

    def match(self, q: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return scaled_match(self.scoring, self.logit_scale, q, candidates)

    def match_pairs(self, q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.scoring.match_pairs(q, c) * self.logit_scale.exp()

    def use_tables(self, **tables: torch.Tensor) -> None:
        """Read E(p) of these kinds (e.g. ``entity=``) from the given tables instead of the LLM. They
        hold for the current weights only: call ``use_tables()`` to drop them after changing weights."""
        self.given = dict(tables)

    # --------------------------------------------------------------------------------- training
    def features(self) -> dict[str, torch.Tensor]:
        """Pooled hidden states of every entity, relation and time text under the current weights."""
        return {kind: self.encoder.encode(texts) for kind, texts in self.texts.items()}

    def score_from_features(self, feats: dict[str, torch.Tensor], queries: torch.Tensor) -> torch.Tensor:
        """[B, E] scores from precomputed hidden states: only the head (and scale) gets gradients,
        so the head can see every entity at every step (a full softmax), thousands of queries/s."""
        proj = {k: torch.sigmoid(self.head(v)) for k, v in feats.items()}
        q = self.scoring.table_query(proj["entity"], proj["relation"], proj["time"], queries)
        return self.match(q, proj["entity"])

    def score_sampled(self, queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """[B, C] scores against a sampled candidate set, with gradients through LoRA and the head."""
        e, r, both, c = self.embed_all([*self._query_parts(queries), ("entity", candidates)], grad=True)
        return self.match(self._query_from(queries, e, r, both), c)

    @torch.inference_mode()
    def tables(self) -> dict:
        """Every entity, relation and time embedding E(p) plus the scoring form and scale: all that
        P_LLM needs for any query, so students never run the LLM (distkg.distill.teachers)."""
        return {kind: self.embed(kind, torch.arange(len(texts))).float().cpu() for kind, texts in self.texts.items()} | {
            "form": self.form, "logit_scale": self.logit_scale.detach().float().cpu()}

    @torch.inference_mode()
    def distribution(self, queries: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """P_LLM: softmax over all entities of the scores at ``temperature``."""
        return torch.softmax(self.score_candidates(queries, 0, self.num_entities) / temperature, dim=1)
