"""Small trained runs on real YAGO11k (8-d, one epoch: seconds each). What these tests check (name and
time resolution, filtering, export fidelity, serving) does not depend on how well a run has learned."""

from __future__ import annotations

from pathlib import Path

import pytest

from distkg.config import load_config
from tests.runtime.conftest import tiny_runs  # noqa: F401  (the LLM teacher run, for predict on its tables)


def train_yago(data_root: Path, out: Path, model: str, dim: int = 8) -> Path:
    """A finished `distkg train` run of ``model`` at ``dim`` on YAGO11k (1 epoch, valid only)."""
    from distkg.training.trainer import train

    train(load_config(None, ["data.dataset=yago11k", f"data.root={data_root}", f"model.name={model}",
                             f"model.args={{dim: {dim}}}", "train.epochs=1", "train.batch_size=1000",
                             "train.progress=false", "eval.progress=false", "eval.splits=[valid]"]), out)
    return out


@pytest.fixture(scope="session")
def yago_run(data_root, tmp_path_factory) -> Path:
    """A TA-DistMult student-style run (LSTM over date tokens: the hardest model to export)."""
    return train_yago(data_root, tmp_path_factory.mktemp("serving") / "tadistmult", "tadistmult")
