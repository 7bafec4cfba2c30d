"""(a) kill -9: a command killed (SIGKILL, nothing runs after it) at a chosen write (tests/faults/inject.py:
as a checkpoint, best.pt or metrics.json is about to replace the old one, whole or torn) or at a
random moment (seeded delays), then run again with the same command line. Every rerun must finish
with metrics identical to an uninterrupted run's, everything at one thread in its own process."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.faults.conftest import (COMMON, KG, PIPELINE, REPO, check, child_env, metrics, run_distkg, same_results,
                                   student_args)
from tests.llm.conftest import make_tiny_llama

pytestmark = [pytest.mark.faults, pytest.mark.slow]
LONG_KG = [*KG, "--set", "train.epochs=8"]
FOLDER = {"train": "train", "distill": "distill", "llm train": "llm", "run": "run", "reproduce": "grid",
          "evaluate": "rescore"}  # each reference's --out


def llm_args(model, data) -> list[str]:
    return ["--data-root", data, *COMMON, "--set", f"llm.model={model}", "--set", "llm.quantization=none",
            "--set", "llm.dim=8", "--set", "llm.steps=3", "--set", "llm.head_epochs=1", "--set", "llm.checkpoint_every=1",
            "--set", "llm.head_queries_per_step=64", "--set", "llm.queries_per_step=4", "--set", "llm.negatives=8",
            "--set", "llm.valid_queries=0", "--set", "llm.progress=false", "--set", "llm.max_minutes=null"]


@pytest.fixture(scope="module")
def references(finished, tmp_path_factory):
    """Uninterrupted runs of each command, each in its own process at one thread."""
    base = tmp_path_factory.mktemp("references")
    model = make_tiny_llama(base / "tiny-llama")
    commands = {
        "train": ["train", "--out", base / FOLDER["train"], "--data-root", finished.data, *COMMON, *LONG_KG],
        "distill": ["distill", "--out", base / FOLDER["distill"], *student_args(finished.kg, finished.data)],
        "llm train": ["llm", "train", "--out", base / FOLDER["llm train"], *llm_args(model, finished.data)],
        "run": ["run", *PIPELINE, "--out", base / FOLDER["run"], "--data-root", finished.data, *COMMON],
        "reproduce": ["reproduce", "--config", finished.grid_config, "--out", base / FOLDER["reproduce"], "--data-root",
                      finished.data, "--jobs", "1"],
        "evaluate": ["evaluate", "--run", finished.kg, "--out", base / FOLDER["evaluate"], "--data-root", finished.data],
    }
    walls = {}
    for name, args in commands.items():
        started = time.perf_counter()
        done = run_distkg(args)
        walls[name] = time.perf_counter() - started
        assert done.returncode == 0, done.stderr[-3000:]
    return base, commands, walls


def rerun_after(command: str, references, tmp_path, where: str | None = None, delay: float | None = None) -> str:
    """Kill COMMAND (into tmp_path) at WHERE or after DELAY seconds, run it again, compare with the reference."""
    base, commands, _ = references
    reference = base / FOLDER[command]
    args = [tmp_path / "out" if a == reference else a for a in commands[command]]
    if where is not None:
        killed = run_distkg(args, wrapper=["-m", "tests.faults.inject", where, "--"])
        assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
        landed = where
    else:
        proc = subprocess.Popen([sys.executable, "-m", "distkg", *map(str, args)], cwd=REPO, env=child_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        rc = proc.wait()
        log = tmp_path / "out" / "log.jsonl"
        epochs = len(log.read_text().splitlines()) if log.is_file() else 0
        landed = f"after {delay:.1f} s ({'had finished' if rc == 0 else f'{epochs} epochs logged'})"
    again = run_distkg(args)
    outcome = check(again.returncode, again.stderr)
    assert again.returncode == 0
    if command == "run":
        same_results(metrics(tmp_path / "out")["parts"], metrics(reference)["parts"])
    elif command == "reproduce":
        cells = sorted(p.relative_to(reference) for p in reference.rglob("metrics.json"))
        assert cells == sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("metrics.json"))
        for cell in cells:
            same_results(json.loads((tmp_path / "out" / cell).read_text()), json.loads((reference / cell).read_text()))
    else:
        same_results(metrics(tmp_path / "out"), metrics(reference))
    return f"killed {landed}; rerun {outcome}, metrics identical"


@pytest.mark.parametrize("where", ["epoch_*.pt:2", "epoch_*.pt:3:torn", "best.pt:2:torn", "metrics.json:1",
                                   "metrics.json:1:torn"])
def test_train_killed_while_writing(references, tmp_path, record, where):
    record("train", f"kill -9 at {where}", rerun_after("train", references, tmp_path, where=where))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_train_killed_at_a_random_moment(references, tmp_path, record, seed):
    """Anywhere in the second half of an uninterrupted run's wall time (the first is mostly imports)."""
    wall = references[2]["train"]
    delay = random.Random(seed).uniform(0.5 * wall, 0.95 * wall)
    record("train", f"kill -9 at a random moment (seed {seed})", rerun_after("train", references, tmp_path, delay=delay))


@pytest.mark.parametrize("where", ["epoch_*.pt:2:torn", "metrics.json:1"])
def test_distill_killed_while_writing(references, tmp_path, record, where):
    record("distill", f"kill -9 at {where}", rerun_after("distill", references, tmp_path, where=where))


def test_llm_train_killed_while_writing_a_round(references, tmp_path, record):
    where = "round_*.pt:2:torn"
    record("llm train", f"kill -9 at {where}", rerun_after("llm train", references, tmp_path, where=where))


def test_pipeline_killed_while_a_student_finishes(references, tmp_path, record):
    where = "metrics.json:2"  # the teacher's is the first, the student's the second
    record("run", f"kill -9 at {where}", rerun_after("run", references, tmp_path, where=where))


def test_grid_killed_while_a_cell_finishes(references, tmp_path, record):
    """The dead process's claim on the cell is taken over by the rerun (distkg.experiments.claims)."""
    where = "metrics.json:3"  # the teacher's, the plain cell's, then the bkd cell's
    record("reproduce", f"kill -9 at {where}", rerun_after("reproduce", references, tmp_path, where=where))


def test_evaluate_killed_while_writing(references, tmp_path, record):
    where = "metrics.json:1:torn"
    record("evaluate", f"kill -9 at {where}", rerun_after("evaluate", references, tmp_path, where=where))
