"""InfoNCE fine-tuning of the LLM teacher (``llm.objective: infonce``), see docs/METHOD.md.

Why: the sampled softmax (distkg.llm.rounds) scores each query against a few dozen drawn entities, and
the LoRA step runs its texts through one forward call per token length. Strong text-encoder link
predictors instead train the encoder against many negatives with a learned temperature. Here:

- Every entity is a negative. A cache holds the pooled hidden state of every entity text under
  the adapters of its last refresh; the head projects the whole cache at every step
  (E(p) = sigmoid(W h + b), so the head sees every entity, the batch's answers included), and the
  cache is re-encoded every ``llm.refresh_every`` steps, so it follows the adapters as they move.
- LoRA learns through the query side: the query's entity, relation and time texts are encoded
  fresh, with gradients. No candidate row is fresh. A first version replaced the rows of the
  step's entities (query entities and answers) with fresh encodings: its training loss fell
  (7.0 to 6.3 in 50 steps) while validation MRR from a full refresh fell from 0.062 to 0.005, because
  the answer was always among the fresh rows and the adapters learnt to tell fresh rows from
  stale ones (docs/RESULTS.md).
- The loss is cross-entropy of the answer against all entities in the backbone's scoring form,
  times the teacher's learned logit scale (1 / temperature): InfoNCE over the entity table. The
  scores are P_LLM's own, so what is trained is what students distil from.
- False negatives masked: the other answers of the same (entity, relation', time key) among the
  TRAINING facts (the time-aware filter, distkg.evaluation.filters, over train only: validation and
  test facts are never seen in training) are left out of the softmax.
- One padded forward call per step on the step's distinct query-side texts
  (``llm.step_calls: one``), or one call per token length (``lengths``: no padding, the CPU choice);
  ``auto`` (the default) takes one on CUDA and lengths elsewhere, from the teacher's resolved device.

The steps run as rounds of distkg.training.loop (distkg.llm.rounds): the cache is refreshed at
the end of each round too, and the round's validation scores the validation subsample from it
(no extra LLM work), which gives the curve of validation MRR against fine-tuning minutes
(metrics.json ``curve``); the minutes exclude that evaluation. Batches come from a generator
seeded by (seed, step), and the checkpoint holds the cache, so a resumed run continues exactly.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from distkg.config import RunConfig
from distkg.data import TKGDataset
from distkg.evaluation import FilterIndex, QuerySet, eval_options, evaluate
from distkg.llm.teacher import LLMTeacher

log = logging.getLogger("distkg")


def masked_logits(logits: torch.Tensor, batch: QuerySet, index: FilterIndex) -> torch.Tensor:
    """``logits`` [B, E] with every other known training answer of each query's key set to -inf."""
    rows, cols = index.pairs(batch)
    if len(rows):
        logits = logits.index_put((torch.from_numpy(rows).to(logits.device), torch.from_numpy(cols).to(logits.device)),
                                  torch.tensor(float("-inf"), device=logits.device, dtype=logits.dtype))
    return logits


def step_texts(teacher: LLMTeacher, q: torch.Tensor) -> tuple[list[str], dict[str, torch.Tensor]]:
    """The step's distinct query-side texts (entities, then relations, then times) and, per kind, the sorted ids."""
    ids = {"entity": torch.unique(q[:, 0]), "relation": torch.unique(q[:, 1]),
           "time": torch.unique(torch.cat([q[:, 2], q[:, 3]]))}
    texts = [teacher.texts[kind][i] for kind in ("entity", "relation", "time") for i in ids[kind].tolist()]
    return texts, ids


def infonce_loss(teacher: LLMTeacher, cache: torch.Tensor, batch: QuerySet, index: FilterIndex,
                 step_calls: str = "one", rows: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """(loss, texts encoded) for one batch; ``cache`` [E, H] gives every candidate (module docstring:
    no candidate row is fresh). ``step_calls`` as ``llm.step_calls``. ``rows``: the batch's rows among
    the training queries (a teacher that reads queries as text leaves each one's own fact out)."""
    device = teacher.device
    q, a = torch.from_numpy(batch.queries), torch.from_numpy(batch.answers)
    table = torch.sigmoid(teacher.head(cache.to(device)))
    if teacher.query_mode == "text":  # the query's own text, fresh with gradients
        if rows is None:
            raise ValueError("a teacher that reads queries as text needs the batch's training rows")
        texts = teacher.query_texts.texts(teacher.with_rows(q, rows).numpy())
        encode = teacher.query_encoder.encode_padded if step_calls == "one" else (
            lambda x: teacher.query_encoder.encode(x, grad=True))
        query = torch.sigmoid(teacher.qhead(encode(texts).to(device)))
        logits = masked_logits(teacher.match(query, table), batch, index)
        return F.cross_entropy(logits, a.to(device)), len(set(texts))
    texts, ids = step_texts(teacher, q)
    encode = teacher.encoder.encode_padded if step_calls == "one" else lambda x: teacher.encoder.encode(x, grad=True)
    hidden = encode(texts).to(device)
    proj = torch.sigmoid(teacher.head(hidden))
    n_e, n_r = len(ids["entity"]), len(ids["relation"])
    ent, rel, tim = proj[:n_e], proj[n_e : n_e + n_r], proj[n_e + n_r :]

    def pos(kind: str, col: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(ids[kind], col.contiguous()).to(device)

    t = 0.5 * (tim[pos("time", q[:, 2])] + tim[pos("time", q[:, 3])])
    query = teacher.scoring.query(ent[pos("entity", q[:, 0])], rel[pos("relation", q[:, 1])], t)
    logits = masked_logits(teacher.match(query, table), batch, index)
    return F.cross_entropy(logits, a.to(device)), len(texts)


def full_cache(teacher: LLMTeacher, clear: bool = True, refresh: bool = False) -> dict[str, torch.Tensor]:
    """Hidden states of every entity, relation and time text under the current adapters (no grad).
    ``clear``: empty the encoder's cache first (it keeps one table per weights version otherwise);
    False where it holds this version's table already (right after the head warm-up). ``refresh``:
    only what the InfoNCE steps and their validation read (not the training queries' texts of a
    teacher reading queries as text: the steps encode theirs fresh)."""
    if clear:
        teacher.clear_caches()
    teacher.mark_updated()
    return {k: v.detach().float().cpu() for k, v in teacher.features(skip=("query",) if refresh else ()).items()}


@torch.no_grad()
def cache_valid_mrr(teacher: LLMTeacher, feats: dict[str, torch.Tensor], cfg: RunConfig, ds: TKGDataset,
                    index: FilterIndex | None, split: str = "valid") -> float:
    """Validation MRR (the subsample; ``split="test"``: the whole test split) with E(p) read from the
    refreshed cache: no extra LLM work (but a teacher reading queries as text encodes their texts)."""
    device = teacher.device
    teacher.use_tables(**{k: torch.sigmoid(teacher.head(v.to(device))) for k, v in feats.items() if k != "query"})
    data = ds.with_queries("valid", cfg.llm.valid_queries, cfg.seed) if split == "valid" else ds
    try:
        return evaluate(teacher, data, split=split, index=index, options=eval_options(cfg, device).replace(progress=False))["mrr"]
    finally:
        teacher.use_tables()
