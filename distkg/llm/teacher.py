"""The LLM teacher (docs/METHOD.md): an LLM encodes entity, relation and time texts, a learned projection
maps them into the KG space, E(p) = sigmoid(W LLM(p) + b), and a backbone's scoring form over those
embeddings gives scores over all entities; softmax of them is P_LLM.

Two ways to read a query (``llm.query``):
  composed  (below) the query is made of E(text of e), E(text of r') and E(text of the time), joined
            by the backbone's form: everything the LLM contributes factors into three tables.
  text      the query is ONE text, the question and the query entity's known training facts
            (distkg.llm.prompts.QueryTexts), encoded by the LM into E(p_q) = sigmoid(W_q LLM(p_q) + b_q);
            P_LLM is the backbone's match of E(p_q) with every entity's E(p): <E(p_q), E(p)> for
            TA-DistMult, -||E(p_q) - E(p)|| for TTransE. The query's projection W_q is its own (the
            query and the candidates are different kinds of text, as in bi-encoder link predictors).

Composed query side: the query (e, r', t0, t1) is made of E(text of e), E(text of r') and E(text of the
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

import numpy as np
import torch
from torch import nn

from distkg.data import TKGDataset
from distkg.errors import ConfigError
from distkg.evaluation import build_queries
from distkg.llm.encoder import EncoderStats, TextEncoder
from distkg.llm.loading import LoadedLM
from distkg.llm.prompts import QueryTexts
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


QUERY_MODES = ("composed", "text")


class LLMTeacher(TKGModel):
    def __init__(self, lm: LoadedLM, dataset: TKGDataset, dim: int = 400, form: str = "tadistmult",
                 max_tokens: int = 32, texts_per_forward: int = 64, entity_texts: list[str] | None = None,
                 query_texts: QueryTexts | None = None, query_tokens: int = 48) -> None:
        """``query_texts``: read each query as one text (``llm.query: text``), cut at ``query_tokens``."""
        super().__init__(dataset, dim)
        try:
            self.scoring = scoring_form(form)  # the backbone's own scoring over supplied vectors
        except (ValueError, ConfigError) as e:
            raise ValueError(f"llm.form: {e}") from None
        self.lm_model = lm.model  # registered, so .parameters() includes the LoRA adapters
        stats = EncoderStats()  # one count of LLM work for both encoders
        self.encoder = TextEncoder(lm, max_tokens=max_tokens, batch_size=texts_per_forward, stats=stats)
        hidden = lm.model.config.hidden_size
        self.head = nn.Linear(hidden, dim)
        self.query_mode = "composed" if query_texts is None else "text"
        # sigmoid embeddings are all positive, so raw scores are large and close together: start the
        # scale at 1/sqrt(dim) so initial logits differ by O(0.1), not O(10) (a saturated softmax)
        # shape [1], not a scalar: DeepSpeed's engine broadcasts parameters as bytes, which 0-d tensors refuse
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1 / math.sqrt(dim))))
        self.form = form
        self.device = lm.device  # the LM's resolved device (distkg.device); the head lives there too
        self.given: dict[str, torch.Tensor] = {}  # kind -> every E(p) of that kind, computed elsewhere
        entities = list(dataset.entity_text) if entity_texts is None else list(entity_texts)  # distkg.llm.prompts
        if query_texts is None:
            self.texts = {
                "entity": entities,
                "relation": list(dataset.relation_text) + [f"inverse of {t}" for t in dataset.relation_text],
                "time": time_texts(dataset),
            }
        else:
            self.qhead = nn.Linear(hidden, dim)
            self.query_texts = query_texts
            self.query_encoder = TextEncoder(lm, max_tokens=query_tokens, batch_size=texts_per_forward, stats=stats)
            # the training queries' texts (each leaving out its own fact), each distinct text once;
            # train_query_text[i] is training query i's
            rows = query_texts.training()
            distinct = sorted(set(rows))
            where = {t: i for i, t in enumerate(distinct)}
            self.train_query_text = torch.tensor([where[t] for t in rows], dtype=torch.long)
            self.texts = {"entity": entities, "query": distinct}

    # ------------------------------------------------------------------------------- encoders
    def encoder_for(self, kind: str) -> TextEncoder:
        """The encoder of a kind of text: query texts are cut at their own length (``llm.query_tokens``)."""
        return self.query_encoder if kind == "query" else self.encoder

    def mark_updated(self) -> None:
        """Call after the LM's weights change: every encoder's cache is then of an older version."""
        self.encoder.mark_updated()
        if self.query_mode == "text":
            self.query_encoder.mark_updated()

    def clear_caches(self) -> None:
        """Drop every encoder's in-memory encodings (they are kept per weights version otherwise)."""
        self.encoder.clear()
        if self.query_mode == "text":
            self.query_encoder.clear()

    def projection(self, kind: str) -> nn.Linear:
        """W, b of E(p) = sigmoid(W LLM(p) + b) for a kind of text (queries read as text have their own)."""
        return self.qhead if kind == "query" else self.head

    # ------------------------------------------------------------------------------- embeddings
    def embed(self, kind: str, ids: torch.Tensor, grad: bool = False) -> torch.Tensor:
        """E(p) for the texts of ``ids``: each distinct text is encoded once (per call, and per
        weights version through the encoder's cache when ``grad`` is False), or read from a table
        given to ``use_tables`` (a scoring pool shares its shards' entity tables that way)."""
        return self.embed_all([(kind, ids)], grad)[0]

    def embed_all(self, wanted: list[tuple[str, torch.Tensor]], grad: bool = False) -> list[torch.Tensor]:
        """``embed`` of several (kind, ids) at once, with ONE encoder call per encoder for all their texts:
        a fine-tuning step's entities, relations, times and candidates go through the LM together
        (on a GPU one padded forward instead of one per kind, or per kind and token length)."""
        out: list[torch.Tensor | None] = [None] * len(wanted)
        todo: dict[int, list[tuple[int, str, list[str], torch.Tensor]]] = {}  # encoder -> its (i, kind, texts, inverse)
        for i, (kind, ids) in enumerate(wanted):
            if not grad and kind in self.given:
                out[i] = self.given[kind][ids.cpu()].to(self.device)
                continue
            uniq, inverse = torch.unique(ids.cpu(), return_inverse=True)
            todo.setdefault(id(self.encoder_for(kind)), []).append((i, kind, [self.texts[kind][j] for j in uniq.tolist()], inverse))
        for group in todo.values():
            encoder = self.encoder_for(group[0][1])
            hidden = encoder.encode([t for _, _, texts, _ in group for t in texts], grad=grad).to(self.device)
            start = 0
            for i, kind, texts, inverse in group:
                proj = torch.sigmoid(self.projection(kind)(hidden[start: start + len(texts)]))
                out[i] = proj[inverse.to(self.device)]
                start += len(texts)
        return out  # type: ignore[return-value]

    def _query_from(self, queries: torch.Tensor, e: torch.Tensor, r: torch.Tensor, both: torch.Tensor) -> torch.Tensor:
        return self.scoring.query(e, r, 0.5 * (both[: len(queries)] + both[len(queries):]))

    def _query_parts(self, queries: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        return [("entity", queries[:, 0]), ("relation", queries[:, 1]), ("time", torch.cat([queries[:, 2], queries[:, 3]]))]

    def _query(self, queries: torch.Tensor, grad: bool) -> torch.Tensor:
        if self.query_mode == "text":
            return self.text_query(queries, grad)
        return self._query_from(queries, *self.embed_all(self._query_parts(queries), grad))

    def text_query(self, queries: torch.Tensor, grad: bool = False) -> torch.Tensor:
        """E(p_q) of queries read as text (``llm.query: text``): [B, 4] rows, or [B, 5] whose last column
        is the training row each was made from (its fact left out of its text; -1: none, as for a
        validation or test query). ``with_rows`` makes the [B, 5] form."""
        hidden = self.query_encoder.encode(self.query_texts.texts(queries.cpu().numpy()), grad=grad)
        return torch.sigmoid(self.qhead(hidden.to(self.device)))

    def with_rows(self, queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """[B, 5]: training queries with their rows among ``training_queries`` (the training fact each
        was made from, whose text leaves it out); what a scoring pool sends for a student's batch."""
        n = len(self.query_texts.train)
        return torch.cat([queries[:, :4].cpu(), (rows.cpu() % n).unsqueeze(1)], dim=1)

    def query_repr(self, queries: torch.Tensor) -> torch.Tensor:
        return self._query(queries, grad=False)

    def candidate_table(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        stop = self.num_entities if stop is None else stop
        return self.embed("entity", torch.arange(start, stop), grad=False)

    def match(self, q: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return scaled_match(self.scoring, self.logit_scale, q, candidates)

    def use_tables(self, **tables: torch.Tensor) -> None:
        """Read E(p) of these kinds (e.g. ``entity=``) from the given tables instead of the LLM. They
        hold for the current weights only: call ``use_tables()`` to drop them after changing weights."""
        self.given = dict(tables)

    # --------------------------------------------------------------------------------- training
    def features(self, skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
        """Pooled hidden states of every text (entity, relation and time texts; or entity texts and the
        training queries' texts) under the current weights; ``skip``: kinds left out."""
        return {kind: self.encoder_for(kind).encode(texts) for kind, texts in self.texts.items() if kind not in skip}

    def score_from_features(self, feats: dict[str, torch.Tensor], queries: torch.Tensor,
                            rows: torch.Tensor | None = None) -> torch.Tensor:
        """[B, E] scores from precomputed hidden states: only the heads (and scale) get gradients,
        so the head can see every entity at every step (a full softmax), thousands of queries/s.
        ``rows``: the queries' rows among the training queries (read as text: their texts' features)."""
        entity = torch.sigmoid(self.head(feats["entity"]))
        if self.query_mode == "text":
            if rows is None:
                raise ValueError("a teacher that reads queries as text scores training queries by their rows")
            q = torch.sigmoid(self.qhead(feats["query"][self.train_query_text[rows.cpu()].to(feats["query"].device)]))
            return self.match(q, entity)
        proj = {k: torch.sigmoid(self.head(v)) for k, v in feats.items() if k != "entity"}
        q = self.scoring.table_query(entity, proj["relation"], proj["time"], queries)
        return self.match(q, entity)

    def score_sampled(self, queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """[B, C] scores against a sampled candidate set, with gradients through LoRA and the head."""
        if self.query_mode == "text":  # [B, 5] training queries with their rows (with_rows)
            return self.match(self.text_query(queries, grad=True), self.embed("entity", candidates, grad=True))
        e, r, both, c = self.embed_all([*self._query_parts(queries), ("entity", candidates)], grad=True)
        return self.match(self._query_from(queries, e, r, both), c)

    @torch.inference_mode()
    def tables(self, dataset: TKGDataset | None = None) -> dict:
        """Every entity, relation and time embedding E(p) plus the scoring form and scale: all that
        P_LLM needs for any query, so students never run the LLM (distkg.distill.teachers). Read as
        text: every entity's E(p), E(p_q) of every training query by its row (``train_query``, its own
        fact left out of its text) and of every validation and test query (``query_keys``, ``query``)."""
        scale = {"form": self.form, "logit_scale": self.logit_scale.detach().float().cpu(), "query_mode": self.query_mode}
        if self.query_mode == "composed":
            return {kind: self.embed(kind, torch.arange(len(texts))).float().cpu() for kind, texts in self.texts.items()} | scale
        keys = torch.from_numpy(np.unique(np.concatenate([build_queries(dataset.splits[s], dataset.num_relations).queries
                                                          for s in ("valid", "test")]), axis=0))
        query = torch.cat([self.text_query(chunk).float().cpu() for chunk in keys.split(4096)])
        train = self.embed("query", torch.arange(len(self.texts["query"]))).float().cpu()[self.train_query_text]
        return {"entity": self.embed("entity", torch.arange(self.num_entities)).float().cpu(), "train_query": train,
                "query_keys": keys, "query": query} | scale

    @torch.inference_mode()
    def distribution(self, queries: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """P_LLM: softmax over all entities of the scores at ``temperature``."""
        return torch.softmax(self.score_candidates(queries, 0, self.num_entities) / temperature, dim=1)
