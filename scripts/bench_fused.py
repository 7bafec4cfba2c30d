"""Benchmark: BKD's and Ours stage 2's losses (forward + backward) on one batch, fused against one at a time.

  unfused  the registered losses one at a time through their own autograd forms, the teacher's and
           P_LLM's rows gathered into [B, E] copies (what a step did before distill.fused)
  fused    losses.combine's fused pass (distill.fused) at each --block-bytes, rows read in blocks

A [B, E] batch (YAGO11k's size by default) against cached [N, E] soft targets and P_LLM, random.
CPU seconds of the process (the machine may be shared), rounds interleaved so load falls on every
form alike; the minimum and median over rounds are written.

    OMP_NUM_THREADS=1 python scripts/bench_fused.py --out docs/bench/bench_fused.json [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchlib import machine, write_result
from distkg.distill import fused as fz
from distkg.distill.losses import LOSSES, DistillBatch, Rows, TemperedTargets, combine, temper

SPECS = {"bkd": {"kd": {"temperature": 7.0}, "ce": {}},
         "ours-2": {"kd": {"temperature": 7.0}, "llm_huber": {"delta": 0.05}, "llm_supervised": {"mix": 0.7}}}


def step_seconds(spec: dict, block: int, p_all, plogp, llm, B: int, gen: torch.Generator, steps: int) -> float:
    """Median CPU seconds of forward + backward over ``steps`` batches (after one untimed); block 0: unfused."""
    times = []
    for _ in range(steps + 1):
        idx = torch.randint(len(p_all), (B,), generator=gen)
        a = torch.randint(p_all.shape[1], (B,), generator=gen)
        s = torch.randn(B, p_all.shape[1], generator=gen, requires_grad=True)
        t0 = time.process_time()
        if block == 0:
            batch = DistillBatch(s, a, teacher_targets=TemperedTargets(7.0, p_all[idx], plogp[idx]), llm_probs=llm[idx])
            total = sum(LOSSES.get(name)(batch, **args) for name, args in spec.items())
        else:
            fz.BLOCK_BYTES = block
            batch = DistillBatch(s, a, teacher_targets=TemperedTargets(7.0, Rows(p_all, idx), plogp[idx]),
                                 llm_probs=Rows(llm, idx))
            total = combine(spec, batch)[0]
        total.backward()
        times.append(time.process_time() - t0)
    return statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--entities", type=int, default=10623)
    ap.add_argument("--rows", type=int, default=3000, help="cached training queries the batches index")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--block-bytes", default="524288,1048576,4194304,1099511627776")
    args = ap.parse_args()
    default_block = fz.BLOCK_BYTES
    gen = torch.Generator().manual_seed(0)
    p_all, plogp = temper(3 * torch.randn(args.rows, args.entities, generator=gen), 7.0)
    llm = torch.softmax(2 * torch.randn(args.rows, args.entities, generator=gen), 1)
    blocks = [0, *(int(b) for b in args.block_bytes.split(","))]
    times = {(m, b): [] for m in SPECS for b in blocks}
    for _ in range(args.rounds):
        for method, spec in SPECS.items():
            for block in blocks:
                times[(method, block)].append(step_seconds(spec, block, p_all, plogp, llm, args.batch, gen, args.steps))
    fz.BLOCK_BYTES = default_block
    rows = []
    for (method, block), ts in times.items():
        form = "unfused" if block == 0 else f"fused, blocks of {block} bytes"
        rows.append({"method": method, "form": form, "block_bytes": block or None,
                     "ms_min": round(1000 * min(ts), 1), "ms_median": round(1000 * statistics.median(ts), 1)})
        print(f"{method:7s} {form:40s} min {rows[-1]['ms_min']:6.1f} ms  median {rows[-1]['ms_median']:6.1f} ms")
    write_result({"batch": args.batch, "entities": args.entities, "rounds": args.rounds, "steps": args.steps,
                  "default_block_bytes": default_block, "threads": torch.get_num_threads(), "results": rows,
                  "machine": machine()}, args.out)


if __name__ == "__main__":
    main()
