"""The main job, ``distkg run CONFIG --out DIR``: read the data, train (or take) the model, evaluate, report.

Stages are added here as the system grows (KG teacher training, LLM teacher, distillation); each
writes under DIR so a person can see what ran and with which settings.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from distkg.config import RunConfig, save_config
from distkg.data import TKGDataset, load_dataset
from distkg.evaluation import evaluate
from distkg.models import MODELS, TKGModel
from distkg.training.trainer import train
from distkg.report import write_report

log = logging.getLogger("distkg")


def evaluate_model(cfg: RunConfig, ds: TKGDataset, model, out: Path) -> dict:
    """Evaluate on every configured split; metrics.json holds the test split at the top level."""
    results: dict = {}
    for split in cfg.eval.splits:
        t = time.perf_counter()
        m = evaluate(
            model, ds, split=split, filter=cfg.eval.filter, ties=cfg.eval.ties,
            query_chunk=cfg.eval.query_chunk, cand_chunk=cfg.eval.cand_chunk, progress=cfg.eval.progress,
        )
        m["seconds"] = round(time.perf_counter() - t, 3)
        results[split] = m
        log.info("%s %s: MRR %.4f  MR %.1f  H@1 %.4f  H@3 %.4f  H@10 %.4f", ds.name, split,
                 m["mrr"], m["mr"], m["hits@1"], m["hits@3"], m["hits@10"])
    main_split = "test" if "test" in results else cfg.eval.splits[-1]
    metrics = {**results[main_split], "split": main_split, "dataset": ds.name, "model": cfg.model.name,
               "splits": results}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def run(cfg: RunConfig, out: Path, command: str = "distkg run") -> dict:
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    ds = load_dataset(cfg.data)
    log.info("%s", ds.describe())
    (out / "data_stats.json").write_text(json.dumps(ds.stats(), indent=2))
    factory = MODELS.get(cfg.model.name)
    if isinstance(factory, type) and issubclass(factory, TKGModel):  # trainable: train, then test
        metrics = train(cfg, out, dataset=ds)
        rows = {f"{cfg.model.name} {metrics['dim']}-d (test, best epoch {metrics['best_epoch']})": metrics}
    else:  # training-free: evaluate as given
        model = MODELS.create(cfg.model.name, cfg.model.args, "model.args", dataset=ds)
        metrics = evaluate_model(cfg, ds, model, out)
        rows = {f"{cfg.model.name} ({split})": m for split, m in metrics["splits"].items()}
    report = write_report(out, ds, f"distkg run: {cfg.model.name} on {ds.name}", rows, command)
    log.info("wrote %s and %s", out / "metrics.json", report)
    return metrics
