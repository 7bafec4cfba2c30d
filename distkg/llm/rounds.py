"""The LLM teacher's fine-tuning as phases of distkg.training.loop (docs/METHOD.md).

Why here and not a loop of its own: the loop gives the LLM teacher what it gives the KG trainer
(exact resume, NaN guard, progress with rate and ETA, curve, early stopping on validation MRR);
this module only says what one round of each phase does:

- ``head``: one epoch of the head warm-up (the projection and scale, trained 1-vs-all on the
  frozen LM's features of every text, encoded once per process), ``llm.head_epochs`` rounds. With
  ``llm.text_folds`` k > 1 (``auto``: decided from the data) the queries of fold f are scored on
  the features of fold f's held-out entity texts (distkg.llm.prompts; k more encodings of the
  entity texts); validation on the teacher's own texts as always.
- ``lora``: ``llm.checkpoint_every`` steps of adapters + head, with the sampled softmax (the batch's
  answers plus ``llm.negatives`` drawn entities) or InfoNCE against every entity through the
  refreshed cache (distkg.llm.contrastive). The cache is refreshed every ``llm.refresh_every`` steps
  and at the end of a round, whose validation reads it (no extra LLM work).

``llm.max_minutes`` covers both phases (the warm-up's encoding included, validation excluded): a
spent budget ends the warm-up and then the LoRA steps. Batches come
from generators seeded by (seed, step) or (seed, epoch), so a resumed run continues exactly.

What a checkpoint holds of the teacher (``TrainableWeights``): only the trained parameters (LoRA
adapters, head, logit scale); the frozen base LM is rebuilt from ``llm.model``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from distkg.config import RunConfig
from distkg.device import placement, release_shm_buffer
from distkg.data import TKGDataset
from distkg.errors import ConfigError
from distkg.evaluation import FilterIndex, QuerySet, build_queries
from distkg.llm import contrastive
from distkg.llm.encoder import transformer_body
from distkg.llm.features import frozen_features, held_out_features
from distkg.llm.loading import partitioned
from distkg.llm.prompts import SHORTCUT_REPEATS, held_out_texts, repeat_share
from distkg.llm.teacher import LLMTeacher
from distkg.training.checkpoint import atomic_save, read_checkpoint
from distkg.training.loop import Loop, Optimizers, Phase
from distkg.training.trainer import training_queries

log = logging.getLogger("distkg")


def head_params(teacher: LLMTeacher) -> list[torch.nn.Parameter]:
    """The projection heads (the query's too, when it is read as text) and the logit scale: what the warm-up trains."""
    heads = [teacher.head, teacher.qhead] if teacher.query_mode == "text" else [teacher.head]
    return [p for h in heads for p in h.parameters()] + [teacher.logit_scale]


class TrainableWeights:
    """The teacher's trained parameters by name (LoRA adapters, head, logit scale), as a state dict:
    what the loop's checkpoints and best.pt hold (the 4-bit base LM is not saved)."""

    def __init__(self, teacher: LLMTeacher) -> None:
        self.teacher = teacher
        self.params = {n: p for n, p in teacher.named_parameters() if p.requires_grad}

    @property
    def collective(self) -> bool:
        """Under ZeRO-3 the weights are partitioned: reading or writing them gathers, on every rank."""
        return partitioned(self.params.values())

    def state_dict(self) -> dict[str, torch.Tensor]:
        with gathered(self.params.values()):
            return {n: p.detach().clone() for n, p in self.params.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy the saved values in; a RuntimeError (named by the checkpoint reader) when they do not fit."""
        if set(state) != set(self.params):
            missing, extra = sorted(set(self.params) - set(state)), sorted(set(state) - set(self.params))
            raise RuntimeError(f"trainable parameters differ: missing {missing[:3]}, unexpected {extra[:3]}")
        with torch.no_grad(), gathered(self.params.values(), modifier_rank=0):  # every rank read the same file
            for n, p in self.params.items():
                if p.shape != state[n].shape:
                    raise RuntimeError(f"size mismatch for {n}: {tuple(state[n].shape)} saved, {tuple(p.shape)} here")
                p.copy_(state[n])
        self.teacher.mark_updated()


def gathered(params, modifier_rank: int | None = None):
    """The full values of the ZeRO-3-partitioned ones of ``params`` inside the block (a collective:
    every rank enters it; with ``modifier_rank`` that rank's changes are kept); else nothing to do."""
    params = [p for p in params if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


def head_optimizer(teacher: LLMTeacher, cfg: RunConfig) -> torch.optim.Optimizer:
    """The head warm-up's optimiser: Adam at ``llm.head_lr``."""
    return torch.optim.Adam(head_params(teacher), lr=cfg.llm.head_lr)


@dataclass
class HeadData:
    """What the head warm-up trains on: the training queries (both directions of every training
    fact), their answers, each query's text fold, and per fold the frozen features its queries are
    scored on (one fold, ``llm.text_folds: 1``: the teacher's own texts for every query)."""

    queries: torch.Tensor
    answers: torch.Tensor
    fold: torch.Tensor
    feats: list[dict[str, torch.Tensor]]
    folds: int = 1  # held-out folds (llm.text_folds as resolved); feats[:folds] are theirs


def head_data(teacher: LLMTeacher, cfg: RunConfig, ds: TKGDataset, feats: dict[str, torch.Tensor]) -> HeadData:
    """The warm-up's ``HeadData`` on the teacher's device; ``feats`` are the features of its own texts
    (the only set with one fold; with k folds, k sets of held-out texts are encoded or read from
    ``llm.feature_cache``)."""
    train, device = ds.splits["train"], teacher.device
    queries, answers = training_queries(train, ds.num_relations)
    folds = text_folds(cfg, ds)
    if folds == 1:
        sets = [feats]
        fold = torch.zeros(len(queries), dtype=torch.long)
    else:
        row_fold, texts = held_out_texts(ds, cfg.llm.entity_facts, folds, cfg.seed)
        sets = held_out_features(teacher, cfg, texts, feats)
        fold = torch.from_numpy(np.concatenate([row_fold, row_fold]))  # tail queries, then head queries
    return HeadData(queries, answers, fold, [{k: v.to(device) for k, v in f.items()} for f in sets], folds)


def text_folds(cfg: RunConfig, ds: TKGDataset) -> int:
    """``llm.text_folds`` as a number; ``auto`` decides from the validation split's repeats of training
    triples (distkg.llm.prompts, docs/METHOD.md) and says so in the log."""
    folds = cfg.llm.text_folds
    if folds != "auto":
        return folds
    if cfg.llm.entity_text != "facts":
        return 1  # names carry no facts to hold out
    share = repeat_share(ds, "valid")
    folds = 2 if share < SHORTCUT_REPEATS else 1
    log.info("llm.text_folds=auto: %.1f%% of %s's validation triples are training triples (%s %.0f%%): %s",
             100 * share, ds.name, "under" if folds > 1 else "at least", 100 * SHORTCUT_REPEATS,
             "held-out texts in 2 folds" if folds > 1 else "every training query on its own texts")
    return folds


def lora_rounds(step: int, steps: int, every: int) -> int:
    """Rounds from ``step`` to ``steps``: one ends at each multiple of ``every`` and at ``steps``."""
    return 0 if step >= steps else math.ceil(steps / every) - step // every


def head_loss(teacher: LLMTeacher, data: HeadData, idx: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over all entities of the queries ``idx``, each scored on its fold's features."""
    device = teacher.device
    if len(data.feats) == 1:
        logits = teacher.score_from_features(data.feats[0], data.queries[idx].to(device), idx)
        return F.cross_entropy(logits, data.answers[idx].to(device))
    total = torch.zeros((), device=device)
    for f, feats in enumerate(data.feats):
        mine = idx[data.fold[idx] == f]
        if len(mine):
            logits = teacher.score_from_features(feats, data.queries[mine].to(device), mine)
            total = total + F.cross_entropy(logits, data.answers[mine].to(device), reduction="sum")
    return total / len(idx)


def head_epoch(teacher: LLMTeacher, data: HeadData, opt: torch.optim.Optimizer, cfg: RunConfig, epoch: int,
               diverged: Callable[[float, int], Exception] | None = None) -> float:
    """One epoch of the head warm-up over all training queries (batches seeded by seed and epoch); its
    mean loss. ``diverged(loss, batch)`` makes the error a non-finite loss raises. Also what
    scripts/llm_head_curve.py steps, so its curve is the warm-up's."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7919 * (epoch + 1))
    total, n = 0.0, 0
    for idx in torch.randperm(len(data.queries), generator=gen).split(cfg.llm.head_queries_per_step):
        loss = head_loss(teacher, data, idx)
        if not torch.isfinite(loss):
            raise (diverged or (lambda v, b: FloatingPointError(f"head loss {v} at batch {b}")))(loss.item(), n + 1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total, n = total + loss.item(), n + 1
    return total / n


class TeacherRounds:
    """The two phases of fine-tuning one teacher; their progress lives in the loop state's ``llm`` entry
    (step, texts through the LLM, losses, curve, the InfoNCE cache), so checkpoints carry it."""

    def __init__(self, teacher: LLMTeacher, cfg: RunConfig, ds: TKGDataset, optimizers: Optimizers, loop: Loop,
                 rank: int = 0, world: int = 1) -> None:
        self.teacher, self.cfg, self.ds, self.optimizers, self.loop = teacher, cfg, ds, optimizers, loop
        self.rank, self.world = rank, world
        self.queries, self.answers = training_queries(ds.splits["train"], ds.num_relations)
        self.eval_index = FilterIndex.from_dataset(ds, cfg.eval.filter) if cfg.eval.filter != "none" else None
        self.feats: dict[str, torch.Tensor] | None = None  # hidden states of every text ...
        self.feats_step = -1  # ... under the adapters of this step
        self.feats_from_disk = False  # read from llm.feature_cache (distkg.llm.features)
        self.head_data: HeadData | None = None  # what the warm-up trains on, made at its first epoch
        self.engine = None  # DeepSpeed ZeRO: made by start() under stage 3, else at the first LoRA round
        self.heads_opt = None  # under ZeRO-3: the heads' and logit scale's own optimiser (zero_engine)
        self.lockstep = in_lockstep(cfg, world)  # features, validation and scoring too: every rank in step
        self.cpu_mark = time.process_time()  # CPU seconds of this process already in state["llm"]["cpu_seconds"]
        llm_cfg = cfg.llm
        auto = "one" if teacher.device.type == "cuda" else "lengths"
        self.step_calls = llm_cfg.step_calls if llm_cfg.step_calls != "auto" else auto
        check_workers(cfg, world)
        if llm_cfg.objective == "infonce":
            self.train_qs = build_queries(ds.splits["train"], ds.num_relations)
            self.train_index = FilterIndex(ds.splits["train"], ds.num_relations, "time")

    # --------------------------------------------------------------------------------- phases
    def phases(self, state: dict) -> list[Phase]:
        llm_cfg = self.cfg.llm
        llm = state.setdefault("llm", {"step": 0, "llm_texts": 0, "losses": [], "curve": []})
        phases = [Phase("head", llm_cfg.head_epochs, self.head_epoch, "queries_per_second", over=self.budget_spent)
                  ] if llm_cfg.head_epochs else []
        in_lora = state["stage"] == len(phases)
        rounds = (state["stage_epoch"] if in_lora else 0) + lora_rounds(llm["step"], llm_cfg.steps, llm_cfg.checkpoint_every)
        run = self.infonce_round if llm_cfg.objective == "infonce" else self.sampled_round
        return phases + [Phase("lora", rounds, run, "texts_per_second", over=self.lora_over)]

    def budget_spent(self, state: dict) -> bool:
        """``llm.max_minutes`` spent, as rank 0 sees it (every rank stops at the same step)."""
        llm_cfg = self.cfg.llm
        return llm_cfg.max_minutes is not None and _agreed(self.loop.clock.seconds() > 60 * llm_cfg.max_minutes, self.world)

    def lora_over(self, state: dict) -> bool:
        step = state["llm"]["step"]
        return step >= self.cfg.llm.steps or self.budget_spent(state)

    # ----------------------------------------------------------------------------- validation
    def features(self, step: int) -> dict[str, torch.Tensor]:
        """Hidden states of every text under the current adapters: reused while they have not moved."""
        if self.feats is None or self.feats_step != step:
            was_training = self.teacher.training
            self.teacher.eval()  # no adapter dropout in the cache
            if step == 0 and not self.lockstep:  # adapters that never stepped: read from llm.feature_cache when on
                self.feats, self.feats_from_disk = frozen_features(self.teacher, self.cfg)
            elif step == 0:  # in lockstep no rank may read a file another rank is about to write
                self.feats = contrastive.full_cache(self.teacher, clear=False)
            else:
                self.feats = contrastive.full_cache(self.teacher, refresh=True)
            self.teacher.train(was_training)
            self.feats_step = step
        return self.feats

    def validate(self, state: dict) -> float:
        """Validation MRR (the subsample) from the features of the current weights; a curve point (with
        ``llm.curve_test`` also the test MRR, for the evidence of a curve, never to choose by)."""
        llm = state["llm"]
        feats = self.features(llm["step"])
        cpu = time.process_time()
        mrr = contrastive.cache_valid_mrr(self.teacher, feats, self.cfg, self.ds, self.eval_index)
        test = (contrastive.cache_valid_mrr(self.teacher, feats, self.cfg, self.ds, self.eval_index, split="test")
                if self.cfg.llm.curve_test else None)
        llm["eval_cpu_seconds"] = llm.get("eval_cpu_seconds", 0.0) + time.process_time() - cpu
        self.curve_point(state, mrr, test)
        return mrr

    def cpu_seconds(self, llm: dict) -> float:
        """CPU seconds of the run so far (from the rounds' start: loading the LM is left out), summed over
        the processes that ran it: a resumed run goes on from its checkpoint's count, as its clock does;
        work redone after a crash counts again."""
        now = time.process_time()
        llm["cpu_seconds"] = llm.get("cpu_seconds", 0.0) + now - self.cpu_mark
        self.cpu_mark = now
        return llm["cpu_seconds"]

    def curve_point(self, state: dict, mrr: float, test: float | None = None) -> None:
        llm = state["llm"]
        minutes = self.loop.clock.seconds() / 60
        phase = "head" if self.cfg.llm.head_epochs and state["stage"] == 0 else "lora"
        # CPU minutes of the run: on a shared machine they buy the work; the second count leaves
        # out the CPU its curve points' evaluations took (a budget of training work)
        cpu = self.cpu_seconds(llm)
        llm["curve"].append({"phase": phase, "step": llm["step"], "minutes": round(minutes, 2), "valid_mrr": round(mrr, 4),
                             **({"test_mrr": round(test, 4)} if test is not None else {}), "texts": llm["llm_texts"],
                             "process_cpu_minutes": round(cpu / 60, 2),
                             "training_cpu_minutes": round((cpu - llm.get("eval_cpu_seconds", 0.0)) / 60, 2)})
        log.info("LLM teacher at step %d (%.1f min, %d texts through the LLM): validation MRR %.4f%s", llm["step"],
                 minutes, llm["llm_texts"], mrr, "" if test is None else f", test MRR {test:.4f}")

    # ------------------------------------------------------------------------------- the rounds
    def head_epoch(self, state: dict) -> dict:
        """One epoch of the head warm-up against all entities on the frozen LM's features.

        Why: a LoRA step on a CPU costs seconds, so within a CPU budget LoRA sees few queries; the
        features of every text are computed once, and the head then trains on all training
        queries in seconds per epoch, so the LoRA steps that follow start from a head that ranks.
        """
        llm_cfg, t = self.cfg.llm, time.perf_counter()
        if self.feats is None:
            log.info("LLM head warm-up: encoding all %d texts (%s) once with the frozen LM",
                     sum(len(v) for v in self.teacher.texts.values()),
                     ", ".join(f"{len(v)} {k}" for k, v in self.teacher.texts.items()))
            self.features(state["llm"]["step"])
            log.info("encoded in %.0fs; head epoch %d of %d against all entities", time.perf_counter() - t,
                     state["stage_epoch"] + 1, llm_cfg.head_epochs)
        if self.head_data is None:
            self.head_data = head_data(self.teacher, self.cfg, self.ds, self.features(state["llm"]["step"]))
        opt = self.optimizers["head"]
        for group in opt.param_groups:  # the config's rate wins over a checkpoint's (a resume after divergence)
            group["lr"] = llm_cfg.head_lr
        epoch = state["stage_epoch"]

        def diverged(loss: float, batch: int) -> Exception:
            return self.loop.diverged("loss", loss, f"head epoch {epoch + 1}, batch {batch}")

        loss = head_epoch(self.teacher, self.head_data, opt, self.cfg, epoch, diverged)
        self.teacher.mark_updated()
        seconds = time.perf_counter() - t
        head = state["llm"].setdefault("head", {"epochs": 0, "losses": [], "seconds": 0.0})
        head.update(epochs=head["epochs"] + 1, losses=[*head["losses"], round(loss, 4)],
                    seconds=round(head["seconds"] + seconds, 1), feature_cache_hit=self.feats_from_disk)
        return {"loss": loss, "seconds": round(seconds, 2), "queries_per_second": round(len(self.queries) / seconds, 1)}

    def start(self, state: dict) -> None:
        """Before the first round. Under ZeRO-3 the LM was loaded partitioned (distkg.llm.loading), so
        it cannot run a forward call, the warm-up's features included, until the engine that gathers
        its weights exists: it is made here. Stages 1-2 make theirs at the first LoRA round, as the
        warm-up's own optimiser steps the heads, which their engine's gradient hooks would claim."""
        if self.lockstep:
            self.set_rates()
            self.start_zero(state)

    def start_zero(self, state: dict) -> None:
        """The ZeRO engine (zero_engine), with the optimiser partition of the round resumed from."""
        loaded = lm_bytes(self.teacher.lm_model) if self.lockstep else 0  # before the adapters are partitioned
        self.engine, self.heads_opt = zero_engine(self.teacher, self.optimizers["lora"], self.cfg)
        if self.lockstep:
            full = lm_bytes(self.teacher.lm_model, whole=True)
            for encoder in (self.teacher.encoder, getattr(self.teacher, "query_encoder", None)):
                if encoder is not None:  # one padded call per step on every rank, not one per token length
                    encoder.exact_lengths = False
            held = lm_bytes(self.teacher.lm_model)
            state["llm"]["zero"] = {"stage": 3, "lm_bytes_full": full, "lm_bytes_loaded": loaded, "lm_bytes_held": held,
                                    "share": round(held / full, 4), "loaded_share": round(loaded / full, 4)}
            log.info("ZeRO-3: this worker loaded %.1f MB and holds %.1f MB of the LM's %.1f MB (%.0f%%)",
                     loaded / 2**20, held / 2**20, full / 2**20, 100 * held / full)
        load_zero_state(self.engine, self.heads_opt, self.loop.out, state, self.rank, self.world)

    def set_rates(self, head_lr: float | None = None) -> None:
        """The config's rates on the LoRA optimiser (they win over a checkpoint's: a resume after a
        divergence lowers them): adapters ``llm.lr``, head ``head_lr`` (``llm.step_head_lr``:
        after the warm-up the head needs small steps) or ``llm.head_lr``."""
        groups = self.optimizers["lora"].param_groups
        groups[0]["lr"] = self.cfg.llm.lr
        groups[1]["lr"] = head_lr if head_lr is not None else self.cfg.llm.head_lr

    def _steps(self, state: dict, desc: str, step_fn: Callable[[int], tuple[torch.Tensor, int]]) -> dict:
        """Steps of ``step_fn(step) -> (loss, texts)`` until a multiple of ``llm.checkpoint_every``,
        ``llm.steps`` or the budget; the round's log row."""
        llm_cfg, llm, t = self.cfg.llm, state["llm"], time.perf_counter()
        texts0, losses = self.teacher.encoder.stats.texts_encoded, []
        left = min(llm_cfg.checkpoint_every - llm["step"] % llm_cfg.checkpoint_every, llm_cfg.steps - llm["step"])
        bar = tqdm(total=left, desc=desc, disable=not (llm_cfg.progress and self.rank == 0), leave=False, mininterval=2)
        self.teacher.train()
        while True:
            loss, n_texts = step_fn(llm["step"])
            if not torch.isfinite(loss):
                raise self.loop.diverged("loss", loss.item(), f"step {llm['step'] + 1}")
            llm["step"] += 1
            llm["llm_texts"] += n_texts
            losses.append(round(loss.item(), 5))
            llm["losses"].append(losses[-1])
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", refresh=False)
            if llm["step"] % llm_cfg.checkpoint_every == 0 or self.lora_over(state):
                break
        bar.close()
        seconds = time.perf_counter() - t
        texts = self.teacher.encoder.stats.texts_encoded - texts0
        return {"loss": float(np.mean(losses)), "seconds": round(seconds, 2), "steps": len(losses), "step": llm["step"],
                "texts": texts, "texts_per_second": round(texts / seconds, 1)}

    def sampled_round(self, state: dict) -> dict:
        """Sampled softmax: each query against the batch's answers plus ``llm.negatives`` drawn entities."""
        llm_cfg, device, opt = self.cfg.llm, self.teacher.device, self.optimizers["lora"]
        if self.engine is None:
            self.set_rates()
            if self.world > 1:  # ZeRO: gradients reduced, optimiser state partitioned
                self.start_zero(state)

        def step(i: int) -> tuple[torch.Tensor, int]:
            gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + i * self.world + self.rank)  # a batch per rank
            idx = torch.randint(0, len(self.queries), (llm_cfg.queries_per_step,), generator=gen)
            negatives = torch.randint(0, self.ds.num_entities, (llm_cfg.negatives,), generator=gen)
            candidates, inverse = torch.unique(torch.cat([self.answers[idx], negatives]), return_inverse=True)
            target = inverse[: llm_cfg.queries_per_step].to(device)
            texts = self.teacher.encoder.stats.texts_encoded
            queries = self.queries[idx] if self.teacher.query_mode == "composed" else self.teacher.with_rows(self.queries[idx], idx)
            loss = F.cross_entropy(self.teacher.score_sampled(queries.to(device), candidates.to(device)), target)
            if torch.isfinite(loss):
                if self.engine is not None:
                    self.engine.backward(loss)
                    self.engine.step()
                    if self.heads_opt is not None:  # outside the engine: its gradient averaged here
                        step_replicated(self.heads_opt, self.world)
                else:
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                self.teacher.mark_updated()
            return loss, self.teacher.encoder.stats.texts_encoded - texts

        row = self._steps(state, "LLM sampled softmax", step)
        if self.engine is not None:  # before the loop writes the round's checkpoint (round state["epoch"] + 1)
            save_zero_state(self.engine, self.heads_opt, self.loop.out, state["epoch"] + 1, self.rank, self.world)
        return row

    def infonce_round(self, state: dict) -> dict:
        """InfoNCE against every entity through the cache (distkg.llm.contrastive); the round ends on a
        refreshed cache, kept in the state (so a resume continues exactly) and read by validation."""
        llm_cfg, llm, opt = self.cfg.llm, state["llm"], self.optimizers["lora"]
        self.set_rates(llm_cfg.step_head_lr)
        if llm.get("cache") is None:
            llm["cache"] = self.features(llm["step"])["entity"]
            if not llm["curve"]:  # the curve's starting point (no warm-up gave one)
                with self.loop.clock.excluded():
                    self.curve_point(state, contrastive.cache_valid_mrr(self.teacher, self.feats, self.cfg,
                                                                        self.ds, self.eval_index))

        def step(i: int) -> tuple[torch.Tensor, int]:
            gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + i)
            idx = torch.randint(0, len(self.train_qs), (llm_cfg.queries_per_step,), generator=gen).numpy()
            qs = self.train_qs
            batch = QuerySet(qs.queries[idx], qs.answers[idx], qs.keys[idx], num_tail=0)
            loss, n_texts = contrastive.infonce_loss(self.teacher, llm["cache"], batch, self.train_index, self.step_calls,
                                                     torch.from_numpy(idx))
            if torch.isfinite(loss):
                opt.zero_grad()
                loss.backward()
                opt.step()
                self.teacher.mark_updated()
                if (i + 1) % llm_cfg.refresh_every == 0:
                    llm["cache"] = self.features(i + 1)["entity"]
            return loss, n_texts

        row = self._steps(state, "LLM InfoNCE", step)
        llm["cache"] = self.features(llm["step"])["entity"]  # fresh at the round's end (cached when just refreshed)
        return row


def _agreed(flag: bool, world: int) -> bool:
    """Rank 0's decision on every rank (the workers must stop at the same step)."""
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([int(flag)])
    dist.broadcast(t, 0)
    return bool(t.item())


def in_lockstep(cfg: RunConfig, world: int) -> bool:
    """ZeRO-3 over several processes: the LM's weights are partitions (loaded so, distkg.llm.loading), so
    every forward call of the LM is a collective that all ranks make in the same order."""
    return world > 1 and cfg.runtime.zero_stage == 3


def lm_bytes(model: torch.nn.Module, whole: bool = False) -> int:
    """Bytes of the LM's parameters this process holds (under ZeRO-3: its partitions); ``whole``:
    of the whole LM, as one process would hold it."""
    if whole:
        return sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in model.parameters())
    return sum((t := getattr(p, "ds_tensor", p)).numel() * t.element_size() for p in model.parameters())


def check_workers(cfg: RunConfig, workers: int | None = None) -> None:
    """What fine-tuning on several processes (``workers``; default ``runtime.workers``) needs, in one
    line before any work: the Ray driver (distkg.runtime.llm_train) checks it before Ray starts, and
    every process of the group again."""
    workers = workers if workers is not None else cfg.runtime.workers
    if workers <= 1:
        return
    if cfg.llm.objective == "infonce":
        raise ConfigError(f"llm.objective=infonce runs in one process (its entity cache is not sharded), but "
                          f"{workers} workers were asked for: set runtime.workers=1 or llm.objective=sampled")
    if cfg.runtime.zero_stage == 3 and cfg.llm.quantization != "none":
        raise ConfigError(f"runtime.zero_stage=3 shards the base LM's weights across the workers, but "
                          f"llm.quantization={cfg.llm.quantization!r}: DeepSpeed cannot partition bitsandbytes 4-bit "
                          "weights; set llm.quantization=none (a bf16 base on a GPU) or runtime.zero_stage=2")


ZERO3_LIVE = 100_000_000  # parameters gathered at once under ZeRO-3 (zero_config)


def zero_config(cfg: RunConfig) -> dict:
    """The DeepSpeed config of fine-tuning under ZeRO (``runtime.zero_stage``): the engine's, and under
    stage 3 the partitioned load's (distkg.llm.loading), so both agree on the stage and dtype."""
    zero = {"stage": cfg.runtime.zero_stage}
    if cfg.runtime.zero_stage == 3:  # gathered weights a worker may keep at once: DeepSpeed's default, 1e9
        # parameters (4 GB in fp32), is more than half a 1.7 B model, whose worker must not hold it whole
        zero.update(stage3_max_live_parameters=ZERO3_LIVE, stage3_max_reuse_distance=ZERO3_LIVE)
    return {"train_micro_batch_size_per_gpu": cfg.llm.queries_per_step, "gradient_accumulation_steps": 1,
            "zero_optimization": zero, "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": placement(cfg).llm_dtype == torch.bfloat16 and cfg.llm.quantization == "none"}}


def zero_engine(teacher: LLMTeacher, optimizer: torch.optim.Optimizer, cfg: RunConfig):
    """DeepSpeed ZeRO (``runtime.zero_stage``) in the process group Ray Train set up, and under stage 3
    the heads' own optimiser (else None). Each worker steps on its own batch of ``llm.queries_per_step``.
    Stages 1-2 partition the optimiser state (and gradients) of the LoRA and head parameters. Stage 3
    partitions the LM's parameters (frozen base and adapters), each gathered by DeepSpeed's hooks for
    the forward call that needs it. The heads and the logit scale (``optimizer``'s second group) stay
    outside its engine, whole on every worker, started from rank 0's values and stepped on averaged
    gradients (``step_replicated``): they are small, the scale is read outside any module's forward,
    and the head warm-up trains them with its own optimiser."""
    import deepspeed

    stage, engine_optimizer, heads_opt, module = cfg.runtime.zero_stage, optimizer, None, teacher
    if stage == 3:
        import torch.distributed as dist

        settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        adapters, heads = optimizer.param_groups  # train_teacher's "lora" optimiser: adapters, then head_params
        engine_optimizer = type(optimizer)([{**settings[0], "params": adapters["params"]}])
        heads_opt = type(optimizer)([{**settings[1], "params": heads["params"]}])
        with torch.no_grad():
            for p in heads["params"]:
                dist.broadcast(p.data, 0)
        module = transformer_body(teacher.lm_model)  # what distkg calls, so the engine's start- and end-of-forward hooks run
    engine, *_ = deepspeed.initialize(model=module, optimizer=engine_optimizer, config=zero_config(cfg),
                                      dist_init_required=False)
    release_shm_buffer()
    log.info("LLM fine-tuning under DeepSpeed ZeRO stage %d on %d workers", stage, engine.world_size)
    return engine, heads_opt


def step_replicated(optimizer: torch.optim.Optimizer, world: int) -> None:
    """A step of parameters every worker holds whole: gradients averaged over the process group first."""
    import torch.distributed as dist

    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world
    optimizer.step()
    optimizer.zero_grad()


def zero_state_path(out: Path, round_: int, rank: int, world: int) -> Path:
    """Rank ``rank``'s partition of the ZeRO optimiser state after round ``round_`` (one file per rank:
    each holds only its partition, so no rank gathers the whole state)."""
    return out / "checkpoints" / "zero" / f"round_{round_:04d}.rank{rank}-of-{world}.pt"


def save_zero_state(engine, heads_opt, out: Path, round_: int, rank: int, world: int) -> None:
    """Every rank writes its partition (moments, fp32 master copy; under ZeRO-3 also the heads'
    optimiser) and its random state (its batches differ, so its dropout draws do) before rank 0 writes
    the round's checkpoint, so a round checkpoint on disk always has its partitions; a rank's files of
    rounds whose checkpoint is gone (kept: distkg.training.checkpoint) are removed."""
    atomic_save({"zero": engine.optimizer.state_dict(), "heads": heads_opt.state_dict() if heads_opt else None,
                 "heads_outside": heads_opt is not None, "torch_rng": torch.get_rng_state()},
                zero_state_path(out, round_, rank, world))
    rounds = {int(p.name[6:10]) for p in (out / "checkpoints").glob("round_*.pt")} | {round_}
    for old in (out / "checkpoints" / "zero").glob(f"round_*.rank{rank}-of-{world}.pt"):
        if int(old.name[6:10]) not in rounds:
            old.unlink(missing_ok=True)


def load_zero_state(engine, heads_opt, out: Path, state: dict, rank: int, world: int) -> None:
    """The partition of the round the loop resumed from (``state["epoch"]``), into a new engine: the
    Adam moments continue where they were. None was written before any LoRA step (nothing to load)."""
    if state["llm"]["step"] == 0:
        return
    path = zero_state_path(out, state["epoch"], rank, world)
    if not path.is_file():
        log.warning("resuming ZeRO without the LoRA optimiser's moments: %s is missing (a run written before "
                    "distkg kept them, or with another runtime.workers)", path)
        return
    saved = read_checkpoint(path, weights_only=False)
    if saved.get("heads_outside", False) != (heads_opt is not None):
        log.warning("resuming ZeRO without the LoRA optimiser's moments: %s holds the heads %s the engine, this "
                    "version keeps them %s (written by an earlier distkg)", path,
                    "outside" if saved.get("heads_outside") else "inside", "outside" if heads_opt else "inside")
        return
    partitions = [None] * world
    partitions[rank] = saved["zero"]  # the same world: each rank reads its own
    engine.optimizer.load_state_dict(partitions, load_from_fp32_weights=True)
    if heads_opt is not None:
        heads_opt.load_state_dict(saved["heads"])
    if "torch_rng" in saved:  # this rank's own (the round checkpoint holds rank 0's): its dropout continues exactly
        torch.set_rng_state(saved["torch_rng"])
    log.info("resumed the LoRA optimiser's ZeRO partition from %s", path)
