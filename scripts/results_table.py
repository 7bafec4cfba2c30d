"""Print a markdown table of finished training runs (each folder's metrics.json), for docs/RESULTS.md.

    python scripts/results_table.py runs/train/*
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Published filtered MRR (docs/PROTOCOL.md; the sources' own protocols) for 400-d-class models.
PUBLISHED = {
    ("tadistmult", "yago11k"): 0.155, ("tadistmult", "wikidata12k"): 0.230, ("tadistmult", "icews14"): 0.477,
    ("ttranse", "yago11k"): 0.108, ("ttranse", "wikidata12k"): 0.172, ("ttranse", "icews14"): 0.255,
    ("tntcomplex", "icews14"): 0.56,
}


def main(paths: list[str]) -> None:
    print("| dataset | model | dim | MRR | MR | H@1 | H@3 | H@10 | published MRR | best epoch / run | train time | params |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for p in sorted(paths):
        f = Path(p) / "metrics.json"
        if not f.is_file():
            continue
        m = json.loads(f.read_text())
        pub = PUBLISHED.get((m["model"], m["dataset"])) if m["dim"] >= 100 else None
        print(f"| {m['dataset']} | {m['model']} | {m['dim']} | {m['mrr']:.4f} | {m['mr']:.1f} | {m['hits@1']:.4f} | "
              f"{m['hits@3']:.4f} | {m['hits@10']:.4f} | {pub if pub else '-'} | {m['best_epoch']} / {m['epochs_run']} | "
              f"{m['train_seconds'] / 60:.1f} min | {m['parameters'] / 1e6:.2f}M |")


if __name__ == "__main__":
    main(sys.argv[1:])
