"""Rank metrics. Hits@k counts rank <= k on the rank of the chosen tie policy, so a realistic
rank of 1.5 (the answer tied with one other candidate) is not a hit@1: ties never help."""

from __future__ import annotations

from typing import get_args

import numpy as np

from distkg.config import Ties

TIES: tuple[str, ...] = get_args(Ties)
HITS_AT = (1, 3, 10)


def ranking_metrics(ranks: np.ndarray) -> dict[str, float]:
    """MRR, MR, Hits@1/3/10 of 1-based ranks (fractional for realistic ties)."""
    r = np.asarray(ranks, dtype=np.float64)
    if r.size == 0:
        return {"mrr": float("nan"), "mr": float("nan"), **{f"hits@{k}": float("nan") for k in HITS_AT}}
    if r.min() < 1:
        raise ValueError(f"ranks are 1-based, got a rank of {r.min()}")
    out = {"mrr": float(np.mean(1.0 / r)), "mr": float(np.mean(r))}
    out.update({f"hits@{k}": float(np.mean(r <= k)) for k in HITS_AT})
    return out
