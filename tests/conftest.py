"""Shared fixtures. The real benchmark files live in ../shared/data (never copied into the repo)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be fetched from a hub in tests
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if torch.cuda.is_available():  # the exact-resume and equal-run tests compare runs bit for bit
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path | None:
    root = Path(os.environ.get("DISTKG_TEST_SHARED_DATA", REPO.parent / "shared" / "data"))
    return root if root.is_dir() else None


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = shared_data_root()
    if root is None:
        pytest.skip("the benchmark data folder ../shared/data is not present")
    return root


@lru_cache(maxsize=None)
def _cached(name: str, root: str):
    from distkg.data import load_dataset

    return load_dataset(name, root)


@pytest.fixture(scope="session")
def load(data_root):
    """load(name) -> TKGDataset read once per session with the default options."""
    return lambda name: _cached(name, str(data_root))
