"""Evaluating a finished model on the splits a run config names (``eval.splits``): one rule for every
command that evaluates (`distkg train`, `distill`, `llm train`, `run`, `evaluate`), so the key means
the same everywhere."""

from __future__ import annotations

import logging
import time

from distkg.data import TKGDataset
from distkg.evaluation.filters import FilterIndex
from distkg.evaluation.options import EvalOptions
from distkg.evaluation.ranking import evaluate
from distkg.evaluation.scorer import Scorer

log = logging.getLogger("distkg")


def evaluate_splits(scorer: Scorer, ds: TKGDataset, splits: list[str], options: EvalOptions,
                    index: FilterIndex | None = None, views: dict[str, TKGDataset] | None = None) -> dict:
    """Every split of ``splits``, in order: the main split's metrics at the top level with ``split``
    naming it (test when listed, else the last), and ``splits``: {split: its metrics, seconds included}.
    ``views``: the dataset a split is read from where it is not ``ds`` (the LLM teacher's validation
    sample, ``llm.valid_queries``)."""
    results: dict = {}
    for split in splits:
        t = time.perf_counter()
        m = evaluate(scorer, (views or {}).get(split, ds), split=split, options=options, index=index)
        m["seconds"] = round(time.perf_counter() - t, 3)
        results[split] = m
        log.info("%s %s: MRR %.4f  MR %.1f  H@1 %.4f  H@3 %.4f  H@10 %.4f (%d queries)", ds.name, split,
                 m["mrr"], m["mr"], m["hits@1"], m["hits@3"], m["hits@10"], m["queries"])
    main = "test" if "test" in results else splits[-1]
    return {**results[main], "split": main, "splits": results}
