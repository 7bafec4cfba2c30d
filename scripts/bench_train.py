"""Benchmark: training steps, epochs and their bounds: the backbones, the 25-d students, start-up, and growth with the graph.

Parts (``python scripts/bench_train.py PART --out FILE``; ``--smoke`` runs them all at tiny sizes):
  backbones  training throughput of each backbone at 400-d and 25-d on ICEWS14: full training steps
             (1-vs-all forward, cross-entropy plus the model's regulariser, backward, Adagrad) on
             real training queries, and the bare matmuls of the same 1-vs-all scores (forward Q @ E.T,
             the two gradient matmuls); ratio = step seconds / matmul seconds
  students   each 25-d student's training epoch beside its bound, in the same process: {YAGO11k,
             Wikidata12k} x {TA-DistMult, TTransE} x {plain, BKD, FitNet, RKD, Ours stage 1, Ours
             stage 2}, each step the one `distkg distill` runs (runner.step_loss, the method's YAML,
             Adagrad, backward, step). Teachers are untrained stand-ins of the trained ones' shapes
             (a 400-d model of the same backbone; for P_LLM 400-d random tables in the TA-DistMult
             form). CPU seconds, medians over the steps; bound = the step's three 1-vs-all matmuls
             timed bare + five copies of a [B, E] tensor, timed before every step; ratio = epoch /
             bound. Also one validation evaluation per (dataset, backbone) and, with all 24 cells,
             the students' share of the paper's grid (grid_estimate). --kernels off,on times every
             cell with distkg.kernels off (DISTKG_KERNELS=0) and on, back to back.
  startup    a training command's start-up apart from dataset parsing (import torch, distkg's imports,
             accelerator + optimiser + first step) in a fresh process, and whether torch._dynamo was imported
  scale      how a step, an epoch and an evaluation grow with the graph (issue 29, cluster/SCALING.md),
             on synthetic graphs of E entities and 10 E facts (`distkg data synth`), each part in a
             process of its own so its peak memory (ru_maxrss) is its own: teacher (a 400-d
             TA-DistMult step), student (the same at 25-d), eval (filtered ranking of 10,000 test
             queries by a 25-d model). Epoch = median step x batches per epoch (an estimate);
             exponents = log(cost ratio) / log(E ratio) between consecutive sizes. --loss
             sampled_softmax times the steps `distkg train` runs with that train.loss and --negatives.

    python scripts/bench_train.py backbones --out docs/bench/bench_train.json [--steps 10] [--batch-size 1000]
    OMP_NUM_THREADS=1 python scripts/bench_train.py students --out docs/bench/bench_students.json [--steps 8] [--kernels off,on]
    OMP_NUM_THREADS=1 python scripts/bench_train.py startup --out runs/bench_startup.json [--label LABEL]
    OMP_NUM_THREADS=1 python scripts/bench_train.py scale --out docs/bench/bench_scale_cpu.json [--entities 10000,100000,1000000]
"""

from __future__ import annotations

import atexit
import json
import math
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from benchlib import REPO, Part, Progress, bench_data_root, kernels, main, step_seconds

if TYPE_CHECKING:
    from distkg.distill.teachers import KGTeacher, LLMTables

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


def backbone_options(ap) -> None:
    ap.add_argument("--data-root")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--dims", default="400,25")


def backbones(args) -> dict:
    from distkg.data import load_dataset
    from distkg.models import MODELS
    from distkg.training.trainer import training_queries

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
    return {"dataset": "icews14", "entities": ds.num_entities, "batch_size": args.batch_size,
              "steps": args.steps, "results": rows}


CELLS = {"plain": ("plain", 0), "bkd": ("bkd", 0), "fitnet": ("fitnet", 0), "rkd": ("rkd", 0),
         "ours-1": ("ours", 0), "ours-2": ("ours", 1)}  # name -> (method config, stage)


class Bound:
    """One step's floor: the three matmuls of 1-vs-all scoring and five copies of a [B, E] tensor."""

    def __init__(self, batch: int, entities: int, dim: int) -> None:
        self.q, self.e = torch.randn(batch, dim), torch.randn(entities, dim)
        self.src, self.dst = torch.randn(batch, entities), torch.empty(batch, entities)
        self.seconds()  # warms the heap and caches up

    def seconds(self) -> float:
        t = time.process_time()
        g = self.q @ self.e.T
        g @ self.e
        g.T @ self.q
        for _ in range(5):
            self.dst.copy_(self.src)
        return time.process_time() - t


def time_cell(cfg, ds, stage: int, kg: KGTeacher, llm: LLMTables, q, a, batches, bound: Bound) -> tuple[float, float]:
    """Median CPU seconds of one training step of ``stage`` over ``batches`` (after one untimed step)
    and of the bound, timed just before each step (the load of a shared machine drifts; a ratio of
    two medians taken minutes apart carried that drift)."""
    from distkg.distill.runner import stage_fields, step_loss
    from distkg.training.trainer import build_model, make_optimizer

    student = build_model(cfg, ds)
    aux = torch.nn.ModuleDict()
    spec = cfg.distill.stages[stage].losses
    if "regressor" in stage_fields(spec):
        aux["regressor"] = torch.nn.Linear(student.dim, kg.query.shape[1])
    loss_fn = step_loss(student, spec, "bench", cfg.distill, kg=kg, llm=llm, aux=aux)
    opt = make_optimizer(cfg, [*student.parameters(), *aux.parameters()])
    gen = torch.Generator().manual_seed(0)
    times, bounds = [], []
    for idx in [batches[0], *batches]:
        bounds.append(bound.seconds())
        times.append(step_seconds(loss_fn, opt, idx, q, a, gen))
    return statistics.median(times[1:]), statistics.median(bounds[1:])


def eval_seconds(cfg, ds) -> float:
    """CPU seconds of one validation evaluation of a fresh student (what every epoch adds)."""
    from distkg.evaluation import EvalOptions, FilterIndex, evaluate
    from distkg.training.trainer import build_model

    model = build_model(cfg, ds).eval()
    index = FilterIndex.from_dataset(ds, cfg.eval.filter)
    t = time.process_time()
    evaluate(model, ds, split="valid", options=EvalOptions(filter=cfg.eval.filter, ties=cfg.eval.ties, progress=False),
             index=index)
    return time.process_time() - t


def grid_estimate(rows: list[dict], evals: dict, epochs: int, seeds: int, processes: int) -> dict:
    """Students' share of the paper's grid from the measured costs: every cell at its full epoch
    budget (patience may stop it sooner) plus one validation per epoch, Ours 10 + 10 epochs, run
    as ``processes`` one-thread processes. An estimate, not a measurement of the grid."""
    total = 0.0
    for row in rows:
        block_eval = evals[(row["dataset"], row["backbone"])]
        n = epochs // 2 if row["cell"].startswith("ours") else epochs
        total += seeds * n * (row["epoch_seconds"] + block_eval)
    return {"student_cpu_seconds": round(total), "processes": processes,
            "student_wall_hours": round(total / processes / 3600, 2), "epochs": epochs, "seeds": seeds}


def student_options(ap) -> None:
    ap.add_argument("--data-root")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per cell")
    ap.add_argument("--datasets", default="yago11k,wikidata12k")
    ap.add_argument("--backbones", default="tadistmult,ttranse")
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--kernels", default="on", choices=["on", "off", "off,on", "on,off"], help="each cell with distkg.kernels "
                    "off (DISTKG_KERNELS=0, the torch path) and on, timed back to back")


def students(args) -> dict:
    from distkg import kernels as compiled
    from distkg.config import load_config
    from distkg.data import load_dataset
    from distkg.distill.runner import kd_temperature, stage_fields
    from distkg.distill.teachers import KGTeacher, LLMTables  # noqa: F811
    from distkg.training.trainer import build_model, training_queries

    modes = args.kernels.split(",")
    if "on" in modes and compiled.library() is None:
        raise SystemExit("--kernels on: the kernels could not be built here (see the log line above)")
    cells = args.cells.split(",")
    progress = Progress(len(args.datasets.split(",")) * len(args.backbones.split(",")) * len(cells) * len(modes), "cells")
    rows, evals = [], {}
    for dataset in args.datasets.split(","):
        for backbone in args.backbones.split(","):
            student_cfg = f"configs/train/{backbone}-{dataset}-25.yaml"
            base = load_config(student_cfg)
            ds = load_dataset(base.data, bench_data_root(args.data_root))
            queries, answers = training_queries(ds.splits["train"], ds.num_relations)
            bs = base.train.batch_size
            n_batches = math.ceil(len(queries) / bs)
            perm = torch.randperm(len(queries), generator=torch.Generator().manual_seed(0))[: bs * (args.steps + 1)]
            # the teachers hold the timed steps' queries only; batches index into those
            q, a = queries[perm], answers[perm]
            batches = list(torch.arange(len(perm)).split(bs))[: args.steps]
            torch.manual_seed(0)
            teacher_cfg = load_config(f"configs/train/{backbone}-{dataset}-400.yaml")
            kg = KGTeacher.from_model(build_model(teacher_cfg, ds), ds, q)
            g = torch.Generator().manual_seed(1)
            tables = {"entity": torch.randn(ds.num_entities, 400, generator=g) / 20,
                      "relation": torch.randn(2 * ds.num_relations, 400, generator=g) / 20,
                      "time": torch.randn(ds.num_times, 400, generator=g) / 20,
                      "form": "tadistmult", "logit_scale": torch.tensor(0.0)}
            bound = Bound(bs, ds.num_entities, base.model.args.get("dim", 25))
            evals[(dataset, backbone)] = eval_seconds(base, ds)
            for cell in cells:
                method, stage = CELLS[cell]
                cfg = load_config([student_cfg, f"configs/distill/{method}.yaml"])
                t = kd_temperature(cfg)
                if t is not None and kg.tempered is None:
                    kg.temper(t)
                llm = (LLMTables.from_tables(tables, ds, q, cfg.distill.llm_temperature)
                       if "llm_probs" in stage_fields(cfg.distill.stages[stage].losses) else None)
                for mode in modes:  # each cell with the kernels off and on, back to back (the same load)
                    with kernels(mode):
                        step, floor = time_cell(cfg, ds, stage, kg, llm, q, a, batches, bound)
                    row = {"dataset": dataset, "backbone": backbone, "cell": cell, "kernels": mode, "batch_size": bs,
                           "entities": ds.num_entities, "batches_per_epoch": n_batches,
                           "epoch_seconds": round(step * n_batches, 2), "bound_seconds": round(floor * n_batches, 2),
                           "ratio": round(step / floor, 2)}
                    rows.append(row)
                    progress(f"{dataset} {backbone} {cell} kernels {mode}: epoch {row['epoch_seconds']:.2f} s, "
                             f"bound {row['bound_seconds']:.2f} s, ratio {row['ratio']:.2f}")
    last = [r for r in rows if r["kernels"] == modes[-1]]
    return {"steps": args.steps, "threads": torch.get_num_threads(), "kernels": modes, "results": rows,
              "kernel_library": str(compiled.build.library_path()) if compiled.library() else None,
              "valid_eval_seconds": {f"{d}-{b}": round(v, 2) for (d, b), v in evals.items()},
              "grid_estimate": grid_estimate(last, evals, 20, 3, 2) if len(last) == 24 else None}


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




STARTUP = """
import json, sys, time
t = time.perf_counter()
import torch
t1 = time.perf_counter()
import distkg.distill.runner
import distkg.training.trainer as tr
from distkg.config import load_config
t2 = time.perf_counter()
cfg = load_config("configs/train/ttranse-yago11k-25.yaml")
acc = tr.make_accelerator(cfg)
m = torch.nn.Linear(3, 2)
o = tr.make_optimizer(cfg, list(m.parameters()))
m, o = acc.prepare(m, o)
acc.backward(m(torch.ones(1, 3)).sum()); o.step(); o.zero_grad()
t3 = time.perf_counter()
print(json.dumps({"import_torch_seconds": t1 - t, "distkg_imports_seconds": t2 - t1,
                  "accelerator_optimizer_first_step_seconds": t3 - t2, "dynamo_imported": "torch._dynamo" in sys.modules}))
"""


def startup(args) -> dict:
    """A fresh interpreter's start-up (this process has imported everything already)."""
    proc = subprocess.run([sys.executable, "-c", STARTUP], cwd=REPO, capture_output=True, text=True, check=True)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{args.label}: import torch {got['import_torch_seconds']:.2f} s, the rest of distkg's imports "
          f"{got['distkg_imports_seconds']:.2f} s, accelerator + optimiser + first step "
          f"{got['accelerator_optimizer_first_step_seconds']:.2f} s, torch._dynamo imported: {got['dynamo_imported']}")
    return {"label": args.label, **got}


def scale_options(ap) -> None:
    ap.add_argument("--entities", default="10000,100000,1000000")
    ap.add_argument("--parts", default="student,eval,teacher")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--loss", default="1vsall", help="train.loss of the student and teacher steps: 1vsall (the "
                    "plain student's ce, as distill runs it) or sampled_softmax (as train runs it)")
    ap.add_argument("--negatives", type=int, default=1024, help="train.negatives with --loss other than 1vsall")
    ap.add_argument("--data-root", help="where the synthetic graphs go (default: a temporary folder)")


def scale(args) -> dict:
    root = Path(args.data_root or tempfile.mkdtemp(prefix="bench-scale-"))
    if not args.data_root:
        atexit.register(shutil.rmtree, root, ignore_errors=True)
    sizes, kinds = list(map(int, args.entities.split(","))), args.parts.split(",")
    progress, rows = Progress(len(sizes) * len(kinds), "scale", every=0), []
    for n in sizes:
        name = f"synth-{n}"
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "distkg", "data", "synth", name, "--entities", str(n), "--facts",
                        str(10 * n), "--data-root", str(root), "--force"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        synth_s = time.perf_counter() - t
        for kind in kinds:
            proc = subprocess.run([sys.executable, __file__, SCALE_CHILD, kind, str(root), name, str(args.steps), args.loss,
                                   str(args.negatives)], cwd=REPO, capture_output=True, text=True)
            if proc.returncode != 0:  # a wall: say which, and how it ended (a kill by the OOM killer is -9)
                row = {"part": kind, "entities": n, "failed": proc.returncode, "error": proc.stderr.strip()[-300:]}
            else:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["synth_seconds"] = round(synth_s, 1)
            rows.append(row)
            progress(json.dumps(row))
    return {"results": rows, "steps": args.steps, "loss": args.loss, "negatives": args.negatives,
            "exponents": {kind: {key: exponents([r for r in rows if r["part"] == kind], key)
                                 for key in ("step_seconds", "eval_seconds", "peak_rss_gb")} for kind in kinds}}


SCALE_CHILD = "--scale-child"  # argv[1] of scale's child processes: PART ROOT NAME STEPS LOSS NEGATIVES
PARTS = {
    "backbones": Part(backbones, backbone_options, ("--steps", "1", "--batch-size", "16", "--dims", "8"),
                      "each backbone's step against its matmuls (ICEWS14)"),
    "students": Part(students, student_options, ("--steps", "1", "--datasets", "yago11k", "--backbones", "ttranse",
                                                 "--cells", "plain,ours-2", "--kernels", "off,on"),
                     "each 25-d student's epoch against its bound"),
    "startup": Part(startup, lambda ap: ap.add_argument("--label", default="this checkout"), (),
                    "a training command's start-up"),
    "scale": Part(scale, scale_options, ("--entities", "300,600", "--steps", "1"), "growth with the graph (synthetic)"),
}

if __name__ == "__main__":
    if sys.argv[1:2] == [SCALE_CHILD]:
        kind, root, name, steps, loss, negatives = sys.argv[2:]
        print(json.dumps(part(kind, root, name, int(steps), loss, int(negatives))))
    else:
        main(__doc__, PARTS)
