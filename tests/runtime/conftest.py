"""Finished teacher runs on a small graph written to disk in the ICEWS14 format (Ray actors and
workers are other processes: they read the data, the runs and the tiny Llama from disk like a user's
job would). Built once per session: a 400-d-style KG teacher (8-d here) and an LLM teacher on a tiny
randomly initialised Llama (its weights do not matter here; SmolLM2 is exercised in tests/llm)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from distkg.config import RunConfig, load_config
from tests.llm.conftest import make_tiny_llama


def write_tiny_icews(root: Path, n_ent: int = 40, n_rel: int = 5, n_facts: int = 400, seed: int = 0) -> Path:
    """ROOT/icews14/{train,valid,test}.txt: 'subject<TAB>relation<TAB>object<TAB>YYYY-MM-DD' lines."""
    rng = np.random.default_rng(seed)
    folder = root / "icews14"
    folder.mkdir(parents=True, exist_ok=True)
    s, r, o = rng.integers(0, n_ent, n_facts), rng.integers(0, n_rel, n_facts), rng.integers(0, n_ent, n_facts)
    s[:n_ent], o[n_ent:2 * n_ent] = np.arange(n_ent), np.arange(n_ent)  # every entity in train
    days = rng.integers(1, 29, n_facts)
    lines = [f"Entity {a}\tRelation {b}\tEntity {c}\t2014-02-{d:02d}" for a, b, c, d in zip(s, r, o, days)]
    cut = [int(0.8 * n_facts), int(0.9 * n_facts)]
    for name, part in zip(("train", "valid", "test"), (lines[: cut[0]], lines[cut[0]: cut[1]], lines[cut[1]:])):
        (folder / f"{name}.txt").write_text("\n".join(part) + "\n")
    return root


@dataclass
class TinyRuns:
    data: Path
    teacher: Path
    llm: Path

    def student(self, method: str, *overrides: str) -> RunConfig:
        """A 4-d student config for ``method`` (configs/distill/*.yaml) on the tiny graph."""
        return load_config([f"configs/distill/{method}.yaml"], [
            "data.dataset=icews14", f"data.root={self.data}", "model.name=tadistmult", "model.args={dim: 4}",
            "train.batch_size=64", "train.progress=false", "eval.progress=false", "train.patience=10",
            f"distill.teacher_run={self.teacher}", f"distill.llm_run={self.llm}", *overrides])


def make_tiny_runs(base: Path, teacher_epochs: int = 3) -> TinyRuns:
    """The tiny graph and its two finished teachers under BASE (also scripts/bench_runtime.py --tiny's)."""
    from distkg.llm.train import train_teacher
    from distkg.training.trainer import train

    data = write_tiny_icews(base / "data")
    common = ["data.dataset=icews14", f"data.root={data}", "train.progress=false", "eval.progress=false"]
    train(load_config(None, [*common, "model.name=tadistmult", "model.args={dim: 8}", f"train.epochs={teacher_epochs}",
                             "train.batch_size=64"]), base / "teacher")
    llm = make_tiny_llama(base / "tiny-llama")
    train_teacher(load_config(None, [*common, f"llm.model={llm}", "llm.quantization=none", "llm.dim=8", "llm.steps=2",
                                     "llm.head_epochs=1", "llm.head_queries_per_step=64", "llm.queries_per_step=4",
                                     "llm.negatives=8", "llm.valid_queries=0", "llm.progress=false"]), base / "llm")
    return TinyRuns(data=data, teacher=base / "teacher", llm=base / "llm")


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> TinyRuns:
    return make_tiny_runs(tmp_path_factory.mktemp("runtime"))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A real 2-node Ray cluster on 127.0.0.1: the head declares {teacher: 4}, the second node
    {student: 2}, one CPU each; the test process is its driver. Its processes are stopped afterwards (LoopbackCluster.stop)."""
    import ray

    from distkg.runtime.cluster import LoopbackCluster, connect

    c = LoopbackCluster([{"teacher": 4}, {"student": 2}], cpus=1)  # free ports
    saved = dict(os.environ)
    os.environ.update(c.env())  # this process is the cluster's driver
    try:
        c.start()
        connect(c.address)
        yield c
    finally:
        ray.shutdown()
        c.stop()
        os.environ.clear()
        os.environ.update(saved)
