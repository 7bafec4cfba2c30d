"""Shared plumbing of scripts/bench_*.py: where the data is, what machine ran it, writing the JSON.

Lives beside the benchmarks, not in the package: only they use it. ``python scripts/bench_X.py``
puts this folder on sys.path, so the benchmarks import it as ``benchlib``."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from distkg.allocator import apply_heap_settings
from distkg.data import resolve_data_root

apply_heap_settings()  # a benchmark times what the distkg command runs, under its heap settings (distkg.allocator)
REPO = Path(__file__).resolve().parents[1]


def bench_data_root(explicit: str | None) -> str:
    """The data root the CLI uses: --data-root, else $DISTKG_DATA, else the per-user cache."""
    return str(resolve_data_root(explicit))


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "torch_version": torch.__version__, "torch_threads": torch.get_num_threads()}


def write_result(result: dict, out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def step_seconds(loss_fn, opt, idx, q, a, gen) -> float:
    """CPU seconds of one training step as `distkg distill` runs it (distkg.distill.runner.step_loss's
    loss, backward, optimiser step): process time, as the machines are shared."""
    import time

    t = time.process_time()
    loss, _ = loss_fn(idx, q[idx], a[idx], gen)
    loss.backward()
    opt.step()
    opt.zero_grad()
    return time.process_time() - t
