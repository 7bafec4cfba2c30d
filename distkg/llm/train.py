"""Training the LLM teacher on the training facts only (`distkg llm train`), and loading it back: its
projection head on the frozen LM's features, then ``llm.steps`` QLoRA steps of adapters and head
(0 in the shipped recipes, where those steps added nothing: the head alone).

Read top to bottom: load the base LM (4-bit NF4 unless ``llm.quantization: none``), wrap it with
LoRA adapters (peft), add the projection head; then ``train_teacher`` runs the phases of
distkg.llm.rounds (an optional head warm-up on the frozen LM's features, ``llm.head_epochs``; then
adapters + head on training queries, sampled softmax or InfoNCE) in distkg.training.loop, the loop
the KG trainer runs: checkpoints (OUT/checkpoints/round_NNNN.pt, every ``llm.checkpoint_every``
steps and after every head epoch) from which a resumed run continues exactly, a NaN guard, early
stopping on validation MRR (``llm.patience``), a time budget (``llm.max_minutes``); the best
weights are then saved and scored under the default protocol (full entity table, each entity text
encoded once per weights version), validation and test.

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

import torch

from distkg.allocator import return_freed_memory
from distkg.config import RunConfig
from distkg.data import TKGDataset, load_dataset
from distkg.device import placement, process_group
from distkg.errors import ConfigError, DistkgError, first_line
from distkg.evaluation import FilterIndex, eval_options, evaluate_splits
from distkg.llm.encoder import texts_per_forward
from distkg.llm.features import load_features
from distkg.llm.loading import load_lm, logical_numel
from distkg.llm.prompts import QueryTexts, entity_texts
from distkg.llm.rounds import (TeacherRounds, TrainableWeights, gathered, head_optimizer, head_params, in_lockstep,
                               zero_config)
from distkg.llm.teacher import LLMTeacher
from distkg.runfolder import LLM_RATES, config_digest, prepare_folder, read_json, write_metrics
from distkg.training.checkpoint import CheckpointError, Checkpoints, atomic_save
from distkg.training.curves import plot_curves
from distkg.training.loop import Loop, Optimizers
from distkg.training.tracking import tracker_for

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


def build_teacher(cfg: RunConfig, ds: TKGDataset, lora: bool = True, zero3: dict | None = None) -> LLMTeacher:
    """Base LM (+ fresh LoRA adapters) + a fresh projection head, seeded; ``zero3``: the LM loaded as
    ZeRO-3 partitions (distkg.llm.loading.load_lm)."""
    folds = cfg.llm.text_folds
    if folds != "auto" and folds > 1 and cfg.llm.entity_text != "facts":
        raise ConfigError(f"llm.text_folds={folds} holds out training facts from the entity texts, "
                          f"but llm.entity_text={cfg.llm.entity_text!r} writes none: set llm.entity_text=facts or "
                          "llm.text_folds=1")
    torch.manual_seed(cfg.seed)
    lm = load_lm(cfg.llm.model, cfg.llm.quantization, placement(cfg).llm_device, cfg.llm.layers, zero3)
    if zero3 is not None:  # a partitioned load may draw random numbers on some ranks only: every rank
        torch.manual_seed(cfg.seed)  # starts its adapters and heads from one state
    for p in lm.model.parameters():
        p.requires_grad_(False)
    if lora:
        lm.model = wrap_lora(lm.model, cfg)
    teacher = LLMTeacher(lm, ds, dim=cfg.llm.dim, form=cfg.llm.form, max_tokens=cfg.llm.max_tokens,
                         texts_per_forward=texts_per_forward(cfg.llm.texts_per_forward, lm.device),
                         entity_texts=entity_texts(ds, cfg.llm.entity_text, cfg.llm.entity_facts),
                         query_texts=QueryTexts(ds, cfg.llm.query_facts) if cfg.llm.query == "text" else None,
                         query_tokens=cfg.llm.query_tokens)
    for encoder in [teacher.encoder] + ([teacher.query_encoder] if teacher.query_mode == "text" else []):
        encoder.progress = cfg.llm.progress
    return teacher.to(lm.device)


def save_teacher(teacher: LLMTeacher, cfg: RunConfig, folder: Path, extra: dict | None = None) -> None:
    """Adapter + head + teacher.json, written to a temporary folder and renamed into place."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    teacher.lm_model.save_pretrained(tmp)
    heads = {"head": teacher.head.state_dict(), "logit_scale": teacher.logit_scale.detach()}
    if teacher.query_mode == "text":
        heads["qhead"] = teacher.qhead.state_dict()
    torch.save(heads, tmp / "head.pt")
    meta = {"model": cfg.llm.model, "layers": cfg.llm.layers, "hidden_size": teacher.head.in_features, "dim": cfg.llm.dim, "form": cfg.llm.form,
            "query": teacher.query_mode, "lora_r": cfg.llm.lora_r, "dataset": cfg.data.dataset, **(extra or {})}
    (tmp / "teacher.json").write_text(json.dumps(meta, indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def save_tables(tables: dict, ds: TKGDataset, folder: Path) -> Path:
    """FOLDER/tables.pt: every E(p) and the scoring form (``LLMTeacher.tables``), so students get P_LLM
    without the LLM."""
    path = folder / "tables.pt"
    atomic_save({**tables, "dataset": ds.name}, path)
    return path


def load_teacher(folder: Path, cfg: RunConfig, ds: TKGDataset) -> LLMTeacher:
    """Rebuild a saved teacher without retraining; a clear error if it does not fit the base model."""
    from peft import PeftModel

    meta_path = folder / "teacher.json"
    if not meta_path.is_file():
        raise DistkgError(f"{folder}: not a saved LLM teacher (no teacher.json)")
    meta = read_json(meta_path)
    if meta["model"] != cfg.llm.model:
        raise ConfigError(f"{folder}: the adapter was trained on llm.model={meta['model']!r}, "
                          f"but the config names {cfg.llm.model!r}")
    if meta.get("layers") != cfg.llm.layers:
        raise ConfigError(f"{folder}: the adapter was trained with llm.layers={meta.get('layers')}, "
                          f"but the config says {cfg.llm.layers}")
    if meta.get("query", "composed") != cfg.llm.query:
        raise ConfigError(f"{folder}: the teacher reads queries as llm.query={meta.get('query', 'composed')!r}, "
                          f"but the config says {cfg.llm.query!r}")
    teacher = build_teacher(cfg, ds, lora=False)
    try:
        teacher.lm_model = PeftModel.from_pretrained(teacher.lm_model, str(folder))
        teacher.encoder.lm.model = teacher.lm_model
        head = torch.load(folder / "head.pt", map_location="cpu", weights_only=True)
        teacher.head.load_state_dict(head["head"])
        if teacher.query_mode == "text":
            teacher.qhead.load_state_dict(head["qhead"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise ConfigError(f"{folder}: the adapter/head does not match base model {cfg.llm.model!r} "
                          f"(hidden {teacher.head.in_features}, dim {cfg.llm.dim}): {first_line(e)}") from None
    with torch.no_grad():
        teacher.logit_scale.copy_(head["logit_scale"])
    teacher.mark_updated()
    return teacher.eval()


def train_teacher(cfg: RunConfig, out: Path, resume: bool = True, dataset: TKGDataset | None = None,
             checked: bool = False, written: bool = False) -> dict:
    """Fine-tune the teacher in OUT as phases of distkg.training.loop (distkg.llm.rounds), save the
    best weights as OUT/teacher and score them (OUT/metrics.json); resumes from OUT's checkpoints.
    ``checked``: the caller has checked OUT (distkg.runfolder.prepare_folders); it is only written here.
    ``written``: the caller wrote it too (a Ray driver: its workers' devices, resolved to where Ray
    placed them, are not the run's config, which says what the command said)."""
    llm_cfg = cfg.llm
    rank, world = process_group()
    prepare_folder(cfg, out, "llm", restart=not resume, write=rank == 0 and not written, check=not checked)
    old = out / "checkpoints" / "latest" / "state.pt"
    if resume and old.is_file():
        raise CheckpointError(f"{old} was written by the LLM fine-tuning loop of distkg before its one training loop "
                              "(distkg.training.loop, checkpoints round_NNNN.pt); this version cannot resume it. Pass "
                              f"--restart to start over in {out} (a finished teacher in {out / 'teacher'} still loads)")
    ds = dataset if dataset is not None else load_dataset(cfg.data)
    lockstep = in_lockstep(cfg, world)  # the LM as partitions: no process holds it whole
    if lockstep:
        return_freed_memory()  # gathered layers come and go at every call (distkg.allocator)
    teacher = build_teacher(cfg, ds, zero3=zero_config(cfg) if lockstep else None)
    lora_params = [p for p in teacher.lm_model.parameters() if p.requires_grad]
    optimizers = Optimizers(unsaved=("lora",) if world > 1 else (), head=head_optimizer(teacher, cfg),
                            lora=torch.optim.AdamW([{"params": lora_params, "lr": llm_cfg.lr},
                                                    {"params": head_params(teacher), "lr": llm_cfg.head_lr}]))
    n_lora = sum(p.numel() for p in lora_params)
    n_head = sum(p.numel() for p in head_params(teacher))
    n_all = sum(logical_numel(p) for p in teacher.lm_model.parameters())  # 4-bit weights counted as weights
    log.info("LLM teacher %s (%s), LoRA r=%d: %d trainable of %d parameters (%.2f%%)", llm_cfg.model, llm_cfg.quantization,
             llm_cfg.lora_r, n_lora, n_all, 100 * n_lora / n_all)
    loop = Loop(out, Checkpoints(out / "checkpoints", write=rank == 0, prefix="round"), TrainableWeights(teacher),
                optimizers, lambda: rounds.validate(state), llm_cfg.patience, config_digest(cfg, "llm", LLM_RATES), main=rank == 0,
                barrier=_barrier if world > 1 else lambda: None, what="LLM fine-tuning", unit="round",
                hint="lower llm.lr or llm.head_lr, then run again to resume from it",
                budget_s=60 * llm_cfg.max_minutes if llm_cfg.max_minutes is not None else None, validation_counts=False,
                tracking=tracker_for(cfg, out, "llm"))
    state = loop.resume(resume)
    rounds = TeacherRounds(teacher, cfg, ds, optimizers, loop, rank, world)
    phases = rounds.phases(state)
    rounds.start(state)
    state = loop.run(phases, state)
    teacher.eval()
    llm = state["llm"]
    with gathered(p for p in teacher.parameters() if p.requires_grad):  # under ZeRO-3 every rank takes part
        if rank == 0:
            save_teacher(teacher, cfg, out / "teacher", {"steps": llm["step"], "workers": world})
    if rank != 0 and not lockstep:  # the workers hold the same weights; rank 0 saved them and evaluates them
        return {}
    if rank == 0:
        plot_curves(state["history"], out / "curves.png", f"LLM teacher {llm_cfg.model} on {ds.name}", xlabel="round")
    if not lockstep:
        # scored as saved: bitsandbytes' CPU path (AVX512-BF16) repacks 4-bit weights with bf16 scales on
        # an inference forward and back again on saving, a lossy round trip, so the weights in memory
        # after fine-tuning differ slightly from the saved ones that `distkg llm evaluate --run` and the
        # students read (issue 18: YAGO11k test MRR 0.014182 recorded, 0.014078 re-loaded). Under ZeRO-3
        # (never 4-bit) no process could load it whole: every rank scores the partitioned teacher in step
        teacher = load_teacher(out / "teacher", cfg, ds)
        if llm_cfg.feature_cache:  # adapters that never stepped: their features may be on disk already
            load_features(teacher, cfg)
    best = state["history"][state["best_epoch"] - 1] if state["best_epoch"] else {}
    metrics = evaluate_teacher(teacher, cfg, ds, out, {
        "steps": llm["step"], "finetune_seconds": round(state["seconds"], 1), "head_warmup": llm.get("head"),
        "objective": llm_cfg.objective, "curve": llm["curve"], "llm_texts": llm["llm_texts"], "rounds_run": state["epoch"],
        "best_round": state["best_epoch"], "best_round_step": best.get("step", 0), "best_valid_mrr": state["best_mrr"],
        "parameters": n_all + n_head, "trainable_parameters": n_lora + n_head,
        **({"zero": llm["zero"]} if "zero" in llm else {})}, write=rank == 0)
    tables = teacher.tables(ds)  # entity texts are cache hits after the evaluation
    if rank != 0:
        return {}
    save_tables(tables, ds, out / "teacher")
    return metrics


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def evaluate_teacher(teacher: LLMTeacher, cfg: RunConfig, ds: TKGDataset, out: Path, extra: dict,
                     write: bool = True) -> dict:
    """The splits of eval.splits under the run's protocol (validation: the ``llm.valid_queries`` sample);
    OUT/metrics.json (``write``: this process writes it)."""
    t = time.perf_counter()
    index = FilterIndex.from_dataset(ds, cfg.eval.filter) if cfg.eval.filter != "none" else None
    final = evaluate_splits(teacher, ds, cfg.eval.splits, eval_options(cfg, teacher.device), index,
                            views={"valid": ds.with_queries("valid", cfg.llm.valid_queries, cfg.seed)})
    valid = final["splits"].get("valid", {})
    stats = teacher.encoder.stats
    metrics = {**final, "dataset": ds.name, "model": f"llm:{cfg.llm.model}", "dim": cfg.llm.dim,
               "form": cfg.llm.form, "quantization": cfg.llm.quantization, "valid_mrr": valid.get("mrr"),
               "valid_queries": valid.get("queries"), "eval_seconds": round(time.perf_counter() - t, 1),
               "encoder": {**dataclasses.asdict(stats), "padding_share": round(stats.padding_share, 4)}, **extra}
    if not write:
        return metrics
    write_metrics(out, metrics)
    log.info("LLM teacher %s MRR %.4f H@1 %.4f H@10 %.4f -> %s", final["split"], final["mrr"], final["hits@1"],
             final["hits@10"], out / "metrics.json")
    return metrics
