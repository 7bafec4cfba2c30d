"""Training curves as a PNG (loss and validation MRR per epoch, stage boundaries marked)."""

from __future__ import annotations

import json
import logging
from pathlib import Path


def valid_curve(run: Path) -> tuple[list[int], list[float]]:
    """(epochs, validation MRR) of a training run, from its log.jsonl; empty when there is none."""
    log = run / "log.jsonl"
    rows = [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []
    pts = [(r["epoch"], r["valid_mrr"]) for r in rows if "valid_mrr" in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_curves(history: list[dict], path: Path, title: str, xlabel: str = "epoch") -> Path:
    """Loss and validation MRR per round of distkg.training.loop (``epoch``: a KG epoch, or an LLM round).
    Without matplotlib (a core install: distkg.extras) the PNG is not drawn; log.jsonl holds the same numbers."""
    from distkg.extras import installed

    if not installed("matplotlib"):
        logging.getLogger("distkg").info("%s not drawn: matplotlib is not installed (pip install 'distkg[plots]'); "
                                         "log.jsonl beside it holds the curve", path)
        return path
    import matplotlib  # here, not at import: 1-1.5 s of every command's start-up otherwise

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    ax1.plot(epochs, [r["loss"] for r in history], color="tab:blue", label="train loss")
    ax1.set_xlabel(xlabel)
    ax1.set_ylabel("train loss", color="tab:blue")
    evaluated = [r for r in history if "valid_mrr" in r]
    if evaluated:
        ax2 = ax1.twinx()
        ax2.plot([r["epoch"] for r in evaluated], [r["valid_mrr"] for r in evaluated], "o-", color="tab:red")
        ax2.set_ylabel("valid MRR (filtered)", color="tab:red")
    for prev, row in zip(history, history[1:]):  # distillation stages: a dashed line where one ends
        if row.get("stage") != prev.get("stage"):
            ax1.axvline(prev["epoch"] + 0.5, color="grey", linestyle="--", linewidth=1)
            ax1.text(row["epoch"], ax1.get_ylim()[1], f" {row['stage']}", va="top", fontsize=8, color="grey")
    ax1.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
