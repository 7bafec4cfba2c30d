"""Benchmark: each [B, E] pass distkg.kernels compiles, with the kernels off (the torch path) and on,
at 1 and 2 threads, forward + backward on one batch.

  ce       plain training's cross-entropy (training.objective.cross_entropy)
  bkd      the fused kd + ce (losses.combine), the teacher's rows read from a cached [N, E] matrix
  ours-2   the fused kd + llm_huber + llm_supervised, the same way
  ttranse  TTransE's distance, -||q - c|| for all pairs, 25-d, backward of a given gradient

Rounds interleave every (pass, threads, kernels) so a shared machine's load falls on all alike;
per form the median over rounds of wall and process CPU milliseconds (each round: the median of
--steps calls after one untimed). The question for threads: is a 2-thread call with the kernels
on no slower than one with them off?

    python scripts/bench_kernels.py --out docs/bench/bench_kernels.json [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from bench_fused import SPECS
from benchlib import machine, write_result
from distkg import kernels
from distkg.distill.losses import DistillBatch, Rows, TemperedTargets, combine, temper
from distkg.models.ttranse import neg_l2
from distkg.training.objective import cross_entropy


def passes(B: int, E: int, N: int, gen: torch.Generator) -> dict:
    """name -> a function of nothing running one forward + backward on fixed random inputs."""
    s0 = 3 * torch.randn(B, E, generator=gen)
    a = torch.randint(E, (B,), generator=gen)
    p_all, plogp = temper(3 * torch.randn(N, E, generator=gen), 7.0)
    llm = torch.softmax(2 * torch.randn(N, E, generator=gen), 1)
    idx = torch.randint(N, (B,), generator=gen)
    q0, c0 = torch.randn(B, 25, generator=gen) / 5, torch.randn(E, 25, generator=gen) / 5
    g_dist = torch.randn(B, E, generator=gen) / B

    def loss(spec):
        def run():
            s = s0.clone().requires_grad_()
            b = DistillBatch(s, a, teacher_targets=TemperedTargets(7.0, Rows(p_all, idx), plogp[idx]),
                             llm_probs=Rows(llm, idx))
            combine(spec, b)[0].backward()
        return run

    def ce():
        cross_entropy(s0.clone().requires_grad_(), a).backward()

    def ttranse():
        q, c = q0.clone().requires_grad_(), c0.clone().requires_grad_()
        neg_l2(q, c).backward(g_dist)

    return {"ce": ce, "bkd": loss(SPECS["bkd"]), "ours-2": loss(SPECS["ours-2"]), "ttranse": ttranse}


def timed(fn, steps: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``steps`` calls after one untimed."""
    fn()
    wall, cpu = [], []
    for _ in range(steps):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--entities", type=int, default=12554, help="Wikidata12k's")
    ap.add_argument("--rows", type=int, default=3000, help="cached training queries the batches index")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    if kernels.library() is None:
        ap.error("the kernels could not be built here (see the log line above)")
    fns = passes(args.batch, args.entities, args.rows, torch.Generator().manual_seed(0))
    threads = [int(t) for t in args.threads.split(",")]
    keys = [(name, t, mode) for name in fns for t in threads for mode in ("off", "on")]
    got: dict = {k: [] for k in keys}
    for _ in range(args.rounds):
        for name, t, mode in keys:
            torch.set_num_threads(t)
            os.environ["DISTKG_KERNELS"] = "1" if mode == "on" else "0"
            got[(name, t, mode)].append(timed(fns[name], args.steps))
    os.environ.pop("DISTKG_KERNELS")
    rows = []
    for (name, t, mode), ts in got.items():
        wall, cpu = (1000 * statistics.median(x[i] for x in ts) for i in (0, 1))
        rows.append({"pass": name, "threads": t, "kernels": mode, "wall_ms": round(wall, 1), "cpu_ms": round(cpu, 1)})
        print(f"{name:8s} threads {t}  kernels {mode:3s}  wall {wall:7.1f} ms  cpu {cpu:7.1f} ms", flush=True)
    write_result({"batch": args.batch, "entities": args.entities, "rounds": args.rounds, "steps": args.steps,
                  "results": rows, "load_average": os.getloadavg(), "machine": machine()}, args.out)


if __name__ == "__main__":
    main()
