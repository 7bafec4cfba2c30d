"""report.md: what a person reads after a run (data, protocol, the metrics table)."""

from __future__ import annotations

from pathlib import Path

from distkg.data import TKGDataset

METRIC_KEYS = ("mrr", "mr", "hits@1", "hits@3", "hits@10")


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


def write_report(out: Path, ds: TKGDataset, title: str, results: dict[str, dict], command: str) -> Path:
    first = next(iter(results.values()))
    parts = [
        f"# {title}",
        f"Command: `{command}`",
        "## Data\n\n```\n" + ds.describe() + "\n```",
        "## Protocol\n\n" + protocol_line(first["protocol"]),
        "## Metrics\n\n" + metrics_table(results),
    ]
    if (out / "curves.png").is_file():
        parts.append("## Training curves\n\n![training curves](curves.png)")
    text = "\n\n".join(parts)
    path = out / "report.md"
    path.write_text(text + "\n")
    return path
