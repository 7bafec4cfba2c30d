"""Benchmark: the Ray runtime (distkg.runtime) on this machine, against doing the same work in-process.

Parts (``python scripts/bench_runtime.py PART --out FILE``; ``--smoke`` runs them all on tiny runs of a
tiny graph, --tiny, with a Ray of its own on 127.0.0.1, shut down at exit):
  throughput  The same work both ways: load the fine-tuned LLM teacher (4-bit base + adapter +
              head), encode every entity text, score --queries training queries over all
              entities. In-process: one process with all --threads. Pool: --actors scoring
              actors under DeepSpeed inference with threads/actors each, every actor encoding its
              shard of the entities. Also the warm rate (tables encoded) of both.
  prefetch    A student step's wait for its soft targets with prefetch 0 and --prefetch batches,
              and the pool's cache hit rate per epoch: `distill` of a 25-d student with P_LLM from
              a fresh pool, --epochs epochs each (targets-0.jsonl of each run).
  topk        the top-k approximation's effect: BKD from the 400-d KG teacher served by the pool,
              full soft targets against the top --topk at T and the rest bucket (or lowrank:
              --rank numbers a query), --epochs-topk epochs each, --topk-seeds students per mode
              (--topk-modes).
  scale       ICEWS18 end to end: a 400-d TA-DistMult teacher (--scale-teacher-epochs, or a finished
              one: --scale-teacher-run), then BKD of a 25-d student with the teacher served by the
              pool as top-k or low-rank soft targets (--scale-soft-targets, --scale-epochs), peak
              memory of the whole process tree (driver, Ray, actors) sampled. --scale-set KEY=VALUE
              (repeatable) overrides both configs: another graph (data.dataset, data.root), the
              sampled loss (train.loss, train.negatives), eval.max_facts (cluster/SCALING.md).
Each part's JSON holds its figures under the part's key (topk: topk_effect), as the runs of
--parts throughput,prefetch before did.

    python scripts/bench_runtime.py throughput --out docs/bench/bench_runtime.json --llm-run runs/llm/yago11k \
        [--dataset yago11k] [--queries 4096] [--actors 2] [--threads 2]
    python scripts/bench_runtime.py prefetch --out runs/bench_runtime_prefetch.json --llm-run runs/llm/yago11k
    python scripts/bench_runtime.py scale --out docs/bench/bench_runtime_scale.json --scale-dir runs/scale-icews18
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import functools
import json
import logging
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from benchlib import REPO, Part, bench_data_root, main
from distkg.config import RuntimeConfig, load_config
from distkg.data import load_dataset, resolve_data_root
from distkg.training.trainer import training_queries

log = logging.getLogger("distkg")


class PeakMemory:
    """Peak resident memory of this process and all its descendants (Ray's included), sampled."""

    def __init__(self, every: float = 0.5) -> None:
        import psutil

        self.root, self.every, self.peak, self._stop = psutil.Process(), every, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for p in [self.root, *self.root.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.every)

    def __enter__(self) -> PeakMemory:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join()


def throughput(args, ds, queries: torch.Tensor) -> dict:
    from distkg.llm.train import load_teacher
    from distkg.runtime.pool import TeacherPool

    chunks = list(queries[: args.queries].split(args.batch))
    llm_cfg = load_config(Path(args.llm_run) / "config.yaml")
    llm_cfg.data.root = args.data_root
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    teacher = load_teacher(Path(args.llm_run) / "teacher", llm_cfg, ds)
    with torch.inference_mode():
        table = teacher.candidate_table()
        t_tables = time.perf_counter() - t0
        for c in chunks:
            teacher.match(teacher.query_repr(c), table)
        t_in = time.perf_counter() - t0
        t1 = time.perf_counter()
        for c in chunks:
            teacher.match(teacher.query_repr(c), table)
        warm_in = time.perf_counter() - t1
    del teacher, table
    log.info("in-process: %.1fs (tables %.1fs), warm %.2fs", t_in, t_tables, warm_in)

    rc = RuntimeConfig(teacher_actors=args.actors, teacher_resources={"CPU": args.threads / args.actors}, cache=False)
    t0 = time.perf_counter()
    pool = TeacherPool("llm", args.llm_run, ds.num_entities, rc, args.data_root)
    try:
        info = pool.ready()
        t_ready = time.perf_counter() - t0
        refs = [pool.submit(c) for c in chunks]  # all in flight: the pool's own rate
        for r in refs:
            pool.collect(r)
        t_pool = time.perf_counter() - t0
        t1 = time.perf_counter()
        for r in [pool.submit(c) for c in chunks]:
            pool.collect(r)
        warm_pool = time.perf_counter() - t1
    finally:
        pool.shutdown()
    log.info("pool: %.1fs (ready %.1fs), warm %.2fs", t_pool, t_ready, warm_pool)
    n = len(queries[: args.queries])
    return {"queries": n, "entities": ds.num_entities, "batch": args.batch, "threads": args.threads,
            "actors": args.actors, "actor_engine": {k: info[0].get(k) for k in ("engine", "dtype", "deepspeed_skipped")},
            "in_process_seconds": round(t_in, 2), "in_process_tables_seconds": round(t_tables, 2),
            "pool_seconds": round(t_pool, 2), "pool_ready_seconds": round(t_ready, 2),
            "pool_vs_in_process": round(t_in / t_pool, 3),
            "warm_in_process_queries_per_s": round(n / warm_in, 1), "warm_pool_queries_per_s": round(n / warm_pool, 1),
            "warm_pool_vs_in_process": round(warm_in / warm_pool, 3)}


def prefetch(args, out: Path) -> dict:
    from distkg.distill.runner import distill
    from distkg.runtime.pool import TeacherPool, soft_targets

    results = {}
    for depth in (0, args.prefetch):
        run = out / f"prefetch-{depth}"
        cfg = load_config([f"configs/train/tadistmult-{args.dataset}-25.yaml", "configs/distill/ours.yaml"], [
            f"data.root={args.data_root}", f"distill.stages.1.epochs={args.epochs}",
            f"distill.teacher_run={args.teacher_run}", f"distill.llm_run={args.llm_run}", "train.progress=false",
            "eval.progress=false", f"runtime.prefetch={depth}", f"runtime.teacher_actors={args.actors}",
            f"runtime.teacher_resources={{CPU: {args.threads / args.actors}}}"])
        # Ours' second stage alone (the one reading P_LLM): a stage of 0 epochs is refused, so the first goes
        cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, stages=cfg.distill.stages[1:]))
        ds = load_dataset(cfg.data)
        pool = TeacherPool("llm", args.llm_run, ds.num_entities, cfg.runtime, args.data_root)
        try:
            pool.ready()
            t0 = time.perf_counter()
            metrics = distill(cfg, run, resume=False, dataset=ds, remote=soft_targets({"llm": pool}, cfg, ds))
            seconds = time.perf_counter() - t0
        finally:
            pool.shutdown()
        epochs = [json.loads(line) for line in (run / "runtime" / "targets-0.jsonl").read_text().splitlines()]
        results[f"prefetch_{depth}"] = {
            "seconds": round(seconds, 1), "test_mrr": metrics["mrr"],
            "per_epoch": [{k: round(e[k], 4) for k in ("epoch", "cache_hit_rate", "wait_mean_s", "wait_total_s",
                                                       "pool_busy_s")} for e in epochs]}
        log.info("prefetch %d: %s", depth, results[f"prefetch_{depth}"])
    return results


def topk_effect(args, out: Path) -> dict:
    """BKD from the 400-d KG teacher served by the pool: full soft targets against the top k
    (with the rest bucket: kd's KL over the k entities and the teacher's missing mass)."""
    from distkg.distill.runner import distill
    from distkg.runtime.pool import TeacherPool, soft_targets

    results = {}
    for mode, seed in [(m, s) for s in range(args.topk_seeds) for m in args.topk_modes.split(",")]:
        cfg = load_config([f"configs/train/tadistmult-{args.dataset}-25.yaml", "configs/distill/bkd.yaml"], [
            f"data.root={args.data_root}", f"distill.stages.0.epochs={args.epochs_topk}", f"seed={seed}",
            f"distill.teacher_run={args.teacher_run}", "train.progress=false", "eval.progress=false",
            "runtime.kg_teacher=pool", f"runtime.soft_targets={mode}", f"runtime.topk={args.topk}",
            f"runtime.rank={args.rank}",
            f"runtime.teacher_actors={args.actors}", f"runtime.teacher_resources={{CPU: {args.threads / args.actors}}}"])
        ds = load_dataset(cfg.data)
        pool = TeacherPool("kg", args.teacher_run, ds.num_entities, cfg.runtime, args.data_root)
        name = f"lowrank{args.rank}" if mode == "lowrank" else mode
        try:
            pool.ready()
            t0, c0 = time.perf_counter(), time.process_time()
            m = distill(cfg, out / f"bkd-{name}-seed{seed}", resume=False, dataset=ds,
                        remote=soft_targets({"kg": pool}, cfg, ds))
        finally:
            pool.shutdown()
        key = name if args.topk_seeds == 1 else f"{name}_seed{seed}"
        results[key] = {"seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(time.process_time() - c0, 1),
                        **{k: round(m[k], 4) for k in ("mrr", "hits@1", "hits@10")},
                        "mr": round(m["mr"], 1)}
        log.info("BKD with %s soft targets, seed %d: %s", mode, seed, results[key])
    return {"method": "bkd", "epochs": args.epochs_topk, "topk": args.topk,
            "rank": args.rank, **results}


def scale(args) -> dict:
    from distkg.distill.runner import distill
    from distkg.runfolder import read_metrics
    from distkg.runtime.pool import TeacherPool, soft_targets
    from distkg.training.trainer import train

    root = Path(args.scale_dir)
    common = [f"data.root={args.data_root}", "eval.progress=false", *args.scale_set]
    result: dict = {}
    teacher_run = Path(args.scale_teacher_run) if args.scale_teacher_run else root / "teacher"
    if args.scale_teacher_run:  # trained beforehand (`distkg train`, its own wall time and memory)
        teacher = read_metrics(teacher_run)
        result["teacher"] = {"run": "given (--scale-teacher-run)", "test_mrr": teacher["mrr"]}
    else:
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            teacher = train(load_config("configs/train/tadistmult-icews18-400.yaml",
                                        [*common, f"train.epochs={args.scale_teacher_epochs}",
                                         f"model.args.dim={args.scale_teacher_dim}"]), teacher_run)
        result["teacher"] = {"seconds": round(time.perf_counter() - t0, 1), "test_mrr": teacher["mrr"],
                             "epochs": args.scale_teacher_epochs, "dim": args.scale_teacher_dim,
                             "peak_rss_gb": round(mem.peak / 2**30, 2)}
    mode = args.scale_soft_targets
    with PeakMemory() as mem:
        cfg = load_config(["configs/train/tadistmult-icews18-25.yaml", "configs/distill/bkd.yaml"], [
            *common, f"distill.stages.0.epochs={args.scale_epochs}", f"distill.teacher_run={teacher_run}",
            "runtime.kg_teacher=pool", f"runtime.soft_targets={mode}", f"runtime.topk={args.topk}",
            f"runtime.rank={args.rank}",
            f"runtime.teacher_actors={args.actors}", f"runtime.teacher_resources={{CPU: {args.threads / args.actors}}}"])
        ds = load_dataset(cfg.data)
        t0, c0 = time.perf_counter(), time.process_time()
        pool = TeacherPool("kg", str(teacher_run), ds.num_entities, cfg.runtime, args.data_root)
        try:
            pool.ready()
            ready_s = time.perf_counter() - t0
            student = distill(cfg, root / f"bkd-{mode}", resume=True, dataset=ds, remote=soft_targets({"kg": pool}, cfg, ds))
        finally:
            pool.shutdown()
    import resource

    log = [json.loads(line) for line in (root / f"bkd-{mode}" / "log.jsonl").read_text().splitlines()]
    waits = [json.loads(line) for line in (root / f"bkd-{mode}" / "runtime" / "targets-0.jsonl").read_text().splitlines()]
    result["student"] = {"seconds": round(time.perf_counter() - t0, 1), "driver_cpu_seconds": round(time.process_time() - c0, 1),
                         "pool_ready_seconds": round(ready_s, 1), "epoch_seconds": [r["seconds"] for r in log],
                         "wait_mean_s": [w["wait_mean_s"] for w in waits],
                         "pool_busy_s_per_query": round(sum(w["pool_busy_s"] for w in waits)
                                                        / max(sum(w["scored"] for w in waits), 1), 7),
                         "split_seconds": {
                             k: v["seconds"] for k, v in student["splits"].items()},
                         "driver_peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                         "overrides": args.scale_set, "protocol": student["protocol"],
                         "test_mrr": student["mrr"], "epochs": args.scale_epochs, "soft_targets": mode,
                         **({"rank": args.rank} if mode == "lowrank" else {"topk": args.topk}),
                         "method": f"bkd (teacher served by the pool, {mode})", "peak_rss_gb": round(mem.peak / 2**30, 2)}
    _, answers = training_queries(ds.splits["train"], ds.num_relations)
    result.update(dataset=ds.name, entities=ds.num_entities, training_facts=len(ds.splits["train"]),
                  training_queries=len(answers))
    return result


def missing_runs(args: argparse.Namespace, parts: list[str]) -> None:
    """Stop before starting Ray when a run a part reads is missing, naming the command that makes it
    (the benchmark reads finished runs; it does not train 400-d teachers or LLM teachers itself)."""
    need = {}
    if {"throughput", "prefetch"} & set(parts):
        need[args.llm_run] = (f"distkg llm train --config configs/llm/smollm2-{args.dataset}.yaml "
                              f"--out {args.llm_run}   (or name another with --llm-run)")
    if {"prefetch", "topk"} & set(parts):
        need[args.teacher_run] = (f"distkg train --config configs/train/tadistmult-{args.dataset}-400.yaml "
                                  f"--out {args.teacher_run}   (or name another with --teacher-run)")
    gaps = [f"  {run}: not a finished run; make it with\n    {cmd}" for run, cmd in need.items()
            if not (Path(run) / "metrics.json").is_file()]
    if gaps:
        print("bench_runtime: the parts " + ",".join(parts) + " read runs that are not here:\n" + "\n".join(gaps),
              file=sys.stderr)
        raise SystemExit(2)


@functools.cache
def tiny_runs() -> dict[str, str]:
    """A tiny graph in ICEWS14's format, an 8-d KG teacher and an LLM teacher on a tiny random Llama,
    made once per process in a temporary folder: what tests/runtime's runs are, for --tiny (the smoke)."""
    sys.path.insert(0, str(REPO))
    from tests.runtime.conftest import make_tiny_runs

    base = Path(tempfile.mkdtemp(prefix="bench-runtime-tiny-"))
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    runs = make_tiny_runs(base, teacher_epochs=1)
    return {"data_root": str(runs.data), "teacher_run": str(runs.teacher), "llm_run": str(runs.llm),
            "work": str(base / "work"), "scale_dir": str(base / "scale")}


def options(ap) -> None:
    ap.add_argument("--dataset", default="yago11k")
    ap.add_argument("--data-root")
    ap.add_argument("--llm-run", default="runs/llm/yago11k")
    ap.add_argument("--teacher-run", default="runs/train/tadistmult-yago11k-400")
    ap.add_argument("--tiny", action="store_true", help="the runs, data and folders of tiny_runs() (the smoke)")
    ap.add_argument("--queries", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefetch", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--epochs-topk", type=int, default=5)
    ap.add_argument("--work", default="runs/bench_runtime", help="folder for the prefetch and topk parts' runs")
    ap.add_argument("--scale-dir", default="runs/scale-icews18")
    ap.add_argument("--scale-teacher-epochs", type=int, default=1)
    ap.add_argument("--scale-epochs", type=int, default=1)
    ap.add_argument("--scale-teacher-run", help="a finished ICEWS18 teacher run to serve (default: train one)")
    ap.add_argument("--scale-soft-targets", default="topk", choices=["topk", "lowrank"])
    ap.add_argument("--scale-teacher-dim", type=int, default=400,
                    help="the teacher's width (400-d TA-DistMult: about 42 min an epoch on 2 cores)")
    ap.add_argument("--scale-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override of the scale part's teacher and student (repeatable)")
    ap.add_argument("--topk", type=int, default=64)
    ap.add_argument("--topk-seeds", type=int, default=1, help="students per mode in the topk part (seeds 0..N-1)")
    ap.add_argument("--topk-modes", default="full,topk", help="soft targets the topk part compares (full, topk, lowrank)")
    ap.add_argument("--rank", type=int, default=254, help="lowrank mode: numbers per query (runtime.rank)")


def with_ray(name: str, key: str, fn):
    """A part's run: its runs checked, Ray joined (or started on 127.0.0.1, shut down at exit), then ``fn``."""

    def run(args) -> dict:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
        if args.tiny:
            for k, v in tiny_runs().items():
                setattr(args, k, v)
        args.data_root = str(resolve_data_root(bench_data_root(args.data_root)).resolve())
        missing_runs(args, [name])
        from distkg.runtime.cluster import connect

        if connect(None, num_cpus=args.threads):
            import ray

            atexit.register(ray.shutdown)
        return {"dataset": args.dataset, "llm_run": args.llm_run, key: fn(args)}

    return run


def throughput_part(args) -> dict:
    ds = load_dataset(dataclasses.replace(load_config(f"configs/train/tadistmult-{args.dataset}-25.yaml").data,
                                          root=args.data_root))
    return throughput(args, ds, training_queries(ds.splits["train"], ds.num_relations)[0])


TINY = ("--tiny", "--dataset", "icews14", "--queries", "64", "--batch", "32", "--actors", "1", "--threads", "1")
PARTS = {
    "throughput": Part(with_ray("throughput", "throughput", throughput_part), options, TINY,
                       "the pool against in-process scoring"),
    "prefetch": Part(with_ray("prefetch", "prefetch", lambda a: prefetch(a, Path(a.work))), options,
                     (*TINY, "--epochs", "1", "--prefetch", "1"), "a student's wait with and without prefetch"),
    "topk": Part(with_ray("topk", "topk_effect", lambda a: topk_effect(a, Path(a.work))), options,
                 (*TINY, "--epochs-topk", "1", "--topk", "4", "--topk-modes", "topk"), "top-k soft targets against full ones"),
    "scale": Part(with_ray("scale", "scale", scale), options,
                  (*TINY, "--scale-set", "data.dataset=icews14", "--scale-teacher-dim", "8"), "a big graph end to end"),
}

if __name__ == "__main__":
    main(__doc__, PARTS)
