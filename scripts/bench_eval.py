"""Benchmark: full filtered ICEWS14 test evaluation vs the bare matmul that makes its scores.

Why this ratio: scoring (queries @ E.T) is work every evaluator must do; everything the ranking
adds on top (filter lookup, counting, tie handling, NaN check) should cost at most as much again,
so the target is eval_seconds / matmul_seconds <= 2. Both are timed in the same process, with the
same query chunks and dtype; each figure is the best of --repeats runs (the machine is shared).

    python scripts/bench_eval.py --out runs/bench_eval.json [--data-root D] [--repeats N]
"""

from __future__ import annotations

import argparse
import time

import torch

from benchlib import bench_data_root, machine, write_result
from distkg.data import load_dataset
from distkg.evaluation import DotProductScorer, EvalOptions, build_queries, default_query_chunk, evaluate

DIM = 400


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--query-chunk", type=int, default=None, help="default: from the score memory budget")
    args = ap.parse_args(argv)

    ds = load_dataset("icews14", bench_data_root(args.data_root))
    torch.manual_seed(0)
    n_ent, n_rel = ds.num_entities, ds.num_relations
    entity_emb = torch.randn(n_ent, DIM) / DIM**0.25
    relation_emb = torch.randn(2 * n_rel, DIM) / DIM**0.25
    scorer = DotProductScorer.distmult(entity_emb, relation_emb)
    qs = build_queries(ds.splits["test"], n_rel)
    qchunk = args.query_chunk or default_query_chunk(n_ent)
    with torch.inference_mode():
        query_vecs = scorer.query_fn(torch.from_numpy(qs.queries))  # outside the matmul timing

    def run_eval() -> tuple[float, dict]:
        t = time.perf_counter()
        m = evaluate(scorer, ds, "test", EvalOptions(query_chunk=args.query_chunk, progress=False))
        return time.perf_counter() - t, m

    @torch.inference_mode()
    def run_matmul() -> float:
        t = time.perf_counter()
        for q0 in range(0, len(qs), qchunk):
            query_vecs[q0 : q0 + qchunk] @ entity_emb.T
        return time.perf_counter() - t

    run_matmul()  # warm-up: thread pool, page faults
    eval_times, mm_times, metrics = [], [], {}
    for _ in range(args.repeats):  # interleaved so drift on a shared machine hits both alike
        mm_times.append(run_matmul())
        secs, metrics = run_eval()
        eval_times.append(secs)
    result = {
        "dataset": "icews14",
        "split": "test",
        "queries": len(qs),
        "entities": n_ent,
        "dim": DIM,
        "dtype": str(entity_emb.dtype),
        "query_chunk": qchunk,
        "repeats": args.repeats,
        "eval_seconds": min(eval_times),
        "matmul_seconds": min(mm_times),
        "ratio": min(eval_times) / min(mm_times),
        "eval_seconds_all": eval_times,
        "matmul_seconds_all": mm_times,
        "metrics": metrics,
        "machine": machine(),
    }
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
