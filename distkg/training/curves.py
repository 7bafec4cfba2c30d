"""Training curves as a PNG (loss and validation MRR per epoch, stage boundaries marked)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(history: list[dict], path: Path, title: str) -> Path:
    epochs = [r["epoch"] for r in history]
    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    ax1.plot(epochs, [r["loss"] for r in history], color="tab:blue", label="train loss")
    ax1.set_xlabel("epoch")
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
