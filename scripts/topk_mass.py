"""How much of a KG teacher's soft-target row its top k hold, at each temperature: what a top-k
soft target keeps (and what its rest bucket has to stand for).

    python scripts/topk_mass.py --teacher-run runs/train/tadistmult-yago11k-400 [--k 64] [--queries 2000]
"""

from __future__ import annotations

import argparse

import torch

from distkg.config import load_config
from distkg.data import load_dataset
from distkg.distill.teachers import KGTeacher
from distkg.training.trainer import training_queries


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher-run", required=True)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--queries", type=int, default=2000, help="the first N training queries")
    ap.add_argument("--temperatures", default="1,7")
    args = ap.parse_args(argv)
    ds = load_dataset(load_config(f"{args.teacher_run}/config.yaml").data)
    queries, _ = training_queries(ds.splits["train"], ds.num_relations)
    kg = KGTeacher(args.teacher_run, ds, queries[: args.queries])
    scores = kg.scores(torch.arange(min(args.queries, len(queries))))
    for t in (float(x) for x in args.temperatures.split(",")):
        mass = torch.softmax(scores / t, dim=1).topk(args.k, dim=1).values.sum(1)
        print(f"T={t:g}: mass in the top {args.k} of {ds.num_entities} entities: mean {mass.mean():.3f}, "
              f"median {mass.median():.3f}, min {mass.min():.3f}")


if __name__ == "__main__":
    main()
