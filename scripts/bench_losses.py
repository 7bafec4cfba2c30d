"""Benchmark: the distillation losses' [B, E] passes, forward + backward, on random batches.

Parts (``python scripts/bench_losses.py PART --out FILE``; ``--smoke`` runs them all at tiny sizes):
  kd         one kd step (T^2 KL at T = 7, batch mean) on Wikidata12k's size (1,000 x 12,554), three
             ways: kl_div (F.kl_div of log_softmax / softmax, autograd), scores (losses.combine from
             the teacher's scores), tempered (combine from soft targets computed once per run)
  kernels    each pass distkg.kernels compiles (ce, BKD's kd + ce, Ours stage 2's kd + llm_huber +
             llm_supervised, TTransE's distance) with the kernels off (DISTKG_KERNELS=0, the torch
             path) and on, at 1 and 2 threads; wall and CPU ms, medians over interleaved rounds
  paths      BKD's and Ours stage 2's losses in each form of FORMS: unfused (the registered losses one
             at a time on gathered [B, E] copies), and each path of distkg.training.softmax.weighted
             on the cached rows: kernel (the C loop), compiled (torch.compile of the formula, here
             inductor's C++), plain (the formula as written); CPU ms, min and median over
             interleaved rounds (YAGO11k's size by default; the compile is the untimed warm-up)
  precision  each loss spec under bf16 autocast against float32 arithmetic on the same scores: value
             and gradient error of bf16 arithmetic (the registered losses one at a time on bf16
             scores) and of combine (float32 under any autocast, issue 28)

    python scripts/bench_losses.py kd --out docs/bench/bench_kd.json [--threads 1] [--repeats 10]
    python scripts/bench_losses.py kernels --out docs/bench/bench_kernels.json [--rounds 3]
    OMP_NUM_THREADS=1 python scripts/bench_losses.py paths --out docs/bench/bench_loss_paths.json [--rounds 3]
    python scripts/bench_losses.py precision --out docs/bench/bench_precision.json
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from benchlib import Part, interleaved, kernels, main, timed
from distkg.distill.losses import LOSSES, DistillBatch, Rows, TemperedTargets, combine, softmax_terms, temper
from distkg.training.objective import cross_entropy
from distkg.training.softmax import weighted

SPECS = {"bkd": {"kd": {"temperature": 7.0}, "ce": {}},
         "ours-2": {"kd": {"temperature": 7.0}, "llm_huber": {"delta": 0.05}, "llm_supervised": {"mix": 0.7}}}


class Cached:
    """A batch of B queries against cached [N, E] soft targets and P_LLM, as a distillation run holds them."""

    def __init__(self, B: int, E: int, N: int, gen: torch.Generator) -> None:
        self.s0 = 3 * torch.randn(B, E, generator=gen)
        self.answers = torch.randint(E, (B,), generator=gen)
        self.p_all, self.plogp = temper(3 * torch.randn(N, E, generator=gen), 7.0)
        self.llm = torch.softmax(2 * torch.randn(N, E, generator=gen), 1)
        self.idx = torch.randint(N, (B,), generator=gen)

    def scores(self) -> torch.Tensor:
        return self.s0.clone().requires_grad_()

    def batch(self) -> DistillBatch:
        """A step's batch as a distillation run reads it: the cached rows left in place (Rows)."""
        return DistillBatch(self.scores(), self.answers, llm_probs=Rows(self.llm, self.idx),
                            teacher_targets=TemperedTargets(7.0, Rows(self.p_all, self.idx), self.plogp[self.idx]))


def unfused(spec: dict, x: Cached) -> torch.Tensor:
    """The registered losses one at a time through their own forms, rows gathered into [B, E] copies."""
    i = x.idx
    b = DistillBatch(x.scores(), x.answers, teacher_targets=TemperedTargets(7.0, x.p_all[i], x.plogp[i]),
                     llm_probs=x.llm[i])
    return sum(LOSSES.get(name)(b, **args) for name, args in spec.items())


def combined(spec: dict, x: Cached) -> torch.Tensor:
    """losses.combine, what a distillation step runs."""
    return combine(spec, x.batch())[0]


def on_path(path: str):
    """The stage's softmax terms summed by one path of distkg.training.softmax.weighted, rows cached."""
    def form(spec: dict, x: Cached) -> torch.Tensor:
        b = x.batch()
        return weighted(b.student_scores, b.answers, softmax_terms(spec, b)[1], path=path)[0]
    return form


# name -> form(spec, batch) -> loss; add a form here
FORMS = {"unfused": unfused, "kernel": on_path("kernel"), "compiled": on_path("compiled"), "plain": on_path("plain")}


def sizes(ap, batch: int, entities: int) -> None:
    ap.add_argument("--batch", type=int, default=batch)
    ap.add_argument("--entities", type=int, default=entities)


def kd_options(ap) -> None:
    sizes(ap, 1000, 12554)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10)


def kd(args) -> dict:
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
    return {"batch": args.batch, "entities": args.entities, "threads": args.threads, "repeats": args.repeats,
            "seconds_per_step": seconds}


def rounds_options(ap, batch: int, entities: int) -> None:
    sizes(ap, batch, entities)
    ap.add_argument("--rows", type=int, default=3000, help="cached training queries the batches index")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)


def kernel_passes(x: Cached, gen: torch.Generator) -> dict:
    """name -> a function of nothing running one forward + backward on fixed random inputs."""
    from distkg.models.ttranse import neg_l2

    B, E = x.s0.shape
    q0, c0 = torch.randn(B, 25, generator=gen) / 5, torch.randn(E, 25, generator=gen) / 5
    g_dist = torch.randn(B, E, generator=gen) / B

    def ttranse():
        q, c = q0.clone().requires_grad_(), c0.clone().requires_grad_()
        neg_l2(q, c).backward(g_dist)

    return {"ce": lambda: cross_entropy(x.scores(), x.answers).backward(),
            "bkd": lambda: combined(SPECS["bkd"], x).backward(),
            "ours-2": lambda: combined(SPECS["ours-2"], x).backward(), "ttranse": ttranse}


def kernel_options(ap) -> None:
    rounds_options(ap, 1000, 12554)
    ap.add_argument("--threads", default="1,2")


def kernel_part(args) -> dict:
    import os

    from distkg.kernels import library

    gen = torch.Generator().manual_seed(0)
    fns = kernel_passes(Cached(args.batch, args.entities, args.rows, gen), gen)
    threads = [int(t) for t in args.threads.split(",")]

    def measure(key):
        name, t, mode = key
        torch.set_num_threads(t)
        with kernels(mode):
            return timed(fns[name], args.steps)

    got = interleaved([(n, t, m) for n in fns for t in threads for m in ("off", "on")], measure, args.rounds, "kernels")
    rows = []
    for (name, t, mode), ts in got.items():
        wall, cpu = (1000 * statistics.median(x[i] for x in ts) for i in (0, 1))
        rows.append({"pass": name, "threads": t, "kernels": mode, "wall_ms": round(wall, 1), "cpu_ms": round(cpu, 1)})
        print(f"{name:8s} threads {t}  kernels {mode:3s}  wall {wall:7.1f} ms  cpu {cpu:7.1f} ms", flush=True)
    return {"batch": args.batch, "entities": args.entities, "rounds": args.rounds, "steps": args.steps,
            "kernels_built": library() is not None, "results": rows, "load_average": os.getloadavg()}


def paths(args) -> dict:
    gen = torch.Generator().manual_seed(0)
    x = Cached(args.batch, args.entities, args.rows, gen)

    def measure(key):
        method, form = key
        return timed(lambda: FORMS[form](SPECS[method], x).backward(), args.steps)[1]

    got = interleaved([(m, f) for m in SPECS for f in FORMS], measure, args.rounds, "paths")
    rows = []
    for (method, form), ts in got.items():
        rows.append({"method": method, "form": form, "ms_min": round(1000 * min(ts), 1),
                     "ms_median": round(1000 * statistics.median(ts), 1)})
        print(f"{method:7s} {form:10s} min {rows[-1]['ms_min']:6.1f} ms  median {rows[-1]['ms_median']:6.1f} ms")
    return {"batch": args.batch, "entities": args.entities, "rounds": args.rounds, "steps": args.steps,
            "threads": torch.get_num_threads(), "results": rows}


PRECISION_SPECS = {  # tests/distill/test_precision.py's specs and inputs
    "kd": {"kd": {"weight": 1.0, "temperature": 7.0}},
    "ours stage 2": {"kd": {"weight": 1.0, "temperature": 7.0}, "llm_huber": {"weight": 0.5},
                     "llm_supervised": {"weight": 0.5}},
    "ce + fitnet": {"ce": {"weight": 1.0}, "fitnet": {"weight": 1.0}},
    "rkd": {"rkd_distance": {"weight": 1.0}, "rkd_angle": {"weight": 1.0}},
}
STUDENT = ("student_scores", "student_repr", "student_emb")  # what the gradient flows back to


def precision_inputs(spread: float, B: int, E: int) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"student_scores": torch.randn(B, E, generator=g) * spread, "answers": torch.randint(0, E, (B,), generator=g),
            "teacher_scores": torch.randn(B, E, generator=g) * 3, "llm_probs": torch.softmax(torch.randn(B, E, generator=g), 1),
            "student_repr": torch.randn(B, 5, generator=g), "teacher_repr": torch.randn(B, 7, generator=g),
            "student_emb": torch.randn(12, 5, generator=g) * spread, "teacher_emb": torch.randn(12, 7, generator=g)}


def one_at_a_time(spec: dict, batch: DistillBatch) -> tuple[torch.Tensor, dict]:
    """The registered losses summed in the batch's own dtype: bf16 arithmetic on bf16 scores."""
    parts = {name: LOSSES.get(name)(batch, **{k: v for k, v in args.items() if k != "weight"})
             for name, args in spec.items()}
    total = sum(float(spec[n].get("weight", 1.0)) * v for n, v in parts.items())
    return total, {n: float(v.detach()) for n, v in parts.items()}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def precision(args) -> dict:
    rows = []
    for name, spec in PRECISION_SPECS.items():
        for spread in (0.01, 3.0):
            torch.manual_seed(0)
            regressor = torch.nn.Linear(5, 7)
            given = precision_inputs(spread, args.batch, args.entities)
            exact = {k: v.bfloat16().float().requires_grad_() if k in STUDENT else v for k, v in given.items()}
            ref_total, ref_parts = combine(spec, DistillBatch(**exact, regressor=regressor))
            ref_total.backward()
            row = {"spec": name, "student_spread": spread}
            for how, fn in (("bf16 arithmetic (before)", one_at_a_time), ("combine, float32 (now)", combine)):
                low = {k: exact[k].detach().bfloat16().requires_grad_() if k in STUDENT else v for k, v in given.items()}
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    total, parts = fn(spec, DistillBatch(**low, regressor=regressor))
                total.backward()
                reached = [k for k in STUDENT if exact[k].grad is not None]
                row[how] = {
                    "value_rel_error": {k: abs(parts[k] - v) / abs(v) for k, v in ref_parts.items() if v},
                    "grad_rel_l2": {k: rel(low[k].grad.float(), exact[k].grad) for k in reached},
                    "grad_rel_l2_of_bf16_rounding": {k: rel(exact[k].grad.bfloat16().float(), exact[k].grad)
                                                     for k in reached}}
            rows.append(row)
            print(name, spread, {h: row[h]["grad_rel_l2"] for h in row if isinstance(row[h], dict)}, flush=True)
    return {"batch": args.batch, "entities": args.entities, "rows": rows}


PARTS = {
    "kd": Part(kd, kd_options, ("--batch", "64", "--entities", "500", "--repeats", "2"), "kd's three forms"),
    "kernels": Part(kernel_part, kernel_options, ("--batch", "64", "--entities", "500", "--rows", "128", "--rounds", "1",
                                                  "--steps", "1"), "kernels off and on, per pass and threads"),
    "paths": Part(paths, lambda ap: rounds_options(ap, 1000, 10623),
                  ("--batch", "64", "--entities", "500", "--rows", "128", "--rounds", "1", "--steps", "1"),
                  "each form of FORMS (the softmax losses' paths), BKD and Ours stage 2"),
    "precision": Part(precision, lambda ap: sizes(ap, 16, 300), (), "bf16 autocast against float32"),
}

if __name__ == "__main__":
    main(__doc__, PARTS)
