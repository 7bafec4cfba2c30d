"""``distkg reproduce``: the paper's grid of teachers, LLM teachers and students, resumable, with its report.

A grid config (configs/reproduce/*.yaml) names datasets, backbones, methods, student sizes and
seeds, and templates for the config files of each part. The grid runs, in order:
  1. one 400-d KG teacher per (backbone, dataset)      -> OUT/teachers/BACKBONE-DATASET
  2. one fine-tuned LLM teacher per dataset, if a method reads P_LLM -> OUT/llm/DATASET
  3. every student: (backbone, dataset, dim, method, seed) -> STUDENTS/BACKBONE-DATASET-DIMd/METHOD-seedN,
     STUDENTS being ``student_root`` (OUT/students unless a grid points at another grid's students,
     as the size sweep and the ablation do, to reuse the cells they share with the paper's grid)
Each part is skipped when its metrics.json exists and resumed from its checkpoints otherwise, so
an interrupted grid continues where it stopped. Teacher outputs are cached in the teacher's run
(distkg.distill.teachers), so every method and seed reuses them.

Several processes may run one grid at once (one per core, or per node on a shared filesystem;
distkg.claims): a process claims a part (RUN/claim: host and pid) before running it and leaves parts claimed by
others; a student part is then left to its holder, a teacher part is waited for. A claim of a
dead process on the same host is taken over.

Report (OUT/): results.csv and results.json (one row per student), table.md (the paper's layout,
mean +- std over seeds, the paper's numbers beside ours), costs.md (wall time of each part and
the LLM's share), comparison.png and curves.png; sizes.png (MRR against student dimension) when the grid has several dims.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from distkg.claims import claim, held_elsewhere, holding, wait_for
from distkg.config import RunConfig, build_overridden, load_config, read_yaml
from distkg.data import TKGDataset, load_dataset
from distkg.distill.losses import INPUTS
from distkg.errors import DistkgError
from distkg.report import bar_panels, figure_row, read_metrics
from distkg.training.curves import valid_curve

log = logging.getLogger("distkg")

METRICS = ("mrr", "mr", "hits@1", "hits@3", "hits@10")

@dataclass
class GridConfig:
    """What ``distkg reproduce`` runs; ``{backbone}``, ``{dataset}``, ``{method}``, ``{out}`` are filled in."""

    datasets: list[str] = field(default_factory=lambda: ["yago11k", "wikidata12k"])
    backbones: list[str] = field(default_factory=lambda: ["ttranse", "tadistmult"])
    methods: list[str] = field(default_factory=lambda: ["plain", "bkd", "fitnet", "rkd", "ours"])
    dims: list[int] = field(default_factory=lambda: [25])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    teacher_config: str = "configs/train/{backbone}-{dataset}-400.yaml"
    student_config: str = "configs/train/{backbone}-{dataset}-25.yaml"
    llm_config: str = "configs/llm/smollm2-{dataset}.yaml"
    method_config: str = "configs/distill/{method}.yaml"
    teacher_run: str = "{out}/teachers/{backbone}-{dataset}"  # point at existing `distkg train` runs to reuse them
    llm_run: str = "{out}/llm/{dataset}"
    student_root: str = "{out}/students"
    teacher_set: list[str] = field(default_factory=list)  # --set overrides for every teacher run
    llm_set: list[str] = field(default_factory=list)
    student_set: list[str] = field(default_factory=list)
    data_root: str | None = None
    published: str | None = "configs/reproduce/paper-table.csv"  # numbers shown beside ours in table.md; None: none


def published_mrr(path: str | None) -> dict[tuple[str, str, str], float]:
    """(backbone, dataset, method) -> MRR in % from a CSV of published results ('#' lines are notes)."""
    if path is None:
        return {}
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
        return {(r["backbone"], r["dataset"], r["method"]): float(r["mrr"]) for r in rows}
    except (OSError, KeyError, ValueError) as e:
        raise DistkgError(f"{path}: cannot read the published table (published): {e}") from None


def load_grid(path: str, overrides: list[str], data_root: str | None = None) -> GridConfig:
    values = read_yaml(path)
    if data_root:
        values["data_root"] = data_root
    return build_overridden(GridConfig, values, path, overrides)


def _needs_llm(grid: GridConfig, method: str) -> bool:
    cfg = load_config(grid.method_config.format(method=method))
    return any("llm_probs" in INPUTS.get(name, ()) for s in cfg.distill.stages for name in s.losses)


class Grid:
    """The runs of a grid config under OUT, each loaded or run on demand."""

    def __init__(self, grid: GridConfig, out: Path) -> None:
        self.grid, self.out = grid, out
        self.data: dict[str, TKGDataset] = {}
        self.root = [f"data.root={grid.data_root}"] if grid.data_root else []

    def _fill(self, template: str, **kw) -> str:
        return template.format(out=self.out, **kw)

    def dataset(self, cfg: RunConfig) -> TKGDataset:
        key = repr(cfg.data)
        if key not in self.data:
            self.data[key] = load_dataset(cfg.data)
        return self.data[key]

    def teacher(self, backbone: str, dataset: str) -> Path:
        from distkg.training.trainer import train

        run = Path(self._fill(self.grid.teacher_run, backbone=backbone, dataset=dataset))
        wait_for(run, "teacher")
        with holding(run):
            if read_metrics(run) is None:  # claimed by this process
                cfg = load_config(self._fill(self.grid.teacher_config, backbone=backbone, dataset=dataset),
                                  self.root + self.grid.teacher_set + ["train.progress=false", "eval.progress=false"])
                log.info("== teacher %s on %s -> %s", backbone, dataset, run)
                train(cfg, run, dataset=self.dataset(cfg))
        return run

    def llm(self, dataset: str) -> Path:
        from distkg.llm.finetune import finetune

        run = Path(self._fill(self.grid.llm_run, dataset=dataset))
        wait_for(run, "LLM teacher")
        with holding(run):
            if read_metrics(run) is None:
                cfg = load_config(self._fill(self.grid.llm_config, dataset=dataset), self.root + self.grid.llm_set)
                log.info("== LLM teacher on %s -> %s", dataset, run)
                finetune(cfg, run, dataset=self.dataset(cfg))
        return run

    def waits_on_another(self, backbone: str, dataset: str, dim: int, method: str, seed: int) -> bool:
        """The cell is unfinished and its teacher (or LLM teacher) is being trained by another
        process: better to take a cell that can start now than to wait (``--jobs``)."""
        if read_metrics(self.student_run(backbone, dataset, dim, method, seed)) is not None:
            return False
        parts = [Path(self._fill(self.grid.teacher_run, backbone=backbone, dataset=dataset))]
        if _needs_llm(self.grid, method):
            parts.append(Path(self._fill(self.grid.llm_run, dataset=dataset)))
        return any(held_elsewhere(run) for run in parts)

    def student_run(self, backbone: str, dataset: str, dim: int, method: str, seed: int) -> Path:
        return Path(self._fill(self.grid.student_root)) / f"{backbone}-{dataset}-{dim}d" / f"{method}-seed{seed}"

    def student(self, backbone: str, dataset: str, dim: int, method: str, seed: int) -> dict | None:
        """The cell's result row, training it first if needed; None when another process holds it."""
        from distkg.distill.runner import distill

        run = self.student_run(backbone, dataset, dim, method, seed)
        if read_metrics(run) is None and (holder := claim(run)) is not None:
            log.info("student %s is being trained by %s; left to it", run, holder)
            return None
        with holding(run):
            if (metrics := read_metrics(run)) is None:
                needs_llm = _needs_llm(self.grid, method)
                sets = [f"model.args.dim={dim}", f"seed={seed}", f"distill.method={method}",
                        f"distill.teacher_run={self.teacher(backbone, dataset)}",
                        *([f"distill.llm_run={self.llm(dataset)}"] if needs_llm else []),
                        "train.progress=false", "eval.progress=false", *self.root, *self.grid.student_set]
                cfg = load_config([self._fill(self.grid.student_config, backbone=backbone, dataset=dataset),
                                   self._fill(self.grid.method_config, method=method)], sets)
                log.info("== student %s %d-d on %s, %s, seed %d -> %s", backbone, dim, dataset, method, seed, run)
                metrics = distill(cfg, run, dataset=self.dataset(cfg))
        return {"backbone": backbone, "dataset": dataset, "dim": dim, "method": method, "seed": seed,
                **{k: metrics[k] for k in METRICS}, "train_seconds": metrics["train_seconds"],
                "best_epoch": metrics["best_epoch"], "epochs_run": metrics["epochs_run"], "run": str(run)}


def reproduce(grid: GridConfig, out: Path, only_report: bool = False) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "grid.json").write_text(json.dumps(grid.__dict__, indent=2))
    g = Grid(grid, out)
    cells = [(b, d, dim, m, s) for d in grid.datasets for b in grid.backbones for dim in grid.dims
             for m in grid.methods for s in grid.seeds]
    rows, started, elsewhere = [], time.perf_counter(), 0
    pending = list(enumerate(cells))
    while pending:
        # in grid order, except that cells whose teacher another process is training wait their turn
        i, cell = next(((i, c) for i, c in pending if only_report or not g.waits_on_another(*c)), pending[0])
        pending.remove((i, cell))
        if only_report and read_metrics(g.student_run(*cell)) is None:
            continue
        t = time.perf_counter()
        if (row := g.student(*cell)) is None:
            elsewhere += 1
            continue
        rows.append(row)
        spent = time.perf_counter() - started
        log.info("[grid %d/%d] %s %s %dd %s seed %d: test MRR %.4f (%.0fs; %.0fs so far)", i + 1, len(cells), *cell,
                 rows[-1]["mrr"], time.perf_counter() - t, spent)
        write_grid_report(rows, grid, out)
    rows.sort(key=lambda r: cells.index((r["backbone"], r["dataset"], r["dim"], r["method"], r["seed"])))
    if only_report and not rows:
        raise DistkgError(f"{out}: no finished cell of this grid to report (the report reads RUN/metrics.json of "
                          "each cell); run `distkg reproduce` without --report-only first")
    write_grid_report(rows, grid, out)
    if elsewhere:
        log.info("%d cells were held by other processes: run again (or with --report-only) once they finish "
                 "for the whole report", elsewhere)
    return rows


# ------------------------------------------------------------------------------------------ --jobs
SMALL_MACHINE_CORES = 8  # up to this many cores, a grid runs as one 1-thread process per core


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_jobs(cores: int | None = None) -> int:
    """Processes for ``distkg reproduce --jobs auto``: one per core on a small machine, where a 25-d
    student's step is too small to keep two threads busy (two 1-thread cells finish sooner than two
    2-thread cells in turn); one process with every thread on a larger one."""
    cores = usable_cores() if cores is None else cores
    return cores if cores <= SMALL_MACHINE_CORES else 1


def worker_command(config: str, out: str, sets: list[str], data_root: str | None) -> list[str]:
    """The command of one ``--jobs`` worker: the same grid, one process, claims deciding its cells."""
    import sys

    cmd = [sys.executable, "-m", "distkg", "reproduce", "--config", config, "--out", out, "--jobs", "1"]
    for item in sets:
        cmd += ["--set", item]
    return cmd + (["--data-root", data_root] if data_root else [])


def run_jobs(jobs: int, config: str, out: str, sets: list[str], data_root: str | None) -> int:
    """Run a grid as ``jobs`` 1-thread worker processes (they split it by claims, teachers
    included) and wait for them; the worst exit status. The caller writes the report after."""
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log.info("running the grid as %d one-thread processes (--jobs)", jobs)
    workers = [subprocess.Popen(worker_command(config, out, sets, data_root), env=env) for _ in range(jobs)]
    try:
        return max(w.wait() for w in workers)
    finally:
        for w in workers:  # interrupted: stop the workers this process started (their claims free up)
            if w.poll() is None:
                w.terminate()


# ------------------------------------------------------------------------------------------ report
def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cell(values: list[float], scale: float, digits: int) -> str:
    m, s = _mean_std([v * scale for v in values])
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def write_grid_report(rows: list[dict], grid: GridConfig, out: Path) -> None:
    if not rows:
        return
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["backbone"], r["dataset"], r["dim"], r["method"]), []).append(r)
    summary = [{"backbone": b, "dataset": d, "dim": dim, "method": m, "seeds": len(rs),
                **{f"{k}_mean": _mean_std([r[k] for r in rs])[0] for k in METRICS},
                **{f"{k}_std": _mean_std([r[k] for r in rs])[1] for k in METRICS},
                "train_seconds_mean": _mean_std([r["train_seconds"] for r in rs])[0]}
               for (b, d, dim, m), rs in groups.items()]
    (out / "results.json").write_text(json.dumps({"runs": rows, "summary": summary}, indent=2))
    (out / "table.md").write_text(_table(groups, grid))
    (out / "costs.md").write_text(_costs(groups, grid, out))
    _plot_comparison(groups, grid, out / "comparison.png")
    _plot_curves(groups, grid, out / "curves.png")
    if len(grid.dims) > 1:
        _plot_sizes(groups, grid, out / "sizes.png")


def _table(groups: dict[tuple, list[dict]], grid: GridConfig) -> str:
    """The paper's layout: a row per (backbone, dim, method), a column block per dataset."""
    published = published_mrr(grid.published)
    lines = ["MRR and Hits in %, mean ± std over seeds (n); test split, time-aware filter, realistic ties. "
             "Paper: the paper's value under its own protocol (compare the order of methods, not values).", ""]
    head = ["backbone", "dim", "method", "n"]
    for d in grid.datasets:
        head += [f"{d} MRR", "MR", "H@1", "H@3", "H@10", "paper MRR"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b in grid.backbones:
        for dim in grid.dims:
            for m in grid.methods:
                cells = [b, str(dim), m]
                n = 0
                for d in grid.datasets:
                    rs = groups.get((b, d, dim, m), [])
                    n = max(n, len(rs))
                    if not rs:
                        cells += ["–"] * 6
                        continue
                    cells += [_cell([r["mrr"] for r in rs], 100, 2), _cell([r["mr"] for r in rs], 1, 0)]
                    cells += [_cell([r[k] for r in rs], 100, 2) for k in ("hits@1", "hits@3", "hits@10")]
                    paper = published.get((b, d, m))
                    cells.append(f"{paper:.2f}" if paper is not None and dim == 25 else "–")
                cells.insert(3, str(n))
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _costs(groups: dict[tuple, list[dict]], grid: GridConfig, out: Path) -> str:
    """Wall time of each part; the LLM's share of what the LLM-guided method costs end to end."""
    lines = ["Wall time in seconds on this machine (teacher and LLM runs once per grid; students: mean per seed).", "",
             "| part | dataset | seconds |", "|---|---|---|"]
    llm_seconds: dict[str, float] = {}
    teacher_seconds: dict[tuple, float] = {}
    for d in grid.datasets:
        for b in grid.backbones:
            m = read_metrics(Path(grid.teacher_run.format(out=out, backbone=b, dataset=d)))
            if m:
                teacher_seconds[(b, d)] = m.get("train_seconds", 0.0)
                lines.append(f"| {b} 400-d teacher training | {d} | {teacher_seconds[(b, d)]:.0f} |")
        m = read_metrics(Path(grid.llm_run.format(out=out, dataset=d)))
        if m:
            llm_seconds[d] = m.get("finetune_seconds", 0.0) + m.get("eval_seconds", 0.0)
            lines.append(f"| LLM teacher fine-tuning + evaluation ({m.get('steps')} steps) | {d} | {llm_seconds[d]:.0f} |")
    for (b, d, dim, m), rs in groups.items():
        lines.append(f"| {b} {dim}-d student, {m} | {d} | {_mean_std([r['train_seconds'] for r in rs])[0]:.0f} |")
    lines += ["", "| backbone | dataset | Ours end to end (s) | LLM share |", "|---|---|---|---|"]
    for (b, d, dim, m), rs in groups.items():
        if m != "ours" or d not in llm_seconds:
            continue
        total = teacher_seconds.get((b, d), 0.0) + llm_seconds[d] + _mean_std([r["train_seconds"] for r in rs])[0]
        lines.append(f"| {b} {dim}-d | {d} | {total:.0f} | {100 * llm_seconds[d] / total:.0f}% |")
    return "\n".join(lines) + "\n"


def _plot_comparison(groups: dict[tuple, list[dict]], grid: GridConfig, path: Path) -> None:
    panels = []
    for b in grid.backbones:
        for d in grid.datasets:
            for dim in grid.dims:
                ms = [m for m in grid.methods if (b, d, dim, m) in groups]
                stats = [_mean_std([100 * r["mrr"] for r in groups[(b, d, dim, m)]]) for m in ms]
                if ms:
                    panels.append((f"{b} {dim}-d, {d}", ms, [x[0] for x in stats], [x[1] for x in stats]))
    if panels:
        bar_panels(panels, path, "test MRR (%), mean ± std")


def _plot_curves(groups: dict[tuple, list[dict]], grid: GridConfig, path: Path) -> None:
    panels = [(b, d, dim) for b in grid.backbones for d in grid.datasets for dim in grid.dims]
    with figure_row(len(panels), 3.6, 3.2, path) as axes:
        for ax, (b, d, dim) in zip(axes, panels):
            for m in grid.methods:
                rs = sorted(groups.get((b, d, dim, m), []), key=lambda r: r["seed"])
                epochs, mrr = valid_curve(Path(rs[0]["run"])) if rs else ([], [])
                if epochs:
                    ax.plot(epochs, mrr, label=m)
            ax.set_title(f"{b} {dim}-d, {d} (seed {min(grid.seeds)})", fontsize=9)
            ax.set_xlabel("epoch")
            ax.set_ylabel("valid MRR")


def _plot_sizes(groups: dict[tuple, list[dict]], grid: GridConfig, path: Path) -> None:
    """The size sweep's answer at a glance: test MRR against student dimension, a line per method."""
    panels = [(b, d) for b in grid.backbones for d in grid.datasets]
    with figure_row(len(panels), 4.2, 3.4, path) as axes:
        for ax, (b, d) in zip(axes, panels):
            for m in grid.methods:
                dims = [dim for dim in sorted(grid.dims) if (b, d, dim, m) in groups]
                stats = [_mean_std([100 * r["mrr"] for r in groups[(b, d, dim, m)]]) for dim in dims]
                if dims:
                    ax.errorbar(dims, [x[0] for x in stats], yerr=[x[1] for x in stats], marker="o", capsize=3, label=m)
            ax.set_xscale("log")
            ax.set_xticks(sorted(grid.dims), [str(x) for x in sorted(grid.dims)])
            ax.set_title(f"{b}, {d}", fontsize=9)
            ax.set_xlabel("student dimension")
            ax.set_ylabel("test MRR (%), mean ± std")
