"""Benchmark: how a training step, an epoch and an evaluation grow with the graph (issue 29), on
synthetic graphs of E entities and 10 E facts (`distkg data synth`; cluster/SCALING.md).

For each E, each part runs in a process of its own, so its peak memory (ru_maxrss) is its own:
  teacher   a step of the 400-d TA-DistMult teacher (1-vs-all cross-entropy, Adagrad; the step
            `distkg train` runs, configs/train/tadistmult-icews14-400.yaml's settings)
  student   a step of the 25-d student (the same, at 25-d: the plain method's step)
  eval      filtered ranking of 10,000 test queries (5,000 facts, both directions) by a 25-d model
Step times are medians of CPU seconds over ``--steps`` steps after one untimed; epoch = step x
batches per epoch (2 x 0.8 x 10 E training queries / batch size): an estimate from steps, not a run
of the epoch. Exponents: log(cost ratio) / log(E ratio) between consecutive sizes (1 is linear in E
at a fixed batch; an epoch has 10x more queries per 10x entities, so a full 1-vs-all epoch grows
as E^2). Run on one thread (OMP_NUM_THREADS=1):

    OMP_NUM_THREADS=1 python scripts/bench_scale.py --out docs/bench/bench_scale_cpu.json [--entities 10000,100000,1000000]

--loss sampled_softmax times the steps `distkg train` runs with that
``train.loss`` and ``--negatives`` instead.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def part(kind: str, root: str, name: str, steps: int, loss: str = "1vsall", negatives: int = 1024) -> dict:
    """One part in this process (the child's side)."""
    import torch

    from distkg.config import load_config
    from distkg.data import load_dataset
    from distkg.distill.runner import step_loss
    from distkg.evaluation import EvalOptions, FilterIndex, evaluate
    from distkg.training.trainer import batch_loss, build_model, make_optimizer, sampling_log_q, sparse_rows, training_queries

    dim = 400 if kind == "teacher" else 25
    cfg = load_config(["configs/train/tadistmult-icews14-400.yaml", "configs/distill/plain.yaml"],
                      [f"data.dataset={name}", f"data.root={root}", f"model.args.dim={dim}", f"train.loss={loss}",
                       f"train.negatives={negatives}"])
    t0 = time.perf_counter()
    ds = load_dataset(cfg.data)
    read_s = time.perf_counter() - t0
    torch.manual_seed(0)
    model = build_model(cfg, ds)
    out = {"part": kind, "entities": ds.num_entities, "dim": dim, "read_seconds": round(read_s, 2)}
    if kind == "eval":
        ds.splits["test"] = ds.splits["test"][:5000]
        index = FilterIndex.from_dataset(ds, cfg.eval.filter)
        t = time.process_time()
        evaluate(model.eval(), ds, split="test", options=EvalOptions(progress=False), index=index)
        out.update(queries=10000, eval_seconds=round(time.process_time() - t, 2))
    else:
        queries, answers = training_queries(ds.splits["train"], ds.num_relations)
        bs = cfg.train.batch_size
        if loss == "1vsall":  # the step `distkg distill` runs for the plain student (its `ce` loss)
            loss_fn = step_loss(model, cfg.distill.stages[0].losses, "bench", cfg.distill)
        else:  # the step `distkg train` runs with train.loss (distkg.training.trainer.batch_loss)
            log_q = sampling_log_q(cfg, ds)

            def loss_fn(idx, q, a, gen):
                return batch_loss(cfg, model, q, a, gen, log_q), {}
        if sparse_rows(cfg):  # as fit does: the sampled losses update the rows they read
            model.sparse_entities()
        opt = make_optimizer(cfg, list(model.parameters()))
        gen = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(queries), generator=gen)
        from benchlib import step_seconds

        times = [step_seconds(loss_fn, opt, perm[i * bs: (i + 1) * bs], queries, answers, gen) for i in range(steps + 1)]
        step = statistics.median(times[1:])
        batches = math.ceil(len(queries) / bs)
        out.update(loss=loss, batch_size=bs, step_seconds=round(step, 3), batches_per_epoch=batches,
                   epoch_seconds_estimate=round(step * batches, 1))
    out["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return out


def exponents(rows: list[dict], key: str) -> list[float]:
    pts = [(r["entities"], r[key]) for r in rows if key in r]
    return [round(math.log(b / a) / math.log(f / e), 2) for (e, a), (f, b) in zip(pts, pts[1:]) if a > 0 and b > 0]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--entities", default="10000,100000,1000000")
    ap.add_argument("--parts", default="student,eval,teacher")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--loss", default="1vsall", help="train.loss of the student and teacher steps: 1vsall (the "
                    "plain student's ce, as distill runs it) or sampled_softmax (as train runs it)")
    ap.add_argument("--negatives", type=int, default=1024, help="train.negatives with --loss other than 1vsall")
    ap.add_argument("--data-root", help="where the synthetic graphs go (default: a temporary folder)")
    ap.add_argument("--child", nargs=3, metavar=("PART", "ROOT", "NAME"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(part(*args.child, args.steps, args.loss, args.negatives)))
        return {}
    from benchlib import machine, write_result

    root = Path(args.data_root or tempfile.mkdtemp(prefix="bench-scale-"))
    rows = []
    for n in map(int, args.entities.split(",")):
        name = f"synth-{n}"
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "distkg", "data", "synth", name, "--entities", str(n), "--facts",
                        str(10 * n), "--data-root", str(root), "--force"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        synth_s = time.perf_counter() - t
        for kind in args.parts.split(","):
            proc = subprocess.run([sys.executable, __file__, "--out", "-", "--steps", str(args.steps), "--loss", args.loss,
                                   "--negatives", str(args.negatives), "--child", kind,
                                   str(root), name], cwd=REPO, capture_output=True, text=True)
            if proc.returncode != 0:  # a wall: say which, and how it ended (a kill by the OOM killer is -9)
                row = {"part": kind, "entities": n, "failed": proc.returncode, "error": proc.stderr.strip()[-300:]}
            else:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["synth_seconds"] = round(synth_s, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"results": rows, "steps": args.steps, "loss": args.loss, "negatives": args.negatives, "machine": machine(),
              "exponents": {kind: {key: exponents([r for r in rows if r["part"] == kind], key)
                                   for key in ("step_seconds", "eval_seconds", "peak_rss_gb")}
                            for kind in args.parts.split(",")}}
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
