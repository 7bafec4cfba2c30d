"""LLM teachers' MRR against the CPU minutes their fine-tuning took, from their runs' metrics.json curves:
the evidence of "LoRA against head-only at equal minutes" (docs/RESULTS.md).

    python scripts/llm_curves.py --run head-only=RUN_A --run lora=RUN_B --out docs/results/llm-curves.png

Each curve point is a validation of a round (a head epoch, or ``llm.checkpoint_every`` LoRA steps);
x is the process's CPU minutes up to it without the curve points' own evaluations
(``training_cpu_minutes``), y the validation subsample's MRR, and the test MRR where the run was made
with ``llm.curve_test: true``. A final dot marks each run's saved teacher's test MRR.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, metavar="LABEL=RUN", help="a finished llm train run")
    ap.add_argument("--out", required=True, help="PNG path (a JSON of the points is written beside it)")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    points = {}
    for item in args.run:
        label, run = item.split("=", 1)
        metrics = json.loads((Path(run) / "metrics.json").read_text())
        curve = metrics["curve"]
        x = [p.get("training_cpu_minutes", p["process_cpu_minutes"]) for p in curve]
        line, = ax.plot(x, [p["valid_mrr"] for p in curve], "-", lw=1.2, label=f"{label}: validation (subsample)")
        if all("test_mrr" in p for p in curve):
            ax.plot(x, [p["test_mrr"] for p in curve], "--", lw=1.2, color=line.get_color(), label=f"{label}: test")
        ax.plot([x[-1]], [metrics["mrr"]], "o", color=line.get_color())
        lora = [i for i, p in enumerate(curve) if p["phase"] == "lora"]
        if lora:  # LoRA starts where the head warm-up ended: the last point before the first LoRA round
            ax.axvline(x[max(lora[0] - 1, 0)], color=line.get_color(), ls=":", lw=0.8)
        points[label] = {"run": run, "test_mrr": metrics["mrr"], "curve": curve}
    ax.set_xlabel("CPU minutes of fine-tuning (curve evaluations excluded)")
    ax.set_ylabel("MRR")
    ax.set_title("LLM teacher: MRR against CPU minutes (dot: the saved teacher's test MRR; dotted: LoRA starts)", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    Path(args.out).with_suffix(".json").write_text(json.dumps(points, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
