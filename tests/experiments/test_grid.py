"""`distkg reproduce` on a tiny grid: every cell runs once, a second call resumes instead of retraining,
and the report (CSV, JSON, markdown with mean ± std and the paper's column, PNGs) is written.
load_dataset is replaced by a small synthetic graph (it stands in for reading YAGO11k from disk)."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from distkg.experiments import claims, jobs
from distkg.errors import ConfigError
from distkg.experiments import grid as rp
from distkg.experiments import gridconfig as gc
from distkg.distill import runner
from tests.helpers import tiny_dataset

DS = tiny_dataset("interval", n_ent=30, n_facts=300)
DS.name = "yago11k"  # so the paper's column applies


@pytest.fixture()
def grid(tmp_path, monkeypatch):
    monkeypatch.setattr(rp, "load_dataset", lambda data: DS)
    common = {"train": {"batch_size": 64, "patience": 10, "epochs": 2, "progress": False}, "eval": {"progress": False}}
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump({"model": {"name": "tadistmult", "args": {"dim": 8}}, **common}))
    (tmp_path / "student.yaml").write_text(yaml.safe_dump({"model": {"name": "tadistmult", "args": {"dim": 4}}, **common}))
    values = {"datasets": ["yago11k"], "backbones": ["tadistmult"], "methods": ["plain", "bkd"], "seeds": [0, 1],
              "teacher_config": str(tmp_path / "teacher.yaml"), "student_config": str(tmp_path / "student.yaml"),
              "student_set": ["distill.stages.0.epochs=1"]}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(values))
    return gc.load_grid(str(tmp_path / "grid.yaml"), [])


def test_grid_runs_each_cell_once_and_resumes(grid, tmp_path, monkeypatch):
    out = tmp_path / "out"
    rows = rp.reproduce(grid, out)
    assert [(r["method"], r["seed"]) for r in rows] == [("plain", 0), ("plain", 1), ("bkd", 0), ("bkd", 1)]
    assert (out / "teachers" / "tadistmult-yago11k" / "metrics.json").is_file()
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert {s["method"]: s["seeds"] for s in summary} == {"plain": 2, "bkd": 2}
    table = (out / "table.md").read_text()
    assert "| tadistmult | 25 | bkd | 2 |" in table
    assert "±" in table and "61.90" in table  # the paper's BKD MRR for TA-DistMult on YAGO11k
    assert (out / "comparison.png").stat().st_size > 0 and (out / "curves.png").stat().st_size > 0
    assert "student, bkd" in (out / "costs.md").read_text()

    def no_training(*a, **k):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(runner, "distill", no_training)
    again = rp.reproduce(grid, out)
    assert [r["mrr"] for r in again] == [r["mrr"] for r in rows]


def test_half_finished_grid_continues(grid, tmp_path):
    out = tmp_path / "out"
    grid.methods = ["plain"]
    first = rp.reproduce(grid, out)
    grid.methods = ["plain", "bkd"]
    rows = rp.reproduce(grid, out)
    assert [r["mrr"] for r in rows[:2]] == [r["mrr"] for r in first] and len(rows) == 4


def test_a_grid_reuses_the_cells_it_shares_with_another(grid, tmp_path, monkeypatch):
    # the size sweep and the ablation point student_root at the paper grid's students: shared cells
    # are read from there, the others are written there, and each grid's report stays in its own OUT
    main = tmp_path / "main"
    grid.methods = ["plain"]
    first = rp.reproduce(grid, main)
    trained = []
    original = runner.distill
    monkeypatch.setattr(runner, "distill", lambda cfg, out, **kw: trained.append(out) or original(cfg, out, **kw))
    grid.methods, grid.dims = ["plain"], [25, 6]
    grid.teacher_run, grid.student_root = str(main / "teachers" / "{backbone}-{dataset}"), str(main / "students")
    rows = rp.reproduce(grid, tmp_path / "sweep")
    assert [r["mrr"] for r in rows if r["dim"] == 25] == [r["mrr"] for r in first]
    assert trained == [main / "students" / "tadistmult-yago11k-6d" / f"plain-seed{s}" for s in (0, 1)]
    assert (tmp_path / "sweep" / "table.md").is_file() and not (tmp_path / "sweep" / "students").exists()
    assert (tmp_path / "sweep" / "sizes.png").stat().st_size > 0 and not (main / "sizes.png").exists()


def test_processes_split_a_grid_by_claims(grid, tmp_path):
    # a cell claimed by another live process is left to it; one claimed by a dead process is taken over
    import os
    import socket
    import subprocess
    import sys

    out = tmp_path / "out"
    g = rp.Grid(grid, out)
    held, dead = g.student_run("tadistmult", "yago11k", 25, "bkd", 1), g.student_run("tadistmult", "yago11k", 25, "plain", 0)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for run, pid in ((held, os.getppid()), (dead, int(gone.stdout))):
        run.mkdir(parents=True)
        (run / "claim").write_text(f"{socket.gethostname()} {pid}")
    rows = rp.reproduce(grid, out)
    assert [(r["method"], r["seed"]) for r in rows] == [("plain", 0), ("plain", 1), ("bkd", 0)]
    assert not (held / "metrics.json").exists() and (held / "claim").is_file()
    assert not (dead / "claim").exists() and not list(out.glob("**/claim"))[1:]  # only the live holder's is left
    (held / "claim").unlink()  # its holder "finished" without writing: the next call runs it
    assert len(rp.reproduce(grid, out)) == 4
    assert claims.claim(held) is None and claims.claim(held) is None  # this process may claim again what it holds
    other = f"{socket.gethostname()}-elsewhere 1"
    (held / "claim").write_text(other)
    assert claims.claim(held) == other  # another host's claim is respected (its pid cannot be checked here)


def test_a_part_that_raises_leaves_no_claim(grid, tmp_path, monkeypatch):
    # a failed cell (here a student whose training raises, standing in for a NaN loss) must not stay
    # claimed: another process, or this one on the next call, may retry it at once
    out = tmp_path / "out"

    def fails(*a, **k):
        raise FloatingPointError("loss is NaN")

    monkeypatch.setattr(runner, "distill", fails)
    with pytest.raises(FloatingPointError):
        rp.reproduce(grid, out)
    assert (out / "teachers" / "tadistmult-yago11k" / "metrics.json").is_file()
    assert not list(out.glob("**/claim"))


def test_cells_whose_teacher_another_process_trains_wait_their_turn(grid, tmp_path, monkeypatch):
    import os
    import socket

    out = tmp_path / "out"
    grid.backbones, grid.methods, grid.seeds = ["tadistmult", "ttranse"], ["plain"], [0]  # two teacher blocks
    busy = out / "teachers" / "tadistmult-yago11k"
    busy.mkdir(parents=True)
    (busy / "claim").write_text(f"{socket.gethostname()} {os.getppid()}")  # a live process trains it
    assert claims.held_elsewhere(busy) and rp.Grid(grid, out).waits_on_another("tadistmult", "yago11k", 25, "plain", 0)
    order = []
    original = runner.distill
    monkeypatch.setattr(runner, "distill", lambda cfg, run, **kw: order.append(run.parent.name) or original(cfg, run, **kw))
    monkeypatch.setattr(claims.time, "sleep", lambda s: (busy / "claim").unlink())  # the other process gives it up
    rows = rp.reproduce(grid, out)
    assert order == ["ttranse-yago11k-25d", "tadistmult-yago11k-25d"]  # the free block first, not a wait
    assert [r["backbone"] for r in rows] == ["tadistmult", "ttranse"]  # the report keeps the grid's order


def test_jobs_default_to_one_thread_process_per_core_on_a_small_machine():
    assert jobs.default_jobs(2) == 2 and jobs.default_jobs(8) == 8 and jobs.default_jobs(64) == 1
    cmd = jobs.worker_command("g.yaml", "out", ["seeds=[0]"], "/data")
    assert cmd[1:] == ["-m", "distkg", "reproduce", "--config", "g.yaml", "--out", "out", "--jobs", "1",
                       "--set", "seeds=[0]", "--data-root", "/data"]


@pytest.mark.slow
def test_a_strength_sweep_runs_each_llm_method_once_per_second_teacher(grid, tmp_path):
    # seconds: the other backbone's teacher, the cell's own teacher, and their ensemble; methods that
    # read no P_LLM (bkd) run once, bkd-l2 once per second teacher, each reading its own folder
    out = tmp_path / "out"
    for name, stages in (("bkd", [{"kd": {"temperature": 7.0}, "ce": {}}]),
                         ("bkd-l2", [{"kd": {"temperature": 7.0}, "ce": {}},
                                     {"kd": {"temperature": 7.0}, "ce": {}, "llm_huber": {"delta": 0.05}}])):
        spec = {"distill": {"method": name, "stages": [{"name": f"s{i}", "epochs": 1, "losses": losses}
                                                       for i, losses in enumerate(stages)]}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    grid.backbones, grid.methods, grid.seeds, grid.student_set = ["tadistmult", "ttranse"], ["bkd", "bkd-l2"], [0, 1], []
    grid.method_config = str(tmp_path / "{method}.yaml")
    grid.seconds = [gc.SecondConfig("other", "kg", backbone="other"), gc.SecondConfig("same", "kg", backbone="same"),
                    gc.SecondConfig("mix", "ensemble", members=["other", "same"])]
    gc.check_seconds(grid)
    rows = rp.reproduce(grid, out)
    labels = ["bkd", "bkd-l2+other", "bkd-l2+same", "bkd-l2+mix"]
    assert [r["method"] for r in rows] == [m for b in grid.backbones for m in labels for s in (0, 1)]
    read = lambda r: yaml.safe_load((out / "students" / f"{r['backbone']}-yago11k-25d" / f"{r['method']}-seed{r['seed']}" / "config.yaml").read_text())
    for r in rows:
        other = "ttranse" if r["backbone"] == "tadistmult" else "tadistmult"
        expected = {"bkd": None, "bkd-l2+other": str(out / "teachers" / f"{other}-yago11k"),
                    "bkd-l2+same": str(out / "teachers" / f"{r['backbone']}-yago11k"),
                    "bkd-l2+mix": str(out / "seconds" / "mix" / f"{r['backbone']}-yago11k")}[r["method"]]
        assert read(r)["distill"]["llm_run"] == expected
    ensemble = json.loads((out / "seconds" / "mix" / "ttranse-yago11k" / "ensemble.json").read_text())
    assert ensemble["members"] == [str((out / "teachers" / f"{b}-yago11k").resolve()) for b in ("tadistmult", "ttranse")]
    sweep = (out / "sweep.md").read_text()
    assert sweep.count("| bkd-l2 |") == 6 and (out / "sweep.png").stat().st_size > 0
    assert "| tadistmult | 25 | bkd-l2+mix | 2 |" in (out / "table.md").read_text()


def test_a_sweep_with_a_bad_second_teacher_is_refused_by_name(grid):
    grid.seconds = [gc.SecondConfig("mix", "ensemble", members=["nope", "mix"])]
    with pytest.raises(ConfigError, match=r"seconds\[0\] \(mix\): an ensemble names two other entries"):
        gc.check_seconds(grid)
    grid.seconds = [gc.SecondConfig("k", "kg", backbone="other")]  # one backbone: no other
    with pytest.raises(ConfigError, match="backbone 'other' needs exactly two backbones"):
        gc.check_seconds(grid)


def test_an_llm_second_teacher_trains_its_recipe_with_its_own_overrides(grid, tmp_path, monkeypatch):
    from distkg.llm import train as ft

    seen = []
    monkeypatch.setattr(ft, "train_teacher", lambda cfg, run, **kw: seen.append((cfg, run)) or
                        (run.mkdir(parents=True, exist_ok=True), (run / "metrics.json").write_text("{}"), {})[2])
    grid.seconds = [gc.SecondConfig("text", "llm", run="{out}/llm-text/{dataset}", set=["llm.query=text", "llm.layers=2"])]
    g = rp.Grid(grid, tmp_path / "out")
    run = g.second_run("text", "tadistmult", "yago11k")
    assert run == tmp_path / "out" / "llm-text" / "yago11k"
    (cfg, where), = seen
    assert where == run and cfg.llm.query == "text" and cfg.llm.layers == 2
    assert g.second_run(None, "tadistmult", "yago11k", make=False) == tmp_path / "out" / "llm" / "yago11k"


def test_a_changed_grid_is_refused_and_a_raised_budget_runs_on(grid, tmp_path):
    """A finished cell is reused only for its own config: another student lr stops the grid (rc 2,
    the cell and key named, nothing retrained), a larger epoch budget continues the cell."""
    from distkg.runfolder import saved_config

    out = tmp_path / "out"
    grid.methods = ["plain"]
    grid.seeds = [0]
    first = rp.reproduce(grid, out)
    grid.student_set = ["distill.stages.0.epochs=1", "train.lr=0.5"]
    with pytest.raises(ConfigError, match=r"plain-seed0 holds a run of a different configuration .*lr"):
        rp.reproduce(grid, out)
    grid.student_set = ["distill.stages.0.epochs=2"]
    rows = rp.reproduce(grid, out)
    [cell] = (out / "students").glob("tadistmult-yago11k-*d/plain-seed0")
    assert rows[0]["epochs_run"] == 2 and first[0]["epochs_run"] == 1
    assert saved_config(cell).distill.stages[0].epochs == 2
