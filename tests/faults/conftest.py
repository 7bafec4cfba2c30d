"""The fault-injection lane (`pytest -m faults`; CI runs it with the rest): finished runs on a tiny
graph written to disk (built once per session through the CLI, as a user makes them), copied into
each case's own folder before a fault is injected there.

Every case ends in ``check``: rc 0, or rc 2 with one ``distkg: error:`` line; never a traceback.
With DISTKG_FAULT_TABLE set, each case appends its row (command, fault, what happened) to that JSONL
file; scripts/fault_table.py turns it into docs/FAULTS.md."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from distkg.cli.main import main
from tests.runtime.conftest import write_tiny_icews

REPO = Path(__file__).resolve().parents[2]
COMMON = ["--set", "data.dataset=icews14", "--set", "train.progress=false", "--set", "eval.progress=false",
          "--set", "train.batch_size=64", "--set", "train.patience=10"]
KG = ["--set", "model.name=tadistmult", "--set", "model.args={dim: 8}", "--set", "train.epochs=4"]
STUDENT = ["--config", str(REPO / "configs/distill/bkd.yaml"), "--set", "model.name=tadistmult", "--set", "model.args={dim: 4}",
           "--set", "distill.stages.0.epochs=3"]
PIPELINE = [str(REPO / "configs/quickstart.yaml"), "--set", "model.args.dim=8", "--set", "train.epochs=2", "--set", "pipeline.llm=false",
            "--set", "pipeline.students={plain: {stages: [{name: train, epochs: 2}]}}", "--set", "pipeline.student_dim=4"]


@dataclass
class Finished:
    """Finished runs on the tiny graph (the session's originals: copy before breaking anything)."""

    data: Path
    kg: Path
    student: Path
    pipeline: Path
    grid: Path
    grid_config: Path

    def copy(self, name: str, into: Path) -> Path:
        """A copy of run ``name`` (kg, student, pipeline, grid, data) under INTO (pipeline and grid: to be
        run with INTO as the working directory and --out NAME)."""
        target = into / name
        shutil.copytree(getattr(self, name), target)
        return target


def cli(*argv: str) -> int:
    """The CLI in this process (distkg.cli.main.main): its rc; an uncaught exception fails the test."""
    return main([str(a) for a in argv])


def student_args(teacher: Path, data: Path) -> list[str]:
    return [*STUDENT, "--data-root", str(data), *COMMON, "--set", f"distill.teacher_run={teacher}"]


@pytest.fixture(scope="session")
def finished(tmp_path_factory) -> Finished:
    base = tmp_path_factory.mktemp("faults")
    data = write_tiny_icews(base / "data")
    assert cli("train", "--out", base / "kg", "--data-root", data, *COMMON, *KG) == 0
    assert cli("distill", "--out", base / "student", *student_args(base / "kg", data)) == 0
    grid_config = base / "grid.yaml"
    grid_config.write_text(json.dumps({
        "datasets": ["icews14"], "backbones": ["tadistmult"], "methods": ["plain", "bkd"], "seeds": [0], "dims": [4],
        "teacher_run": "{out}/teachers/{backbone}-{dataset}",
        "teacher_config": str(REPO / "configs/train/{backbone}-{dataset}-400.yaml"),
        "student_config": str(REPO / "configs/train/{backbone}-{dataset}-400.yaml"),
        "method_config": str(REPO / "configs/distill/{method}.yaml"), "published": None,
        "teacher_set": ["model.args.dim=8", "train.epochs=2", "train.batch_size=64"],
        "student_set": ["distill.stages.0.epochs=1", "train.batch_size=64"]}))
    # the folders of parts record their parts' paths as given: relative here, so that a copy of the
    # folder, run from the folder above it, is the same configuration
    here = os.getcwd()
    os.chdir(base)
    try:
        assert cli("run", *PIPELINE, "--out", "pipeline", "--data-root", data, *COMMON) == 0
        assert cli("reproduce", "--config", grid_config, "--out", "grid", "--data-root", data, "--jobs", "1") == 0
    finally:
        os.chdir(here)
    return Finished(data, base / "kg", base / "student", base / "pipeline", base / "grid", grid_config)


def check(rc: int, err: str) -> str:
    """rc 0, or rc 2 with exactly one ``distkg: error:`` line, and no traceback; the outcome in words."""
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("distkg: error:")]
    if rc == 0:
        assert not errors, errors
        return "rc 0"
    assert rc == 2 and len(errors) == 1 and err.rstrip("\n").endswith(errors[0]), (rc, err[-3000:])
    return "rc 2: " + errors[0].removeprefix("distkg: error: ")


def same_results(a: dict, b: dict, path: str = "") -> None:
    """Metrics equal key by key, times (keys naming seconds or minutes, such as the LLM curve's points)
    and the paths of runs read aside; lists of records (the curve) compared record by record."""
    assert set(a) == set(b), (path, set(a) ^ set(b))
    for key in a:
        if "seconds" in key or "minutes" in key or key.endswith("_run"):
            continue
        if isinstance(a[key], dict):
            same_results(a[key], b[key], f"{path}{key}.")
        elif isinstance(a[key], list) and a[key] and all(isinstance(x, dict) for x in a[key] + b[key]):
            assert len(a[key]) == len(b[key]), (f"{path}{key}", len(a[key]), len(b[key]))
            for i, (x, y) in enumerate(zip(a[key], b[key])):
                same_results(x, y, f"{path}{key}[{i}].")
        else:
            assert a[key] == b[key], (f"{path}{key}", a[key], b[key])


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def run_distkg(args: list[str], env: dict | None = None, wrapper: list[str] | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m distkg ARGS`` in its own process at one thread (``wrapper``: a module run instead,
    handed ARGS after ``--``), from the repository root."""
    cmd = [sys.executable, *(wrapper or ["-m", "distkg"]), *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=child_env(env), capture_output=True, text=True, timeout=timeout)


def child_env(extra: dict | None = None) -> dict:
    """A distkg process's environment here: one thread, this checkout importable, no hub access."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
            "HF_HUB_OFFLINE": "1", **(extra or {})}
