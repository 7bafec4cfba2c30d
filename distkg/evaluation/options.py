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


@dataclass(frozen=True)
class EvalOptions:
    filter: FilterMode = "time"
    ties: Ties = "realistic"
    query_chunk: int | None = None  # None: what fits the score budget (ranking.SCORE_BUDGET_BYTES)
    cand_chunk: int | None = None  # None: all candidates at once
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
    return EvalOptions(filter=ec.filter, ties=ec.ties, query_chunk=ec.query_chunk, cand_chunk=ec.cand_chunk,
                       progress=ec.progress, device=device)
