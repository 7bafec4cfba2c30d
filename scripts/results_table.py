"""Print a markdown table of finished training runs (each folder's metrics.json), for docs/RESULTS.md.

    python scripts/results_table.py runs/train/*
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(paths: list[str]) -> None:
    print("| dataset | model | dim | MRR | MR | H@1 | H@3 | H@10 | best epoch / run | train time | params |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for p in sorted(paths):
        f = Path(p) / "metrics.json"
        if not f.is_file():
            continue
        m = json.loads(f.read_text())
        print(f"| {m['dataset']} | {m['model']} | {m['dim']} | {m['mrr']:.4f} | {m['mr']:.1f} | {m['hits@1']:.4f} | "
              f"{m['hits@3']:.4f} | {m['hits@10']:.4f} | {m['best_epoch']} / {m['epochs_run']} | "
              f"{m['train_seconds'] / 60:.1f} min | {m['parameters'] / 1e6:.2f}M |")


if __name__ == "__main__":
    main(sys.argv[1:])
