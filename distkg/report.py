"""report.md: what a person reads after a run (data, protocol, the metrics table)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from distkg.data import TKGDataset

METRIC_KEYS = ("mrr", "mr", "hits@1", "hits@3", "hits@10")


def read_metrics(run: Path) -> dict | None:
    """A run's metrics.json, or None while the run has not finished (how resumable jobs skip done parts)."""
    path = run / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def protocol_line(protocol: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in protocol.items())


def metrics_table(rows: dict[str, dict]) -> str:
    """Markdown table, one row per name -> metrics dict."""
    head = "| | " + " | ".join(k.upper() if k in ("mrr", "mr") else k.replace("hits@", "H@") for k in METRIC_KEYS) + " | queries |"
    lines = [head, "|---" * (len(METRIC_KEYS) + 2) + "|"]
    for name, m in rows.items():
        cells = [f"{m['mr']:.1f}" if k == "mr" else f"{m[k]:.4f}" for k in METRIC_KEYS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {m['queries']} |")
    return "\n".join(lines)


@contextmanager
def figure_row(n: int, width: float, height: float, path: Path) -> Iterator[list]:
    """A row of n axes (each width x height inches), saved to path as a PNG on exit. An axis with
    labelled artists and no legend of its own gets one; an empty axis (cells not run yet) gets none,
    where a plain ax.legend() would warn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    try:
        yield list(axes[0])
        for ax in axes[0]:
            if ax.get_legend() is None and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def bar_panels(panels: list[tuple[str, list[str], list[float], list[float]]], path: Path, ylabel: str) -> Path:
    """One bar chart per panel (title, bar names, means, stds), side by side, as a PNG."""
    longest = max(len(n) for p in panels for n in p[1])
    width = max(3.4, 0.55 * max(len(p[1]) for p in panels) + 1.5)
    with figure_row(len(panels), width, 2.8 + 0.06 * longest, path) as axes:
        for ax, (title, names, means, stds) in zip(axes, panels):
            ax.bar(range(len(names)), means, yerr=stds if any(stds) else None, capsize=3, color="tab:blue")
            for i, m in enumerate(means):
                ax.text(i, m, f"{m:.3g}", ha="center", va="bottom", fontsize=7)
            ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
            ax.set_title(title, fontsize=9)
            ax.set_ylabel(ylabel)
    return path


def write_report(out: Path, ds: TKGDataset, title: str, results: dict[str, dict], command: str,
                 sections: list[str] | None = None) -> Path:
    first = next(iter(results.values()))
    parts = [
        f"# {title}",
        f"Command: `{command}`",
        "## Data\n\n```\n" + ds.describe() + "\n```",
        "## Protocol\n\n" + protocol_line(first["protocol"]),
        "## Metrics\n\n" + metrics_table(results),
        *(sections or []),
    ]
    if (out / "curves.png").is_file():
        parts.append("## Training curves\n\n![training curves](curves.png)")
    text = "\n\n".join(parts)
    path = out / "report.md"
    path.write_text(text + "\n")
    return path
