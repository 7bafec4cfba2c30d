"""Benchmark: training throughput of each backbone at 400-d and 25-d on ICEWS14.

For each (backbone, dim): time full training steps (1-vs-all forward, cross-entropy plus the
model's regulariser, backward, optimiser step) on batches of real ICEWS14 training queries, and in
the same run time the bare matmuls of the same 1-vs-all scores (forward Q @ E.T plus the two
gradient matmuls of backward). ratio = step seconds / matmul seconds says how much the model
adds on top of the scoring work every 1-vs-all trainer must do.

    python scripts/bench_train.py --out runs/bench_train.json [--steps 10] [--batch-size 1000]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from benchlib import bench_data_root, machine, write_result
from distkg.data import load_dataset
from distkg.models import MODELS
from distkg.training.trainer import training_queries

BACKBONES = ("ttranse", "tadistmult", "tntcomplex")


def time_steps(model, q, a, batches: list[torch.Tensor]) -> float:
    opt = torch.optim.Adagrad(model.parameters(), lr=0.1)
    t = time.perf_counter()
    for idx in batches:
        loss = F.cross_entropy(model(q[idx]), a[idx]) + model.regularizer(q[idx], a[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t


def time_matmuls(n_ent: int, dim: int, batch: int, steps: int) -> float:
    """Forward scores and the two backward matmuls (dL/dQ = G @ E, dL/dE = G.T @ Q), nothing else."""
    e, q = torch.randn(n_ent, dim), torch.randn(batch, dim)
    t = time.perf_counter()
    for _ in range(steps):
        g = q @ e.T
        g @ e
        g.T @ q
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--data-root")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--dims", default="400,25")
    args = ap.parse_args(argv)
    ds = load_dataset("icews14", bench_data_root(args.data_root))
    q, a = training_queries(ds.splits["train"], ds.num_relations)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, len(q), (args.batch_size,), generator=gen) for _ in range(args.steps)]
    rows = []
    for dim in (int(d) for d in args.dims.split(",")):
        for name in BACKBONES:
            torch.manual_seed(0)
            dim_used = dim + dim % 2 if name == "tntcomplex" else dim  # complex: real + imaginary halves
            model = MODELS.create(name, {"dim": dim_used}, "model.args", dataset=ds)
            time_steps(model, q, a, batches[:2])  # warm-up
            step_s = time_steps(model, q, a, batches)
            mm_s = time_matmuls(ds.num_entities, dim_used, args.batch_size, args.steps)
            queries_per_s = args.steps * args.batch_size / step_s
            rows.append({"backbone": name, "dim": dim_used, "step_seconds": step_s / args.steps,
                         "queries_per_second": round(queries_per_s, 1),
                         "facts_per_second": round(queries_per_s / 2, 1),  # a fact is two queries (both directions)
                         "matmul_seconds": mm_s / args.steps, "ratio_to_matmul": round(step_s / mm_s, 2)})
            print(f"{name:11s} {dim:4d}-d  {queries_per_s:9.0f} queries/s  ratio {step_s / mm_s:5.2f}", flush=True)
    result = {"dataset": "icews14", "entities": ds.num_entities, "batch_size": args.batch_size,
              "steps": args.steps, "results": rows, "machine": machine()}
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
