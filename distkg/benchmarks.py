"""Shared plumbing of scripts/bench_*.py: where the data is, what machine ran it, writing the JSON."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def bench_data_root(explicit: str | None) -> str | None:
    """--data-root, else $DISTKG_DATA, else ../shared/data next to the repo if it exists."""
    if explicit:
        return explicit
    if os.environ.get("DISTKG_DATA"):
        return os.environ["DISTKG_DATA"]
    shared = REPO.parent / "shared" / "data"
    return str(shared) if shared.is_dir() else None


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "torch_version": torch.__version__, "torch_threads": torch.get_num_threads()}


def write_result(result: dict, out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
