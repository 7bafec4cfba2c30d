"""The main job, ``distkg run CONFIG --out DIR``: data, teacher, LLM teacher, students, evaluation, report.

What runs is the config (``pipeline`` section, distkg.config.PipelineConfig):
  - a training-free model (``frequency``): evaluated as given;
  - a trainable model and no students: trained and tested (OUT/metrics.json);
  - with students: the model is the 400-d teacher (OUT/teacher), the LLM teacher is fine-tuned
    (OUT/llm) when ``pipeline.llm``, and each student method is distilled (OUT/students/METHOD).
Every part runs through distkg.experiments.parts, as the parts of ``distkg reproduce`` do: skipped
when its metrics.json exists and resumed from its checkpoints otherwise, so an interrupted run
continues where it stopped. OUT/report.md holds the table of every part, its
size and wall time, and the plots (comparison.png, curves.png).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

from distkg.config import ModelConfig, RunConfig
from distkg.data import TKGDataset, load_dataset
from distkg.errors import ConfigError
from distkg.evaluation import eval_options, evaluate_splits
from distkg.experiments.parts import Part, run_part
from distkg.experiments.report import pipeline_sections, write_report
from distkg.models import MODELS, TKGModel
from distkg.runfolder import clear, prepare_folders, read_json, save_slice, write_kind, write_metrics
from distkg.training.trainer import train

log = logging.getLogger("distkg")


def llm_training(cfg: RunConfig) -> str:
    """What the LLM teacher's label says it trained: LoRA steps, or the head alone (``llm.steps: 0``)."""
    return f"LoRA r={cfg.llm.lora_r}" if cfg.llm.steps else "head on frozen features"


def evaluate_model(cfg: RunConfig, ds: TKGDataset, model, out: Path) -> dict:
    """Evaluate on every configured split (eval.splits); metrics.json holds the test split at the top level."""
    metrics = {**evaluate_splits(model, ds, cfg.eval.splits, eval_options(cfg)), "dataset": ds.name, "model": cfg.model.name}
    write_metrics(out, metrics)
    return metrics


def run(cfg: RunConfig, out: Path, command: str = "distkg run", restart: bool = False) -> dict:
    """The job of ``cfg`` in OUT (module docstring). Every method is checked and OUT and each part's
    folder must hold this configuration (distkg.runfolder) before anything is read or written;
    ``restart`` discards what OUT holds instead."""
    factory = MODELS.get(cfg.model.name)
    trainable = isinstance(factory, type) and issubclass(factory, TKGModel)
    parts = part_configs(cfg, out) if trainable and cfg.pipeline.students else {}
    if restart:
        clear(out)
    # each part's folder against its own slice of the config (distkg.runfolder.SLICES), all before any
    # is written, once (the parts are then told checked=True): a new student leaves the teachers'
    # folders the configuration they were. A folder of parts holds no run of its own: its config.yaml
    # is the job's config as last run, its report is rebuilt from the parts.
    prepare_folders([(part_cfg, folder, kind) for folder, (part_cfg, kind) in (parts or {out: (cfg, "kg")}).items()],
                    write=not trainable)  # a part's config is written when it runs
    out.mkdir(parents=True, exist_ok=True)
    if parts:
        save_slice(cfg, "pipeline", out / "config.yaml")
    if parts or not trainable:
        write_kind(out, "pipeline" if parts else "baseline")
    ds = load_dataset(cfg.data)
    log.info("%s", ds.describe())
    (out / "data_stats.json").write_text(json.dumps(ds.stats(), indent=2))
    if not trainable:  # training-free: evaluate as given
        model = MODELS.create(cfg.model.name, cfg.model.args, "model.args", dataset=ds)
        metrics = evaluate_model(cfg, ds, model, out)
        rows = {f"{cfg.model.name} ({split})": m for split, m in metrics["splits"].items()}
    elif not cfg.pipeline.students:  # one trainable model: train, then test
        metrics = train(cfg, out, dataset=ds, checked=True)
        rows = {f"{cfg.model.name} {metrics['dim']}-d (test, best epoch {metrics['best_epoch']})": metrics}
    else:
        return run_pipeline(cfg, ds, out, command, parts)
    report = write_report(out, ds, f"distkg run: {cfg.model.name} on {ds.name}", rows, command)
    log.info("wrote %s and %s", out / "metrics.json", report)
    return metrics


def student_config(cfg: RunConfig, method: str, teacher_run: Path, llm_run: Path | None) -> RunConfig:
    """The run config of one student: the teacher's backbone at pipeline.student_dim, the method's stages."""
    pipeline_cfg = cfg.pipeline
    model = ModelConfig(cfg.model.name, {**cfg.model.args, "dim": pipeline_cfg.student_dim})
    distill = dataclasses.replace(pipeline_cfg.students[method], method=method, teacher_run=str(teacher_run),
                                  llm_run=str(llm_run) if llm_run else None)
    return dataclasses.replace(cfg, model=model, distill=distill)


def teacher_folders(cfg: RunConfig, out: Path) -> tuple[Path, Path | None]:
    """Where a pipeline's KG teacher and LLM teacher (None without ``pipeline.llm``) are trained."""
    return out / "teacher", (out / "llm" if cfg.pipeline.llm else None)


def part_configs(cfg: RunConfig, out: Path) -> dict[Path, tuple[RunConfig, str]]:
    """The folder, config and kind (distkg.runfolder.SLICES) of every part of a pipeline with students;
    each method's losses checked."""
    from distkg.distill.runner import check_method

    teacher_run, llm_run = teacher_folders(cfg, out)
    parts = {teacher_run: (cfg, "kg"), **({llm_run: (cfg, "llm")} if llm_run else {})}
    for method in cfg.pipeline.students:
        student = student_config(cfg, method, teacher_run, llm_run)
        check_method(student)  # before anything is trained
        parts[out / "students" / method] = (student, "student")
    return parts


def run_pipeline(cfg: RunConfig, ds: TKGDataset, out: Path, command: str,
                 configs: dict[Path, tuple[RunConfig, str]]) -> dict:
    from distkg.distill.runner import distill
    from distkg.llm.train import train_teacher

    pipeline_cfg = cfg.pipeline
    teacher_run, llm_run = teacher_folders(cfg, out)
    students = {m: configs[out / "students" / m][0] for m in pipeline_cfg.students}
    parts = [Part(f"teacher: {cfg.model.name} {cfg.model.args.get('dim', '')}-d", teacher_run,
                  lambda: train(cfg, teacher_run, dataset=ds, checked=True), cfg, "kg")]
    if llm_run:
        parts.append(Part(f"LLM teacher: {cfg.llm.model} ({cfg.llm.quantization}, {llm_training(cfg)})", llm_run,
                          lambda: train_teacher(cfg, llm_run, dataset=ds, checked=True), cfg, "llm"))
    for method, student_cfg in students.items():
        parts.append(Part(f"student {pipeline_cfg.student_dim}-d: {method}", out / "students" / method,
                          lambda student_cfg=student_cfg, method=method:
                          distill(student_cfg, out / "students" / method, dataset=ds, checked=True), student_cfg,
                          "student"))
    rows: dict[str, dict] = {}
    walls_path = out / "walls.json"  # each part's wall time when it ran, so a report that reuses it keeps it
    walls: dict[str, float] = {}
    try:
        walls = read_json(walls_path) if walls_path.is_file() else {}
    except ConfigError as e:  # only the report's wall column is lost
        log.warning("%s; the wall times of parts run before are not reported", e)
    started = time.perf_counter()
    for i, part in enumerate(parts):
        log.info("[pipeline %d/%d] %s -> %s (%.0fs elapsed)", i + 1, len(parts), part.name, part.folder,
                 time.perf_counter() - started)
        outcome = run_part(part, checked=True)
        if outcome.seconds is None:
            log.info("[pipeline %d/%d] done before: read %s", i + 1, len(parts), part.folder / "metrics.json")
        else:
            walls[part.folder.relative_to(out).as_posix()] = outcome.seconds
            walls_path.write_text(json.dumps(walls, indent=2))
        rows[part.name] = outcome.metrics
    part_walls = {part.name: walls.get(part.folder.relative_to(out).as_posix()) for part in parts}
    sections = pipeline_sections(rows, parts, part_walls, time.perf_counter() - started, out)
    summary = {"parts": {name: {k: m.get(k) for k in ("mrr", "mr", "hits@1", "hits@3", "hits@10", "parameters",
                                                         "train_seconds", "finetune_seconds", "eval_seconds")}
                         for name, m in rows.items()}, "dataset": ds.name, "protocol": next(iter(rows.values()))["protocol"]}
    write_metrics(out, summary)
    report = write_report(out, ds, f"distkg run: {cfg.model.name} teacher, LLM teacher and students on {ds.name}",
                          rows, command, sections)
    log.info("pipeline done in %.0fs; wrote %s", time.perf_counter() - started, report)
    return summary
