"""The main job, ``distkg run CONFIG --out DIR``: data, teacher, LLM teacher, students, evaluation, report.

What runs is the config (``pipeline`` section, distkg.config.PipelineConfig):
  - a training-free model (``frequency``): evaluated as given;
  - a trainable model and no students: trained and tested (OUT/metrics.json);
  - with students: the model is the 400-d teacher (OUT/teacher), the LLM teacher is fine-tuned
    (OUT/llm) when ``pipeline.llm``, and each student method is distilled (OUT/students/METHOD).
Every part is skipped when its metrics.json exists and resumed from its checkpoints otherwise, so
an interrupted run continues where it stopped. OUT/report.md holds the table of every part, its
size and wall time, and the plots (comparison.png, curves.png).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from distkg.config import ModelConfig, RunConfig, save_config
from distkg.data import TKGDataset, load_dataset
from distkg.evaluation import eval_options, evaluate
from distkg.models import MODELS, TKGModel
from distkg.report import bar_panels, figure_row, read_metrics, write_report
from distkg.runfolder import check_folder, clear
from distkg.training.curves import valid_curve
from distkg.training.trainer import train

log = logging.getLogger("distkg")


def evaluate_model(cfg: RunConfig, ds: TKGDataset, model, out: Path) -> dict:
    """Evaluate on every configured split; metrics.json holds the test split at the top level."""
    results: dict = {}
    options = eval_options(cfg)
    for split in cfg.eval.splits:
        t = time.perf_counter()
        m = evaluate(model, ds, split=split, options=options)
        m["seconds"] = round(time.perf_counter() - t, 3)
        results[split] = m
        log.info("%s %s: MRR %.4f  MR %.1f  H@1 %.4f  H@3 %.4f  H@10 %.4f", ds.name, split,
                 m["mrr"], m["mr"], m["hits@1"], m["hits@3"], m["hits@10"])
    main_split = "test" if "test" in results else cfg.eval.splits[-1]
    metrics = {**results[main_split], "split": main_split, "dataset": ds.name, "model": cfg.model.name,
               "splits": results}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
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
    for folder, part_cfg in {out: cfg, **parts}.items():
        check_folder(part_cfg, folder)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    ds = load_dataset(cfg.data)
    log.info("%s", ds.describe())
    (out / "data_stats.json").write_text(json.dumps(ds.stats(), indent=2))
    if not trainable:  # training-free: evaluate as given
        model = MODELS.create(cfg.model.name, cfg.model.args, "model.args", dataset=ds)
        metrics = evaluate_model(cfg, ds, model, out)
        rows = {f"{cfg.model.name} ({split})": m for split, m in metrics["splits"].items()}
    elif not cfg.pipeline.students:  # one trainable model: train, then test
        metrics = train(cfg, out, dataset=ds)
        rows = {f"{cfg.model.name} {metrics['dim']}-d (test, best epoch {metrics['best_epoch']})": metrics}
    else:
        return run_pipeline(cfg, ds, out, command, parts)
    report = write_report(out, ds, f"distkg run: {cfg.model.name} on {ds.name}", rows, command)
    log.info("wrote %s and %s", out / "metrics.json", report)
    return metrics


def student_config(cfg: RunConfig, method: str, teacher_run: Path, llm_run: Path | None) -> RunConfig:
    """The run config of one student: the teacher's backbone at pipeline.student_dim, the method's stages."""
    pc = cfg.pipeline
    model = ModelConfig(cfg.model.name, {**cfg.model.args, "dim": pc.student_dim})
    distill = dataclasses.replace(pc.students[method], method=method, teacher_run=str(teacher_run),
                                  llm_run=str(llm_run) if llm_run else None)
    return dataclasses.replace(cfg, model=model, distill=distill)


def part_configs(cfg: RunConfig, out: Path) -> dict[Path, RunConfig]:
    """The folder and config of every part of a pipeline with students; each method's losses checked."""
    from distkg.distill.runner import check_method

    pc = cfg.pipeline
    teacher_run, llm_run = out / "teacher", (out / "llm" if pc.llm else None)
    parts = {teacher_run: cfg, **({llm_run: cfg} if llm_run else {})}
    for method in pc.students:
        parts[out / "students" / method] = student_config(cfg, method, teacher_run, llm_run)
        check_method(parts[out / "students" / method])  # before anything is trained
    return parts


def run_pipeline(cfg: RunConfig, ds: TKGDataset, out: Path, command: str, configs: dict[Path, RunConfig]) -> dict:
    from distkg.distill.runner import distill
    from distkg.llm.finetune import finetune

    pc = cfg.pipeline
    teacher_run, llm_run = out / "teacher", (out / "llm" if pc.llm else None)
    students = {m: configs[out / "students" / m] for m in pc.students}
    parts: list[tuple[str, Path, Callable[[], dict]]] = [
        (f"teacher: {cfg.model.name} {cfg.model.args.get('dim', '')}-d", teacher_run,
         lambda: train(cfg, teacher_run, dataset=ds))]
    if llm_run:
        parts.append((f"LLM teacher: {cfg.llm.model} ({cfg.llm.quantization}, LoRA r={cfg.llm.lora_r})", llm_run,
                      lambda: finetune(cfg, llm_run, dataset=ds)))
    for method, scfg in students.items():
        parts.append((f"student {pc.student_dim}-d: {method}", out / "students" / method,
                      lambda scfg=scfg, method=method: distill(scfg, out / "students" / method, dataset=ds)))
    rows: dict[str, dict] = {}
    walls_path = out / "walls.json"  # each part's wall time when it ran, so a report that reuses it keeps it
    walls: dict[str, float] = json.loads(walls_path.read_text()) if walls_path.is_file() else {}
    started = time.perf_counter()
    for i, (name, folder, work) in enumerate(parts):
        done = read_metrics(folder)
        log.info("[pipeline %d/%d] %s -> %s (%.0fs elapsed)%s", i + 1, len(parts), name, folder,
                 time.perf_counter() - started, " (done before; reading it)" if done else "")
        if done is None:
            t = time.perf_counter()
            done = work()
            walls[folder.relative_to(out).as_posix()] = round(time.perf_counter() - t, 1)
            walls_path.write_text(json.dumps(walls, indent=2))
        rows[name] = done
    part_walls = {name: walls.get(folder.relative_to(out).as_posix()) for name, folder, _ in parts}
    sections = [_cost_section(rows, part_walls, time.perf_counter() - started)]
    _plots(rows, parts, out)
    sections.append("## Comparison\n\n![test MRR of each part](comparison.png)")
    summary = {"parts": {name: {k: m.get(k) for k in ("mrr", "mr", "hits@1", "hits@3", "hits@10", "parameters",
                                                         "train_seconds", "finetune_seconds", "eval_seconds")}
                         for name, m in rows.items()}, "dataset": ds.name, "protocol": next(iter(rows.values()))["protocol"]}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    report = write_report(out, ds, f"distkg run: {cfg.model.name} teacher, LLM teacher and students on {ds.name}",
                          rows, command, sections)
    log.info("pipeline done in %.0fs; wrote %s", time.perf_counter() - started, report)
    return summary


def _cost_section(rows: dict[str, dict], walls: dict[str, float | None], total: float) -> str:
    """Parameters, training seconds and the wall time of each part when it ran (kept when reused)."""
    lines = ["## Size and cost", "",
             "| part | parameters | seconds (training / fine-tuning) | wall seconds (part, when it ran) |",
             "|---|---|---|---|"]
    for name, m in rows.items():
        seconds = m.get("train_seconds", m.get("finetune_seconds"))
        wall = walls.get(name)
        lines.append(f"| {name} | {m.get('parameters', '–')} | {seconds} | {'–' if wall is None else wall} |")
    known = [w for w in walls.values() if w is not None]
    lines.append(f"\nWall time of all parts: {sum(known):.0f} s; of this invocation: {total:.0f} s "
                 "(a part finished by an earlier invocation is read, not run again).")
    return "\n".join(lines)


def _plots(rows: dict[str, dict], parts: list, out: Path) -> None:
    names = list(rows)
    bar_panels([("test MRR (filtered, realistic ties)", [n.split(": ", 1)[-1] for n in names],
                 [rows[n]["mrr"] for n in names], [0.0] * len(names))], out / "comparison.png", "MRR")
    with figure_row(1, 6, 3.5, out / "curves.png") as (ax,):
        for name, folder, _ in parts:
            epochs, mrr = valid_curve(folder) if name.startswith("student") else ([], [])
            if epochs:
                ax.plot(epochs, mrr, "o-", markersize=3, label=name.split(": ", 1)[-1])
        ax.set_xlabel("epoch")
        ax.set_ylabel("valid MRR")
        ax.legend(fontsize=8)
