"""``distkg reproduce``: the paper's grid of teachers, LLM teachers and students, resumable, with its report.

A grid config (configs/reproduce/*.yaml) names datasets, backbones, methods, student sizes and
seeds, and templates for the config files of each part. The grid runs, in order:
  1. one 400-d KG teacher per (backbone, dataset)      -> OUT/teachers/BACKBONE-DATASET
  2. one fine-tuned LLM teacher per dataset, if a method reads P_LLM -> OUT/llm/DATASET
  3. every student: (backbone, dataset, dim, method, seed) -> STUDENTS/BACKBONE-DATASET-DIMd/METHOD-seedN,
     STUDENTS being ``student_root`` (OUT/students unless a grid points at another grid's students,
     as the size sweep and the ablation do, to reuse the cells they share with the paper's grid)
Each part runs through distkg.experiments.parts, as the parts of ``distkg run`` do: its folder must
hold the part's config (else rc 2, nothing run: a changed grid is a new --out), it is skipped when
its metrics.json exists and raises no budget, and resumed from its checkpoints otherwise, so an
interrupted grid continues where it stopped. Teacher outputs are cached once per teacher (distkg.distill.teachers.derived_folder), so every
method and seed reuses them.

Several processes may run one grid at once (one per core, or per node on a shared filesystem;
distkg.experiments.claims, distkg.experiments.jobs): a process claims a part (RUN/claim: host and pid)
before running it and leaves parts claimed by others; a student part is then left to its holder, a
teacher part is waited for. A claim of a dead process on the same host is taken over.

Report (OUT/, distkg.experiments.report.write_grid_report): results.csv and results.json (one row per
student), table.md (the paper's layout, mean +- std over seeds, the paper's numbers beside ours),
costs.md (wall time of each part and the LLM's share), comparison.png and curves.png; sizes.png (MRR
against student dimension) when the grid has several dims.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

from distkg.config import RunConfig, load_config
from distkg.data import TKGDataset, load_dataset
from distkg.errors import DistkgError
from distkg.experiments.claims import held_elsewhere
from distkg.experiments.gridconfig import GridConfig, SecondConfig, cell_method, method_labels, needs_llm, second_names
from distkg.experiments.parts import Part, run_part
from distkg.experiments.report import METRIC_KEYS, write_grid_report, write_sweep_report
from distkg.runfolder import read_metrics, run_config, write_kind

log = logging.getLogger("distkg")


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
        cfg = load_config(self._fill(self.grid.teacher_config, backbone=backbone, dataset=dataset),
                          self.root + self.grid.teacher_set + ["train.progress=false", "eval.progress=false"])

        def work() -> dict:
            log.info("== teacher %s on %s -> %s", backbone, dataset, run)
            return train(cfg, run, dataset=self.dataset(cfg), checked=True)

        run_part(Part("teacher", run, work, cfg, "kg"))
        return run

    def llm(self, dataset: str, second: SecondConfig | None = None) -> Path:
        from distkg.llm.train import train_teacher

        config = second.config if second is not None and second.config else self.grid.llm_config
        run = Path(self._fill(second.run if second is not None and second.run else self.grid.llm_run, dataset=dataset))

        cfg = load_config(self._fill(config, dataset=dataset),
                          self.root + self.grid.llm_set + (second.set if second is not None else []))

        def work() -> dict:
            log.info("== LLM teacher on %s -> %s", dataset, run)
            return train_teacher(cfg, run, dataset=self.dataset(cfg), checked=True)

        run_part(Part("LLM teacher", run, work, cfg, "llm"))
        return run

    def _second(self, name: str) -> SecondConfig:
        return next(s for s in self.grid.seconds if s.name == name)

    def second_run(self, name: str | None, backbone: str, dataset: str, make: bool = True) -> Path:
        """The folder of second teacher ``name`` (None: the grid's LLM teacher) for a cell of ``backbone``
        on ``dataset``, made first when missing (``make``)."""
        if name is None:
            return self.llm(dataset) if make else Path(self._fill(self.grid.llm_run, dataset=dataset))
        second = self._second(name)
        if second.kind == "llm":
            if not make:
                return Path(self._fill(second.run or self.grid.llm_run, dataset=dataset))
            return self.llm(dataset, second)
        if second.kind == "kg":
            other = {"same": backbone, "other": next((b for b in self.grid.backbones if b != backbone), backbone)}
            kg = other.get(second.backbone, second.backbone)
            return self.teacher(kg, dataset) if make else Path(self._fill(self.grid.teacher_run, backbone=kg, dataset=dataset))
        run = self.out / "seconds" / name / f"{backbone}-{dataset}"
        if make:
            from distkg.experiments.ensemble import ensemble

            members = [self.second_run(m, backbone, dataset) for m in second.members]

            def work() -> dict:
                data = self.dataset(run_config(members[0], self.root))
                log.info("== ensemble %s of %s -> %s", name, " and ".join(map(str, members)), run)
                return ensemble(members, run, self.grid.data_root, dataset=data)

            run_part(Part("ensemble", run, work))
        return run

    def waits_on_another(self, backbone: str, dataset: str, dim: int, method: str, seed: int,
                         second: str | None = None) -> bool:
        """The cell is unfinished and its teacher (or second teacher) is being trained by another
        process: better to take a cell that can start now than to wait (``--jobs``)."""
        if read_metrics(self.student_run(backbone, dataset, dim, method, seed, second)) is not None:
            return False
        parts = [Path(self._fill(self.grid.teacher_run, backbone=backbone, dataset=dataset))]
        if needs_llm(self.grid, method):
            parts.append(self.second_run(second, backbone, dataset, make=False))
        return any(held_elsewhere(run) for run in parts)

    def student_run(self, backbone: str, dataset: str, dim: int, method: str, seed: int,
                    second: str | None = None) -> Path:
        return (Path(self._fill(self.grid.student_root)) / f"{backbone}-{dataset}-{dim}d"
                / f"{cell_method(method, second)}-seed{seed}")

    def student(self, backbone: str, dataset: str, dim: int, method: str, seed: int,
                second: str | None = None) -> dict | None:
        """The cell's result row, training it first if needed; None when another process holds it."""
        from distkg.distill.runner import distill

        run = self.student_run(backbone, dataset, dim, method, seed, second)
        reads_llm = needs_llm(self.grid, method)
        teacher_run = Path(self._fill(self.grid.teacher_run, backbone=backbone, dataset=dataset))
        sets = [f"model.args.dim={dim}", f"seed={seed}", f"distill.method={method}", f"distill.teacher_run={teacher_run}",
                *([f"distill.llm_run={self.second_run(second, backbone, dataset, make=False)}"] if reads_llm else []),
                "train.progress=false", "eval.progress=false", *self.root, *self.grid.student_set]
        cfg = load_config([self._fill(self.grid.student_config, backbone=backbone, dataset=dataset),
                           self._fill(self.grid.method_config, method=method)], sets)

        def work() -> dict:
            self.teacher(backbone, dataset)  # the teachers first (each a part of its own)
            if reads_llm:
                self.second_run(second, backbone, dataset)
            log.info("== student %s %d-d on %s, %s, seed %d -> %s", backbone, dim, dataset, method, seed, run)
            return distill(cfg, run, dataset=self.dataset(cfg), checked=True)

        if (outcome := run_part(Part("student", run, work, cfg, "student"), wait=False)) is None:
            return None
        metrics = outcome.metrics
        return {"backbone": backbone, "dataset": dataset, "dim": dim, "method": cell_method(method, second), "seed": seed,
                "second": second or "", **{k: metrics[k] for k in METRIC_KEYS}, "train_seconds": metrics["train_seconds"],
                "best_epoch": metrics["best_epoch"], "epochs_run": metrics["epochs_run"], "run": str(run)}


def second_strengths(g: Grid, rows: list[dict]) -> dict[tuple[str, str, str], float]:
    """(backbone, dataset, second name) -> the second teacher's own test MRR, for the finished ones."""
    out = {}
    for b, d in {(r["backbone"], r["dataset"]) for r in rows}:
        for second in g.grid.seconds:
            metrics = read_metrics(g.second_run(second.name, b, d, make=False))
            if metrics is not None:
                out[(b, d, second.name)] = metrics["mrr"]
    return out


def reproduce(grid: GridConfig, out: Path, only_report: bool = False) -> list[dict]:
    write_kind(out, "grid")
    (out / "grid.json").write_text(json.dumps(dataclasses.asdict(grid), indent=2))
    g = Grid(grid, out)
    cells = [(b, d, dim, m, s, second) for d in grid.datasets for b in grid.backbones for dim in grid.dims
             for m in grid.methods for second in second_names(grid, m) for s in grid.seeds]
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
        log.info("[grid %d/%d] %s %s %dd %s seed %d: test MRR %.4f (%.0fs; %.0fs so far)", i + 1, len(cells), *cell[:3],
                 rows[-1]["method"], cell[4], rows[-1]["mrr"], time.perf_counter() - t, spent)
        write_grid_report(rows, grid, out, method_labels(grid))
    labels = [(b, d, dim, cell_method(m, second), s) for b, d, dim, m, s, second in cells]
    rows.sort(key=lambda r: labels.index((r["backbone"], r["dataset"], r["dim"], r["method"], r["seed"])))
    if only_report and not rows:
        raise DistkgError(f"{out}: no finished cell of this grid to report (the report reads RUN/metrics.json of "
                          "each cell); run `distkg reproduce` without --report-only first")
    write_grid_report(rows, grid, out, method_labels(grid))
    if grid.seconds:
        write_sweep_report(rows, second_strengths(g, rows), out)
    if elsewhere:
        log.info("%d cells were held by other processes: run again (or with --report-only) once they finish "
                 "for the whole report", elsewhere)
    return rows
