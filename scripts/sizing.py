"""The sizing model of cluster/SCALING.md ("What a day of training needs"), computed from measurements.

Inputs, each a JSON this repository's benchmarks wrote:
  --steps   bench_train.py scale with --loss sampled_softmax: CPU seconds of one 1,000-query step of the
            25-d student and the 400-d teacher (sparse row updates), at several entity counts, and
            each process's peak memory
  --pool    bench_runtime.py --scale (low-rank soft targets): the pool's busy seconds per query
            scored (a student's soft targets), from the largest graph given
Graph sizes are the published statistics of ICEWS05-15 and GDELT (the TKG benchmark versions) and
a 10M-entity graph with 10 facts per entity, 80% of them for training. Epochs are the configs':
12 for a 400-d teacher (configs/train/*-400.yaml), 20 for a BKD student (configs/distill/bkd.yaml).

    python scripts/sizing.py --steps docs/bench/bench_scale_sparse_cpu.json \
        --pool docs/bench/bench_runtime_pool_1m.json --out docs/bench/sizing.json

Every derived number is a product of those measurements and the graph's size; nothing else is
assumed but that a step's cost does not grow with E (measured: bench_train.py scale's exponents) and that
threads add up (data-parallel workers on separate cores; not measured past 2 cores).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

GRAPHS = {  # entities, training facts (published statistics; the 10M graph as distkg data synth draws it)
    "ICEWS05-15": (10_488, 368_962),
    "GDELT": (7_691, 1_734_399),
    "10M entities": (10_000_000, 80_000_000),
}
TEACHER_EPOCHS, STUDENT_EPOCHS = 12, 20
BATCH = 1000
RANK, TOPK = 64, 64  # runtime.rank and runtime.topk of the measured pool runs
DAY = 86400.0


DIM = {"student": 25, "teacher": 400}
TABLE_BYTES = 4 * 2  # float32 weights and Adagrad's sum, per number of the entity table
TRAIN_FACTS_PER_ENTITY = 8  # bench_train.py scale's graphs: 10 facts an entity, 80% of them for training


def memory_model(rows: list[dict], part: str) -> tuple[float, float]:
    """(bytes per training fact, fixed bytes) of a part's process: its peak growth between its two
    largest graphs less its entity table's (E x dim x TABLE_BYTES), put on the training facts (the
    graph and its training queries), and what is left at the largest graph."""
    pts = sorted((r["entities"], r["peak_rss_gb"] * 2**30) for r in rows if r["part"] == part and "failed" not in r)
    (e0, m0), (e1, m1) = pts[-2], pts[-1]
    table = DIM[part] * TABLE_BYTES
    per_fact = ((m1 - m0) / (e1 - e0) - table) / TRAIN_FACTS_PER_ENTITY
    return per_fact, m1 - e1 * table - e1 * TRAIN_FACTS_PER_ENTITY * per_fact


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", required=True)
    ap.add_argument("--pool", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    steps = json.loads(Path(args.steps).read_text())["results"]
    pool = json.loads(Path(args.pool).read_text())["scale"]["student"]
    step = {part: max(r["step_seconds"] for r in steps if r["part"] == part and "step_seconds" in r)
            for part in ("student", "teacher")}  # the dearest measured step: E-independent up to noise
    pool_s_per_query = pool["pool_busy_s_per_query"]
    rows = []
    for name, (entities, facts) in GRAPHS.items():
        queries = 2 * facts  # both directions
        teacher_s = TEACHER_EPOCHS * queries / BATCH * step["teacher"]
        student_s = STUDENT_EPOCHS * queries / BATCH * step["student"]
        pool_s = STUDENT_EPOCHS * queries * pool_s_per_query
        memory = {}
        for part in ("student", "teacher"):
            per_fact, fixed = memory_model(steps, part)
            memory[part] = entities * DIM[part] * TABLE_BYTES + facts * per_fact + fixed
        step_bytes = {"full": 4 * entities * BATCH, "topk": BATCH * (TOPK * 8 + 4), "lowrank": BATCH * RANK * 4}
        rows.append({
            "graph": name, "entities": entities, "training_facts": facts, "queries_per_epoch": queries,
            "teacher_thread_hours": round(teacher_s / 3600, 2), "teacher_threads_for_a_day": round(teacher_s / DAY, 2),
            "student_thread_hours": round(student_s / 3600, 2), "pool_thread_hours": round(pool_s / 3600, 2),
            "student_threads_for_a_day": round((student_s + pool_s) / DAY, 2),
            "teacher_memory_gb": round(memory["teacher"] / 2**30, 1), "student_memory_gb": round(memory["student"] / 2**30, 1),
            "lowrank_table_gb": round(entities * RANK * 4 / 2**30, 2),
            "bytes_per_step": step_bytes,
            "mb_per_second_per_worker": {k: round(v / step["student"] / 2**20, 1) for k, v in step_bytes.items()},
        })
    result = {"inputs": {"steps": args.steps, "pool": args.pool, "step_seconds": step,
                         "pool_busy_s_per_query": pool_s_per_query,
                         "bytes_per_training_fact": {p: round(memory_model(steps, p)[0]) for p in DIM}},
              "epochs": {"teacher": TEACHER_EPOCHS, "student": STUDENT_EPOCHS}, "graphs": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(json.dumps(r))
    return result


if __name__ == "__main__":
    main()
