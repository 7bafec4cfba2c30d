"""Fine-tuning the LLM teacher with QLoRA on the training facts only, and loading it back.

Read top to bottom: load the base LM (4-bit NF4 unless ``llm.quantization: none``), wrap it with
LoRA adapters (peft), add the projection head; optionally warm the head up on the frozen LM's
features (``llm.head_epochs``, see ``train_head``); then train adapters + head on training queries.
A full softmax over all entities would need every entity text through the LLM at every step, so
each step scores its queries against a sampled candidate set: the batch's answers plus
``llm.negatives`` uniformly drawn entities (sampled softmax, cross-entropy on the answer). The
step's batch and negatives come from a generator seeded by (seed, step), so a resumed run sees
exactly the batches an uninterrupted one would. Checkpoints every ``checkpoint_every`` steps,
a step or time budget, then validation and test under the default protocol (full entity table,
each entity text encoded once per weights version).

Saved teacher (OUT/teacher/): the peft adapter folder, head.pt (projection + logit scale) and
teacher.json (what it was trained on and with). ``load_teacher`` rebuilds it in any process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from distkg.config import RunConfig
from distkg.data import TKGDataset, load_dataset
from distkg.device import encode_batch, placement
from distkg.errors import ConfigError, DistkgError
from distkg.evaluation import FilterIndex, eval_options, evaluate
from distkg.llm.features import frozen_features, load_features
from distkg.llm.loading import load_lm, logical_numel
from distkg.llm.prompts import entity_texts
from distkg.llm.teacher import LLMTeacher
from distkg.runfolder import claim
from distkg.training.checkpoint import CheckpointError, atomic_save, load_weights, read_checkpoint
from distkg.training.trainer import TrainingDiverged, training_queries

log = logging.getLogger("distkg")


def wrap_lora(model: torch.nn.Module, cfg: RunConfig) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.llm.quantization == "nf4":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = LoraConfig(r=cfg.llm.lora_r, lora_alpha=cfg.llm.lora_alpha, lora_dropout=cfg.llm.lora_dropout,
                      target_modules=list(cfg.llm.lora_targets), bias="none")
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        raise ConfigError(f"llm.lora_targets={cfg.llm.lora_targets}: {e}") from None


def build_teacher(cfg: RunConfig, ds: TKGDataset, lora: bool = True) -> LLMTeacher:
    """Base LM (+ fresh LoRA adapters) + a fresh projection head, seeded."""
    torch.manual_seed(cfg.seed)
    lm = load_lm(cfg.llm.model, cfg.llm.quantization, placement(cfg).llm_device, cfg.llm.layers)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    if lora:
        lm.model = wrap_lora(lm.model, cfg)
    teacher = LLMTeacher(lm, ds, dim=cfg.llm.dim, form=cfg.llm.form, max_tokens=cfg.llm.max_tokens,
                         encode_batch=encode_batch(cfg.llm.encode_batch, lm.device),
                         entity_texts=entity_texts(ds, cfg.llm.entity_text, cfg.llm.entity_facts))
    return teacher.to(lm.device)


def _head_params(teacher: LLMTeacher) -> list[torch.nn.Parameter]:
    return [*teacher.head.parameters(), teacher.logit_scale]


def save_teacher(teacher: LLMTeacher, cfg: RunConfig, folder: Path, extra: dict | None = None) -> None:
    """Adapter + head + teacher.json, written to a temporary folder and renamed into place."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    teacher.lm_model.save_pretrained(tmp)
    torch.save({"head": teacher.head.state_dict(), "logit_scale": teacher.logit_scale.detach()}, tmp / "head.pt")
    meta = {"model": cfg.llm.model, "layers": cfg.llm.layers, "hidden_size": teacher.head.in_features, "dim": cfg.llm.dim, "form": cfg.llm.form,
            "lora_r": cfg.llm.lora_r, "dataset": cfg.data.dataset, **(extra or {})}
    (tmp / "teacher.json").write_text(json.dumps(meta, indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def save_tables(teacher: LLMTeacher, ds: TKGDataset, folder: Path) -> Path:
    """FOLDER/tables.pt: every E(p) and the scoring form, so students get P_LLM without the LLM."""
    path = folder / "tables.pt"
    atomic_save({**teacher.tables(), "dataset": ds.name}, path)
    return path


def load_teacher(folder: Path, cfg: RunConfig, ds: TKGDataset) -> LLMTeacher:
    """Rebuild a saved teacher without retraining; a clear error if it does not fit the base model."""
    from peft import PeftModel

    meta_path = folder / "teacher.json"
    if not meta_path.is_file():
        raise DistkgError(f"{folder}: not a saved LLM teacher (no teacher.json)")
    meta = json.loads(meta_path.read_text())
    if meta["model"] != cfg.llm.model:
        raise ConfigError(f"{folder}: the adapter was trained on llm.model={meta['model']!r}, "
                          f"but the config names {cfg.llm.model!r}")
    if meta.get("layers") != cfg.llm.layers:
        raise ConfigError(f"{folder}: the adapter was trained with llm.layers={meta.get('layers')}, "
                          f"but the config says {cfg.llm.layers}")
    teacher = build_teacher(cfg, ds, lora=False)
    try:
        teacher.lm_model = PeftModel.from_pretrained(teacher.lm_model, str(folder))
        teacher.encoder.lm.model = teacher.lm_model
        head = torch.load(folder / "head.pt", map_location="cpu", weights_only=True)
        teacher.head.load_state_dict(head["head"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise ConfigError(f"{folder}: the adapter/head does not match base model {cfg.llm.model!r} "
                          f"(hidden {teacher.head.in_features}, dim {cfg.llm.dim}): {str(e).splitlines()[0]}") from None
    with torch.no_grad():
        teacher.logit_scale.copy_(head["logit_scale"])
    teacher.encoder.mark_updated()
    return teacher.eval()


def _valid_view(ds: TKGDataset, n: int, seed: int) -> TKGDataset:
    """The dataset with a deterministic subsample of its validation facts (n = 0: all)."""
    valid = ds.splits["valid"]
    if not n or n >= len(valid):
        return ds
    rows = np.sort(np.random.default_rng(seed).choice(len(valid), n // 2, replace=False))
    return dataclasses.replace(ds, splits={**ds.splits, "valid": valid[rows]})


def finetune(cfg: RunConfig, out: Path, resume: bool = True, dataset: TKGDataset | None = None) -> dict:
    lc = cfg.llm
    claim(cfg, out, restart=not resume, write=process_group()[0] == 0)  # one run folder, one config
    ds = dataset if dataset is not None else load_dataset(cfg.data)
    teacher = build_teacher(cfg, ds)
    lora_params = [p for p in teacher.lm_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": lora_params, "lr": lc.lr}, {"params": _head_params(teacher), "lr": lc.head_lr}])
    n_lora = sum(p.numel() for p in lora_params)
    n_head = sum(p.numel() for p in _head_params(teacher))
    n_all = sum(logical_numel(p) for p in teacher.lm_model.parameters())  # 4-bit weights counted as weights
    log.info("LLM teacher %s (%s), LoRA r=%d: %d trainable of %d parameters (%.2f%%)", lc.model, lc.quantization,
             lc.lora_r, n_lora, n_all, 100 * n_lora / n_all)
    rank, world = process_group()
    state = {"step": 0, "seconds": 0.0, "losses": []}
    ckpt = out / "checkpoints" / "latest"
    if resume and (ckpt / "state.pt").is_file():
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        try:  # verified: a damaged file is named, not a raw reader traceback
            set_peft_model_state_dict(teacher.lm_model, load_file(ckpt / "adapter_model.safetensors"))
        except Exception as e:
            raise CheckpointError(f"{ckpt / 'adapter_model.safetensors'} cannot be read ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:200]}); pass --restart to start over") from None
        head = read_checkpoint(ckpt / "head.pt")
        load_weights(teacher.head, head["head"], ckpt / "head.pt")
        with torch.no_grad():
            teacher.logit_scale.copy_(head["logit_scale"])
        saved = read_checkpoint(ckpt / "state.pt")
        if saved.get("optimizer") is not None:
            optimizer.load_state_dict(saved["optimizer"])
        else:  # written under ZeRO, whose optimiser state is partitioned across the workers
            log.warning("resuming LLM fine-tuning without optimiser moments (the checkpoint was written under ZeRO)")
        torch.set_rng_state(saved["torch_rng"])
        state = saved["state"]
        log.info("resumed LLM fine-tuning from %s (step %d)", ckpt, state["step"])

    queries, answers = training_queries(ds.splits["train"], ds.num_relations)
    device = teacher.device
    if lc.head_epochs and not state.get("head_done"):
        state["head"] = train_head(teacher, cfg, queries, answers)
        state["head_done"] = True
        state["seconds"] += state["head"]["seconds"]
    engine = zero_engine(teacher, optimizer, cfg) if world > 1 else None  # after the head warm-up (every rank alike)
    if lc.objective == "infonce":  # distkg/llm/contrastive.py: its own step; these checkpoints, saving and evaluation
        from distkg.llm.contrastive import run_infonce

        run_infonce(teacher, cfg, ds, optimizer, state, ckpt)
    started = time.perf_counter() - state["seconds"]
    desc = "LLM fine-tuning" + (f" (budget {lc.max_minutes:g} min)" if lc.max_minutes else "")
    bar = tqdm(total=lc.steps, initial=state["step"], desc=desc, disable=not (lc.progress and rank == 0), mininterval=2)
    teacher.train()
    while lc.objective == "sampled" and state["step"] < lc.steps:
        if (lc.max_minutes is not None and state["step"] >= lc.min_steps
                and _agreed(time.perf_counter() - started > 60 * lc.max_minutes, world)):
            log.info("time budget of %.1f min reached at step %d", lc.max_minutes, state["step"])
            break
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + state["step"] * world + rank)  # a batch per rank
        idx = torch.randint(0, len(queries), (lc.batch_size,), generator=gen)
        negatives = torch.randint(0, ds.num_entities, (lc.negatives,), generator=gen)
        candidates, inverse = torch.unique(torch.cat([answers[idx], negatives]), return_inverse=True)
        target = inverse[: lc.batch_size].to(device)
        loss = F.cross_entropy(teacher.score_sampled(queries[idx].to(device), candidates.to(device)), target)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"LLM fine-tuning stopped: loss {loss.item()} at step {state['step'] + 1}; "
                                   f"the last good checkpoint is {ckpt if ckpt.exists() else 'not written yet'}")
        if engine is not None:  # ZeRO: gradients reduced and optimiser state partitioned across the workers
            engine.backward(loss)
            engine.step()
        else:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        teacher.encoder.mark_updated()
        state["step"] += 1
        state["losses"].append(round(loss.item(), 5))
        state["seconds"] = time.perf_counter() - started
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(state['losses'][-20:]):.3f}")
        if (state["step"] % lc.checkpoint_every == 0 or state["step"] == lc.steps) and rank == 0:
            _checkpoint(teacher, cfg, None if engine is not None else optimizer, state, ckpt)
            per_step = (state["seconds"] - (state.get("head") or {}).get("seconds", 0.0)) / state["step"]
            left = per_step * (lc.steps - state["step"])
            if lc.max_minutes is not None:
                left = min(left, max(0.0, 60 * lc.max_minutes - state["seconds"]))
            log.info("LLM step %d/%d loss %.3f (%.1f s/step), ETA <= %.0fs", state["step"], lc.steps,
                     np.mean(state["losses"][-lc.checkpoint_every:]), per_step, left)
    bar.close()
    teacher.eval()
    if rank != 0:  # the workers hold the same weights; rank 0 saves and evaluates them
        return {}
    save_teacher(teacher, cfg, out / "teacher", {"steps": state["step"], "workers": world})
    # scored as saved: bitsandbytes' CPU path (AVX512-BF16) repacks 4-bit weights with bf16 scales on
    # an inference forward and back again on saving, a lossy round trip, so the weights in memory
    # after fine-tuning differ slightly from the saved ones that `distkg llm evaluate --run` and the
    # students read (issue 18: YAGO11k test MRR 0.014182 recorded, 0.014078 re-loaded)
    teacher = load_teacher(out / "teacher", cfg, ds)
    if lc.feature_cache:  # adapters that never stepped: their features may be on disk already
        load_features(teacher, cfg)
    metrics = evaluate_teacher(teacher, cfg, ds, out, {"steps": state["step"], "finetune_seconds": round(state["seconds"], 1),
                                                         "head_warmup": state.get("head"), "objective": lc.objective,
                                                         "curve": state.get("curve"), "llm_texts": state.get("llm_texts"),
                                                         "parameters": n_all + n_head, "trainable_parameters": n_lora + n_head})
    save_tables(teacher, ds, out / "teacher")  # entity texts are cache hits after the evaluation
    return metrics


def train_head(teacher: LLMTeacher, cfg: RunConfig, queries: torch.Tensor, answers: torch.Tensor) -> dict:
    """Head warm-up: the projection and scale, trained 1-vs-all on the frozen LM's features.

    Why: a sampled-softmax LoRA step on a CPU costs seconds, so within a CPU budget LoRA sees a few
    hundred queries. The LM's features of every text are computed once (one pass over the entity
    names), and the head then trains against all entities on all training queries in seconds per
    epoch; the LoRA steps that follow start from a head that already ranks.
    """
    lc = cfg.llm
    t = time.perf_counter()
    device = teacher.device
    log.info("LLM head warm-up: encoding all %d entity, relation and time texts once with the frozen LM",
             sum(len(v) for v in teacher.texts.values()))
    feats, hit = frozen_features(teacher, cfg)  # distkg/llm/features.py: read from disk when cached
    feats = {k: v.to(device) for k, v in feats.items()}
    encode_seconds = time.perf_counter() - t
    log.info("encoded in %.0fs%s; training the head for %d epochs against all entities", encode_seconds,
             " (read from the feature cache)" if hit else "",
             lc.head_epochs)
    opt = torch.optim.Adam(_head_params(teacher), lr=lc.head_lr)
    losses = []
    for epoch in range(lc.head_epochs):
        losses.append(head_epoch(teacher, feats, queries, answers, opt, cfg, epoch))
        log.info("LLM head epoch %d/%d: loss %.4f (%.0fs)", epoch + 1, lc.head_epochs, losses[-1], time.perf_counter() - t)
    teacher.encoder.mark_updated()
    return {"epochs": lc.head_epochs, "losses": losses, "seconds": round(time.perf_counter() - t, 1),
            "encode_seconds": round(encode_seconds, 1), "feature_cache_hit": hit}


def head_epoch(teacher: LLMTeacher, feats: dict[str, torch.Tensor], queries: torch.Tensor, answers: torch.Tensor,
               opt: torch.optim.Optimizer, cfg: RunConfig, epoch: int) -> float:
    """One epoch of the head warm-up over all training queries (seeded by seed and epoch); its mean loss.
    Also what scripts/llm_head_curve.py steps, so its curve is this warm-up's."""
    device = teacher.device
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7919 * (epoch + 1))
    total, n = 0.0, 0
    for idx in torch.randperm(len(queries), generator=gen).split(cfg.llm.head_batch_size):
        loss = F.cross_entropy(teacher.score_from_features(feats, queries[idx].to(device)), answers[idx].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        total, n = total + loss.item(), n + 1
    return round(total / n, 4)


def _agreed(flag: bool, world: int) -> bool:
    """Rank 0's decision on every rank (the workers must stop at the same step)."""
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([int(flag)])
    dist.broadcast(t, 0)
    return bool(t.item())


def process_group() -> tuple[int, int]:
    """(rank, world size) of the torch process group this process is in (Ray Train), else (0, 1)."""
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def zero_engine(teacher: LLMTeacher, optimizer: torch.optim.Optimizer, cfg: RunConfig):
    """DeepSpeed ZeRO (``runtime.zero_stage``) over the trainable LoRA and head parameters, in the
    process group Ray Train set up: each worker steps on its own batch of ``llm.batch_size``."""
    import deepspeed

    config = {"train_micro_batch_size_per_gpu": cfg.llm.batch_size, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": cfg.runtime.zero_stage}, "zero_allow_untested_optimizer": True,
              "bf16": {"enabled": placement(cfg).llm_dtype == torch.bfloat16 and cfg.llm.quantization == "none"}}
    engine, *_ = deepspeed.initialize(model=teacher, optimizer=optimizer, config=config, dist_init_required=False)
    log.info("LLM fine-tuning under DeepSpeed ZeRO stage %d on %d workers", cfg.runtime.zero_stage,
             engine.world_size)
    return engine


def _checkpoint(teacher: LLMTeacher, cfg: RunConfig, optimizer: torch.optim.Optimizer | None, state: dict,
                ckpt: Path) -> None:
    save_teacher(teacher, cfg, ckpt)
    atomic_save({"optimizer": optimizer.state_dict() if optimizer is not None else None, "state": state,
                 "torch_rng": torch.get_rng_state()}, ckpt / "state.pt")


def evaluate_teacher(teacher: LLMTeacher, cfg: RunConfig, ds: TKGDataset, out: Path, extra: dict) -> dict:
    """Validation (subsampled) and test under the default protocol; OUT/metrics.json."""
    t = time.perf_counter()
    index = FilterIndex.from_dataset(ds, cfg.eval.filter) if cfg.eval.filter != "none" else None
    options = eval_options(cfg, teacher.device)
    valid = evaluate(teacher, _valid_view(ds, cfg.llm.valid_queries, cfg.seed), split="valid", options=options,
                     index=index)
    test = evaluate(teacher, ds, split="test", options=options, index=index)
    stats = teacher.encoder.stats
    metrics = {**test, "split": "test", "dataset": ds.name, "model": f"llm:{cfg.llm.model}", "dim": cfg.llm.dim,
               "form": cfg.llm.form, "quantization": cfg.llm.quantization, "valid_mrr": valid["mrr"],
               "valid_queries": valid["queries"], "eval_seconds": round(time.perf_counter() - t, 1),
               "encoder": {**dataclasses.asdict(stats), "padding_share": round(stats.padding_share, 4)}, **extra}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("LLM teacher test MRR %.4f H@1 %.4f H@10 %.4f (valid MRR %.4f on %d queries) -> %s", test["mrr"],
             test["hits@1"], test["hits@10"], valid["mrr"], valid["queries"], out / "metrics.json")
    return metrics
