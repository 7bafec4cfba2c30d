"""InfoNCE fine-tuning of the LLM teacher (``llm.objective: infonce``), see docs/METHOD.md.

Why: the sampled softmax (finetune.py) scores each query against a few dozen drawn entities, and
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

Each full refresh also scores the validation subsample from the cache (no extra LLM work), which
gives the curve of validation MRR against fine-tuning minutes (metrics.json ``curve``); the
minutes exclude that evaluation. Batches come from a generator seeded by (seed, step), and the
checkpoint holds the cache, so a resumed run continues exactly.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from distkg.config import RunConfig
from distkg.data import TKGDataset
from distkg.errors import ConfigError
from distkg.evaluation import FilterIndex, QuerySet, build_queries, evaluate
from distkg.llm.teacher import LLMTeacher, compose
from distkg.training.trainer import TrainingDiverged

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
                 step_calls: str = "one") -> tuple[torch.Tensor, int]:
    """(loss, texts encoded) for one batch; ``cache`` [E, H] gives every candidate (module docstring:
    no candidate row is fresh). ``step_calls`` as ``llm.step_calls``."""
    device = teacher.device
    q, a = torch.from_numpy(batch.queries), torch.from_numpy(batch.answers)
    texts, ids = step_texts(teacher, q)
    encode = teacher.encoder.encode_padded if step_calls == "one" else lambda x: teacher.encoder.encode(x, grad=True)
    hidden = encode(texts).to(device)
    proj = torch.sigmoid(teacher.head(hidden))
    n_e, n_r = len(ids["entity"]), len(ids["relation"])
    ent, rel, tim = proj[:n_e], proj[n_e : n_e + n_r], proj[n_e + n_r :]

    def pos(kind: str, col: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(ids[kind], col.contiguous()).to(device)

    t = 0.5 * (tim[pos("time", q[:, 2])] + tim[pos("time", q[:, 3])])
    query = compose(teacher.form, ent[pos("entity", q[:, 0])], rel[pos("relation", q[:, 1])], t)
    table = torch.sigmoid(teacher.head(cache.to(device)))
    logits = masked_logits(teacher.match(query, table), batch, index)
    return F.cross_entropy(logits, a.to(device)), len(texts)


def full_cache(teacher: LLMTeacher, clear: bool = True) -> dict[str, torch.Tensor]:
    """Hidden states of every entity, relation and time text under the current adapters (no grad).
    ``clear``: empty the encoder's cache first (it keeps one table per weights version otherwise);
    False where it holds this version's table already (right after the head warm-up)."""
    if clear:
        teacher.encoder.clear()
    teacher.encoder.mark_updated()
    return {k: v.detach().float().cpu() for k, v in teacher.features().items()}


@torch.no_grad()
def cache_valid_mrr(teacher: LLMTeacher, feats: dict[str, torch.Tensor], cfg: RunConfig, ds: TKGDataset,
                    index: FilterIndex | None) -> float:
    """Validation MRR (the subsample) with E(p) read from the refreshed cache: no extra LLM work."""
    from distkg.llm.finetune import _valid_view

    device = teacher.device
    teacher.use_tables(**{k: torch.sigmoid(teacher.head(v.to(device))) for k, v in feats.items()})
    try:
        return evaluate(teacher, _valid_view(ds, cfg.llm.valid_queries, cfg.seed), split="valid", filter=cfg.eval.filter,
                        ties=cfg.eval.ties, progress=False, index=index)["mrr"]
    finally:
        teacher.use_tables()


def run_infonce(teacher: LLMTeacher, cfg: RunConfig, ds: TKGDataset, optimizer: torch.optim.Optimizer, state: dict,
                ckpt: Path) -> None:
    """Train adapters + head with InfoNCE until ``llm.steps`` or ``llm.max_minutes``; updates ``state``
    (step, seconds, losses, curve, llm_texts, cache) and checkpoints it with finetune's format."""
    from distkg.llm.finetune import _checkpoint, process_group

    if process_group()[1] > 1:
        raise ConfigError("llm.objective=infonce runs in one process (its entity cache is not sharded); "
                          "set runtime.workers=1 or llm.objective=sampled")
    lc = cfg.llm
    step_calls = lc.step_calls if lc.step_calls != "auto" else ("one" if teacher.device.type == "cuda" else "lengths")
    train_qs = build_queries(ds.splits["train"], ds.num_relations)
    train_index = FilterIndex(ds.splits["train"], ds.num_relations, "time")
    eval_index = FilterIndex.from_dataset(ds, cfg.eval.filter) if cfg.eval.filter != "none" else None
    if lc.step_head_lr is not None:  # the head group of finetune's optimiser: after the warm-up it needs small steps
        optimizer.param_groups[1]["lr"] = lc.step_head_lr
    state.setdefault("curve", [])
    state.setdefault("llm_texts", 0)
    started = time.perf_counter() - state["seconds"]

    def refresh() -> torch.Tensor:
        nonlocal started
        teacher.eval()  # no adapter dropout in the cache
        feats = full_cache(teacher, clear=state["step"] > 0)
        teacher.train()
        t = time.perf_counter()
        mrr = cache_valid_mrr(teacher, feats, cfg, ds, eval_index)
        started += time.perf_counter() - t  # the curve's evaluation is measurement, not fine-tuning
        minutes = (time.perf_counter() - started) / 60
        state["curve"].append({"step": state["step"], "minutes": round(minutes, 2), "valid_mrr": round(mrr, 4),
                               "texts": state["llm_texts"],  # CPU minutes of this process: on a shared machine
                               "process_cpu_minutes": round(time.process_time() / 60, 2)})  # they buy the work
        log.info("InfoNCE step %d (%.1f min, %d texts through the LLM): validation MRR %.4f", state["step"], minutes,
                 state["llm_texts"], mrr)
        return feats["entity"]

    cache = state.pop("cache", None)
    if cache is None:
        cache = refresh()
    bar = tqdm(total=lc.steps, initial=state["step"], desc="LLM InfoNCE", disable=not lc.progress, mininterval=2)
    teacher.train()
    while state["step"] < lc.steps:
        if (lc.max_minutes is not None and state["step"] >= lc.min_steps
                and time.perf_counter() - started > 60 * lc.max_minutes):
            log.info("time budget of %.1f min reached at step %d", lc.max_minutes, state["step"])
            break
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + state["step"])
        idx = torch.randint(0, len(train_qs), (lc.queries_per_step,), generator=gen).numpy()
        batch = QuerySet(train_qs.queries[idx], train_qs.answers[idx], train_qs.keys[idx], num_tail=0)
        loss, n_texts = infonce_loss(teacher, cache, batch, train_index, step_calls)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"LLM fine-tuning stopped: loss {loss.item()} at step {state['step'] + 1}; "
                                   f"the last good checkpoint is {ckpt if ckpt.exists() else 'not written yet'}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        teacher.encoder.mark_updated()
        state["step"] += 1
        state["llm_texts"] += n_texts
        state["losses"].append(round(loss.item(), 5))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(state['losses'][-20:]):.3f}")
        if state["step"] % lc.refresh_every == 0:  # also at the last step, so a checkpoint there holds what follows it
            cache = refresh()
        state["seconds"] = time.perf_counter() - started
        if state["step"] % lc.checkpoint_every == 0 or state["step"] == lc.steps:
            _checkpoint(teacher, cfg, optimizer, {**state, "cache": cache}, ckpt)
            log.info("InfoNCE step %d loss %.3f (%.1f min, %d texts through the LLM)", state["step"],
                     np.mean(state["losses"][-lc.checkpoint_every:]), state["seconds"] / 60, state["llm_texts"])
    bar.close()
    state["seconds"] = time.perf_counter() - started
    if state["curve"][-1]["step"] != state["step"]:  # the last point; evaluation then reads the encoder's cache
        refresh()
