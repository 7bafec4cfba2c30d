"""Plot: how an epoch and its peak memory grow with the graph (issue 29), from `bench_train.py scale`'s JSONs.

One line per (JSON, part): the 25-d student's and the 400-d teacher's estimated epoch (step x
batches) and the ranking of 10k test queries, against the entity count, log-log; beside it each
part's peak memory. Each JSON is given as LABEL=PATH (its --loss, say):

    python scripts/plot_scale.py --out docs/results/scale-curves.png \
        "1-vs-all=docs/bench/bench_scale_cpu.json" "sampled, sparse rows=docs/bench/bench_scale_sparse_cpu.json"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LABELS = {"student": "25-d student epoch", "teacher": "400-d teacher epoch", "eval": "10k test queries ranked"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("runs", nargs="+", metavar="LABEL=PATH")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cost, memory) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = ["-", "--", ":", "-."]
    colours = {"student": "tab:blue", "teacher": "tab:red", "eval": "tab:green"}
    for style, spec in zip(styles, args.runs):
        label, _, path = spec.partition("=")
        rows = [r for r in json.loads(Path(path).read_text())["results"] if "failed" not in r]
        for part in ("student", "teacher", "eval"):
            pts = sorted((r["entities"], r.get("epoch_seconds_estimate", r.get("eval_seconds")), r["peak_rss_gb"])
                         for r in rows if r["part"] == part)
            if not pts:
                continue
            e, seconds, peak = zip(*pts)
            name = LABELS[part] if part == "eval" else f"{LABELS[part]} ({label})"  # ranking reads no loss
            cost.plot(e, seconds, style, marker="o", color=colours[part], label=name)
            memory.plot(e, peak, style, marker="o", color=colours[part], label=name)
    for ax, ylabel in ((cost, "seconds (one thread)"), (memory, "peak memory, GB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("entities (facts = 10 x entities)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    cost.axhline(86400, color="grey", linewidth=0.8)
    cost.text(1.1e4, 86400 * 1.15, "one day", color="grey", fontsize=8)
    cost.set_title("epoch (estimate: step x batches) and evaluation")
    memory.set_title("peak memory of the process")
    memory.axhline(24, color="grey", linewidth=0.8)
    memory.text(1.1e4, 24 * 1.1, "this machine (24 GB)", color="grey", fontsize=8)
    handles, labels = cost.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
