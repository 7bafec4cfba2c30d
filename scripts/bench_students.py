"""Benchmark: each 25-d student's training epoch beside its bound, measured in the same process.

Cells: {YAGO11k, Wikidata12k} x {TA-DistMult, TTransE} x {plain, BKD, FitNet, RKD, Ours stage 1,
Ours stage 2}, each step the one `distkg distill` runs (distkg.distill.runner.step_loss, the
method's YAML, Adagrad as the student configs say, backward, optimiser step).

The teachers are untrained stand-ins of the trained ones' shapes, so the cost is the same and no
teacher run is needed: a 400-d model of the same backbone (its soft targets built as `distkg
distill` builds them, for the queries of the timed steps only, to keep memory small) and, for
Ours' P_LLM, 400-d random tables in the TA-DistMult form.

Times are CPU seconds of the process (the machines are shared) and medians over the steps.
bound = the step's three 1-vs-all matmuls of the same shapes timed bare ([B, D] x [E, D] forward,
both gradients) + five copies of a [B, E] tensor, timed before every step of the cell; epoch =
median step x batches per epoch; ratio = epoch / (median bound x batches per epoch). Run on one
thread (OMP_NUM_THREADS=1) on an otherwise quiet machine.

Also one validation evaluation per (dataset, backbone), and with all 24 cells an estimate of the
students' share of the paper's grid (grid_estimate: 20 epochs, 3 seeds, two 1-thread processes).

    OMP_NUM_THREADS=1 python scripts/bench_students.py --out runs/bench_students.json [--steps 8] [--kernels off,on]

--kernels off,on times every cell twice, back to back: the torch path (DISTKG_KERNELS=0) and the
compiled row loops of distkg.kernels (the default, on).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch

from benchlib import bench_data_root, machine, step_seconds, write_result
from distkg import kernels
from distkg.config import load_config
from distkg.data import load_dataset
from distkg.distill.runner import kd_temperature, stage_fields, step_loss
from distkg.distill.teachers import KGTeacher, LLMTables
from distkg.training.trainer import build_model, make_optimizer, training_queries

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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--data-root")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per cell")
    ap.add_argument("--datasets", default="yago11k,wikidata12k")
    ap.add_argument("--backbones", default="tadistmult,ttranse")
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--kernels", default="on", help="off, on, or off,on: each cell with distkg.kernels off "
                    "(DISTKG_KERNELS=0, the torch path) and on, timed back to back")
    args = ap.parse_args(argv)
    modes = args.kernels.split(",")
    if not modes or any(m not in ("on", "off") for m in modes):
        ap.error(f"--kernels takes on, off or off,on; got {args.kernels!r}")
    before = os.environ.get("DISTKG_KERNELS")
    if "on" in modes and kernels.library() is None:
        ap.error("--kernels on: the kernels could not be built here (see the log line above)")
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
            for cell in args.cells.split(","):
                method, stage = CELLS[cell]
                cfg = load_config([student_cfg, f"configs/distill/{method}.yaml"])
                t = kd_temperature(cfg)
                if t is not None and kg.tempered is None:
                    kg.temper(t)
                llm = (LLMTables.from_tables(tables, ds, q, cfg.distill.llm_temperature)
                       if "llm_probs" in stage_fields(cfg.distill.stages[stage].losses) else None)
                for mode in modes:  # each cell with the kernels off and on, back to back (the same load)
                    os.environ["DISTKG_KERNELS"] = "1" if mode == "on" else "0"
                    step, floor = time_cell(cfg, ds, stage, kg, llm, q, a, batches, bound)
                    row = {"dataset": dataset, "backbone": backbone, "cell": cell, "kernels": mode, "batch_size": bs,
                           "entities": ds.num_entities, "batches_per_epoch": n_batches,
                           "epoch_seconds": round(step * n_batches, 2), "bound_seconds": round(floor * n_batches, 2),
                           "ratio": round(step / floor, 2)}
                    rows.append(row)
                    print(f"{dataset:12s} {backbone:10s} {cell:7s} kernels {mode:3s} epoch {row['epoch_seconds']:7.2f} s  "
                          f"bound {row['bound_seconds']:6.2f} s  ratio {row['ratio']:5.2f}", flush=True)
    if before is None:
        os.environ.pop("DISTKG_KERNELS", None)
    else:
        os.environ["DISTKG_KERNELS"] = before
    last = [r for r in rows if r["kernels"] == modes[-1]]
    result = {"steps": args.steps, "threads": torch.get_num_threads(), "kernels": modes, "results": rows,
              "kernel_library": str(kernels.build.library_path()) if kernels.library() else None,
              "valid_eval_seconds": {f"{d}-{b}": round(v, 2) for (d, b), v in evals.items()},
              "grid_estimate": grid_estimate(last, evals, 20, 3, 2) if len(last) == 24 else None,
              "machine": machine()}
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
