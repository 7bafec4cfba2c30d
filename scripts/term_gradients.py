"""How hard each distillation term pulls a student: the norm of each term's gradient with respect to the
student's scores, on batches of training queries, at a finished student's weights. Explains a term that
"adds nothing": one whose pull is a thousandth of kd's cannot move the student whatever teacher it reads.

    python scripts/term_gradients.py --student-run RUN --teacher-run KG_RUN --second-run LLM_OR_ANY_RUN \
        [--batches 4] [--batch-size 1000] [--out docs/bench/term_gradients.json]

Terms as the sweep's methods weight them (configs/distill/ours-ce.yaml, bkd2.yaml): kd (T = 7), ce,
llm_huber (delta 0.05), llm_supervised (mix 0.7), llm_kd (T = 7, the second teacher at T = 7).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from distkg.config import load_config
from distkg.data import load_dataset
from distkg.distill.losses import LOSSES, DistillBatch
from distkg.distill.second import open_second
from distkg.distill.teachers import KGTeacher
from distkg.training.checkpoint import Checkpoints
from distkg.training.trainer import build_model, training_queries

TERMS = {"kd": {"temperature": 7.0}, "ce": {}, "llm_huber": {"delta": 0.05}, "llm_supervised": {"mix": 0.7},
         "llm_kd": {"temperature": 7.0}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student-run", required=True)
    ap.add_argument("--teacher-run", required=True)
    ap.add_argument("--second-run", required=True)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args(argv)
    cfg = load_config(Path(args.student_run) / "config.yaml")
    ds = load_dataset(cfg.data)
    queries, answers = training_queries(ds.splits["train"], ds.num_relations)
    student = build_model(cfg, ds)
    Checkpoints(Path(args.student_run) / "checkpoints").load_best(student)
    kg = KGTeacher(args.teacher_run, ds, queries)
    second = {t: open_second(args.second_run, ds, queries, t, cache=False) for t in (1.0, 7.0)}
    gen = torch.Generator().manual_seed(0)
    norms: dict[str, list[float]] = {name: [] for name in TERMS}
    for _ in range(args.batches):
        idx = torch.randint(0, len(queries), (args.batch_size,), generator=gen)
        for name, kw in TERMS.items():
            s = student(queries[idx]).detach().requires_grad_(True)
            t = 7.0 if name == "llm_kd" else 1.0
            batch = DistillBatch(student_scores=s, answers=answers[idx], teacher_scores=kg.scores(idx),
                                 llm_probs=second[t].probs(queries[idx], t, idx))
            (g,) = torch.autograd.grad(LOSSES.get(name)(batch, **kw), s)
            norms[name].append(float(g.norm()))
    mean = {k: sum(v) / len(v) for k, v in norms.items()}
    result = {"student_run": args.student_run, "teacher_run": args.teacher_run, "second_run": args.second_run,
              "batch_size": args.batch_size, "batches": args.batches, "gradient_norm": mean,
              "relative_to_kd": {k: v / mean["kd"] for k, v in mean.items()}}
    for k, v in mean.items():
        print(f"{k:15s} |dL/ds| {v:.3e}   {v / mean['kd']:.3e} x kd's")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
