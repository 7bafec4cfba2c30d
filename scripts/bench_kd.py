"""Benchmark: one kd step (forward + backward of T^2 KL at T = 7, batch mean) on a batch of
Wikidata12k's size (1,000 queries x 12,554 entities, random scores), three ways:

  kl_div    the textbook form: F.kl_div(F.log_softmax(s/T), F.softmax(t/T)), autograd backward
  scores    distkg's kd from teacher scores (softmax of the teacher per step, gradient written out)
  tempered  distkg's kd from soft targets computed once per run (KGTeacher.temper), what BKD and
            Ours use when the teacher's score matrix is cached

    python scripts/bench_kd.py --out docs/bench/bench_kd.json [--threads 1] [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from distkg.allocator import apply_heap_settings
from distkg.distill.losses import DistillBatch, TemperedTargets, combine, temper

apply_heap_settings()  # the distkg command's heap settings (distkg.allocator)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--entities", type=int, default=12554)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    t = 3 * torch.randn(args.batch, args.entities, generator=g)
    tempered = TemperedTargets(7.0, *temper(t, 7.0))
    ways = {
        "kl_div": lambda s: 49 * F.kl_div(F.log_softmax(s / 7, 1), F.softmax(t / 7, 1), reduction="batchmean"),
        "scores": lambda s: combine({"kd": {}}, DistillBatch(s, None, teacher_scores=t))[0],
        "tempered": lambda s: combine({"kd": {}}, DistillBatch(s, None, teacher_targets=tempered))[0],
    }
    seconds = {}
    for name, fn in ways.items():
        s = torch.randn(args.batch, args.entities, generator=g, requires_grad=True)
        fn(s).backward()  # warm-up
        start = time.perf_counter()
        for _ in range(args.repeats):
            fn(s).backward()
        seconds[name] = (time.perf_counter() - start) / args.repeats
        print(f"{name:9s} {seconds[name]:.3f} s per step")
    result = {"batch": args.batch, "entities": args.entities, "threads": args.threads, "repeats": args.repeats,
              "seconds_per_step": seconds}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
