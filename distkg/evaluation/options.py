"""How every caller evaluates, built once from the config: protocol, chunking, progress and device.

Why one object: the options used to be unpacked from ``cfg.eval`` at each call site, and the
sites drifted (training never passed ``cand_chunk``, LLM fine-tuning passed neither chunk size),
so the same config evaluated differently depending on who asked. The device comes from
distkg.device (the model's device), and the ranking loop moves each chunk there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from distkg.config import FilterMode, Ties

# Bytes of float32 scores per block when query_chunk is not given. 32 MB keeps a block close to
# the last-level cache for the counting passes (measured faster than 256 MB on ICEWS14) while
# still giving the matmul hundreds of rows; ICEWS18 (23,033 entities) gets ~360-row chunks.
SCORE_BUDGET_BYTES = 32 << 20


@dataclass(frozen=True)
class EvalOptions:
    filter: FilterMode = "time"
    ties: Ties = "realistic"
    max_facts: int | None = None  # a seeded sample of at most this many facts per split (None: all)
    memory_budget: int = SCORE_BUDGET_BYTES  # bytes of one block of scores (eval.memory_budget resolved: budget_bytes)
    query_chunk: int | None = None  # None: what fits the memory budget (set by tests and bench_eval, not a config key)
    cand_chunk: int | None = None  # None: what fits the memory budget
    progress: bool = True
    device: torch.device = torch.device("cpu")  # where the scorer computes; chunks are moved there

    def replace(self, **changes) -> "EvalOptions":
        return dataclasses.replace(self, **changes)


def eval_options(cfg, device: torch.device | None = None) -> EvalOptions:
    """The options of ``cfg.eval`` on ``device`` (default: the resolved training device, distkg.device)."""
    if device is None:
        from distkg.device import placement

        device = placement(cfg).device
    ec = cfg.eval
    return EvalOptions(filter=ec.filter, ties=ec.ties, max_facts=ec.max_facts,
                       memory_budget=budget_bytes(ec.memory_budget, device),
                       progress=ec.progress, device=device)


def budget_bytes(budget: int | str, device: torch.device | str) -> int:
    """``eval.memory_budget`` in bytes for blocks computed on ``device``: a number as given; auto is
    SCORE_BUDGET_BYTES on a CPU and 1/16 of a GPU's memory, at most 1/16 of the device's memory either way."""
    if budget != "auto":
        return int(budget)
    from distkg.device import memory_bytes

    share = memory_bytes(device) // 16
    return min(SCORE_BUDGET_BYTES, share) if torch.device(device).type == "cpu" else share
