"""Distillation losses under bf16 autocast against float32 arithmetic on the same scores (issue 28):
the value and the gradient with respect to the scores, for each loss spec of tests/distill/test_precision.py,
computed the old way (combine's body on the bf16 scores as given, bf16 arithmetic) and the way distkg
computes them (``combine``: float32 under any autocast). Writes JSON.

    .venv/bin/python scripts/bench_precision.py --out docs/bench/bench_precision.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from distkg.allocator import apply_heap_settings  # noqa: E402
from distkg.distill.losses import DistillBatch, _combine, combine  # noqa: E402

apply_heap_settings()  # the distkg command's heap settings (distkg.allocator)
from tests.distill.test_precision import SPECS, STUDENT, inputs  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    rows = []
    for name, spec in SPECS.items():
        for spread in (0.01, 3.0):
            torch.manual_seed(0)
            regressor = torch.nn.Linear(5, 7)
            given = inputs(spread)
            exact = {k: v.bfloat16().float().requires_grad_() if k in STUDENT else v for k, v in given.items()}
            ref_total, ref_parts = combine(spec, DistillBatch(**exact, regressor=regressor))
            ref_total.backward()
            row = {"spec": name, "student_spread": spread}
            # before: what combine did until issue 28, its body without the float32 upcast (losses._combine)
            for how, fn in (("bf16 arithmetic (before)", _combine), ("combine, float32 (now)", combine)):
                low = {k: exact[k].detach().bfloat16().requires_grad_() if k in STUDENT else v for k, v in given.items()}
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    total, parts = fn(spec, DistillBatch(**low, regressor=regressor))
                total.backward()
                reached = [k for k in STUDENT if exact[k].grad is not None]
                row[how] = {
                    "value_rel_error": {k: abs(parts[k] - v) / abs(v) for k, v in ref_parts.items() if v},
                    "grad_rel_l2": {k: rel(low[k].grad.float(), exact[k].grad) for k in reached},
                    "grad_rel_l2_of_bf16_rounding": {k: rel(exact[k].grad.bfloat16().float(), exact[k].grad)
                                                     for k in reached}}
            rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "python scripts/bench_precision.py --out " + str(args.out), "rows": rows},
                                   indent=2) + "\n")
    for r in rows:
        b, n = r["bf16 arithmetic (before)"], r["combine, float32 (now)"]
        print(r["spec"], r["student_spread"], "value", {k: f"{v:.2e}" for k, v in b["value_rel_error"].items()},
              "->", {k: f"{v:.2e}" for k, v in n["value_rel_error"].items()},
              "grad", {k: f"{v:.2e}" for k, v in b["grad_rel_l2"].items()}, "->", {k: f"{v:.2e}" for k, v in n["grad_rel_l2"].items()})


if __name__ == "__main__":
    main()
