"""Shared fixtures. The real benchmark files are read where the CLI reads them (data_roots); they are
never copied into the repository."""

from __future__ import annotations

import json
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


def data_roots() -> list[Path]:
    """Where the tests look for the benchmarks, in order: $DISTKG_TEST_SHARED_DATA; the data root the
    CLI uses (--data-root aside: $DISTKG_DATA, else the cache `distkg data download` fills); a
    shared/data folder beside the checkout."""
    from distkg.data import resolve_data_root

    explicit = [Path(os.environ["DISTKG_TEST_SHARED_DATA"])] if os.environ.get("DISTKG_TEST_SHARED_DATA") else []
    return [*explicit, resolve_data_root(None), REPO.parent / "shared" / "data"]


def shared_data_root() -> Path | None:
    """The first of data_roots() holding at least one dataset folder."""
    from distkg.data import READERS

    for root in data_roots():
        if root.is_dir() and any((root / name).is_dir() for name in READERS):
            return root
    return None


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = shared_data_root()
    if root is None:
        pytest.skip("no benchmark data in " + ", ".join(map(str, data_roots())) + " (distkg data download NAME)")
    return root


@lru_cache(maxsize=None)
def _cached(name: str, root: str):
    from distkg.data import load_dataset

    if not (Path(root) / name).is_dir():
        pytest.skip(f"{name} is not in the data root {root} (distkg data download {name})")
    return load_dataset(name, root)


@pytest.fixture(scope="session")
def load(data_root):
    """load(name) -> TKGDataset read once per session with the default options."""
    return lambda name: _cached(name, str(data_root))


@pytest.fixture()
def record(request):
    """record(command, fault, outcome): one row of docs/FAULTS.md, the fault lane's table (appended to
    the JSONL file DISTKG_FAULT_TABLE names, when set: scripts/fault_table.py)."""
    def write(command: str, fault: str, outcome: str) -> None:
        table = os.environ.get("DISTKG_FAULT_TABLE")
        if table:
            with open(table, "a") as f:
                f.write(json.dumps({"test": request.node.nodeid, "command": command, "fault": fault,
                                    "outcome": outcome}) + "\n")
    return write


# Lanes (pyproject.toml's markers): what a test needs, read from its fixtures and its folder, so that no
# test has to remember to say it. `scripts/test.sh --fast` runs the tests that need none of them.
NEEDS_DATA = {"data_root", "load", "yago_run"}  # the real benchmark files (conftest.data_root)
NEEDS_LLM = {"tiny_llama", "tiny_runs"}  # a causal LM, even a tiny random one (tests/llm/conftest.py)
NEEDS_RAY = {"cluster", "tiny_runs", "server"}  # a Ray (the loopback cluster, a local one, Ray Serve)
RAY_FILES = ("runtime/", "serving/test_serve.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        where = item.path.relative_to(REPO / "tests").as_posix()
        if names & NEEDS_DATA:
            item.add_marker(pytest.mark.data)
        if names & NEEDS_LLM or where.startswith("llm/"):
            item.add_marker(pytest.mark.llm)
        if names & NEEDS_RAY or where.startswith(RAY_FILES):
            item.add_marker(pytest.mark.ray)
