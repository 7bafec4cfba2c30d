"""Validation (and test) MRR of the LLM teacher's head warm-up against its epochs, from cached features.

Why: `distkg llm train` reports the teacher after its last head epoch; choosing ``llm.head_epochs``
needs the curve. This runs the same warm-up (distkg.llm.rounds.head_epoch, same seeds, same
optimiser, the held-out texts of ``llm.text_folds``) on the frozen LM's features (distkg.llm.features: read from the disk cache when a run with
the same key wrote them, else encoded once) and scores the validation subsample
(``llm.valid_queries``) and the test split from those features every ``--every`` epochs. Prints one
JSON line per point, with the process's CPU minutes next to the wall minutes (docs/results/LOG.md, issue 17's
LLM teacher sections).
With ``llm.text_folds`` > 1 (TA-DistMult form) a point also gives ``test_mrr_fold_mean``: test
scored with the mean of the held-out texts' encodings instead of the teacher's own texts.

python scripts/llm_head_curve.py --config configs/llm/smollm2-yago11k.yaml --epochs 40 --every 5
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from distkg.config import RunConfig, load_config
from distkg.data import TKGDataset, load_dataset
from distkg.evaluation import EvalOptions, FilterIndex, evaluate
from distkg.llm.contrastive import cache_valid_mrr
from distkg.llm.features import frozen_features
from distkg.llm.train import build_teacher
from distkg.llm.rounds import head_data, head_epoch, head_optimizer
from distkg.llm.teacher import LLMTeacher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--every", type=int, default=5)
    args = ap.parse_args()
    cfg = load_config(args.config, args.set)
    ds = load_dataset(cfg.data)
    teacher = build_teacher(cfg, ds)
    wall, cpu = time.perf_counter(), time.process_time()
    feats, hit = frozen_features(teacher, cfg)
    feats = {k: v.to(teacher.device) for k, v in feats.items()}
    print(json.dumps({"features_from_cache": hit, "encode_minutes": round((time.perf_counter() - wall) / 60, 2)}), flush=True)
    data = head_data(teacher, cfg, ds, feats)  # the held-out texts' features too, with llm.text_folds > 1
    print(json.dumps({"text_folds": data.folds, "head_data_minutes": round((time.perf_counter() - wall) / 60, 2),
                      "cpu_minutes": round((time.process_time() - cpu) / 60, 2)}), flush=True)
    index = FilterIndex.from_dataset(ds, cfg.eval.filter)
    opt = head_optimizer(teacher, cfg)
    for epoch in range(args.epochs):
        loss = head_epoch(teacher, data, opt, cfg, epoch)
        if (epoch + 1) % args.every and epoch + 1 != args.epochs:
            continue
        row = {"epoch": epoch + 1, "loss": loss, "wall_minutes": round((time.perf_counter() - wall) / 60, 2),
               "cpu_minutes": round((time.process_time() - cpu) / 60, 2)}
        with torch.no_grad():
            row["valid_mrr"] = round(cache_valid_mrr(teacher, feats, cfg, ds, index), 4)
            test = test_metrics(teacher, ds, cfg, index, [feats])
            row.update(test_mrr=round(test["mrr"], 4), test_hits1=round(test["hits@1"], 4),
                       test_hits10=round(test["hits@10"], 4))
            if data.folds > 1 and cfg.llm.form == "tadistmult":  # the held-out sets, not the own-text one
                row["test_mrr_fold_mean"] = round(test_metrics(teacher, ds, cfg, index, data.feats[:data.folds])["mrr"], 4)
        print(json.dumps(row), flush=True)


def test_metrics(teacher: LLMTeacher, ds: TKGDataset, cfg: RunConfig, index: FilterIndex,
                 sets: list[dict[str, torch.Tensor]]) -> dict:
    """Test metrics with E(p) read from the features ``sets`` under the current head. Several sets
    (the held-out texts' features) are joined side by side, which for the TA-DistMult form scores
    each query with the sum (the mean, up to the scale, which no rank depends on) of its scores
    under each set: the "mean of the fold encodings" reading of a fold-trained teacher at test."""
    teacher.use_tables(**{k: torch.cat([torch.sigmoid(teacher.head(f[k])) for f in sets], dim=1) for k in sets[0]})
    try:
        return evaluate(teacher, ds, split="test", options=EvalOptions(filter=cfg.eval.filter, ties=cfg.eval.ties,
                        progress=False), index=index)
    finally:
        teacher.use_tables()


if __name__ == "__main__":
    main()
