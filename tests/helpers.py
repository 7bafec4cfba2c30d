"""Small synthetic datasets for fast tests (real files are used where the data itself matters)."""

from __future__ import annotations

import numpy as np

from distkg.data import SPLITS, TKGDataset


def tiny_dataset(kind: str = "point", n_ent: int = 30, n_rel: int = 4, n_times: int = 6, n_facts: int = 120,
                 seed: int = 0) -> TKGDataset:
    """Random facts split 70/15/15. Point data: T0 = T1 = KEY = day. Interval data: T0 <= T1 are
    bucket ids, KEY is an id of the written (start, end) pair (several keys share buckets)."""
    rng = np.random.default_rng(seed)
    s, r, o = rng.integers(0, n_ent, n_facts), rng.integers(0, n_rel, n_facts), rng.integers(0, n_ent, n_facts)
    s[:n_ent], o[n_ent:2 * n_ent] = np.arange(n_ent), np.arange(n_ent)  # every entity appears
    if kind == "point":
        t = rng.integers(0, n_times, n_facts)
        t0, t1, key = t, t, t
        labels = [f"2014-01-{d + 1:02d}" for d in range(n_times)]
        keys, extra = labels, {"time_ymd": [(2014, 1, d + 1) for d in range(n_times)]}
    else:
        t0 = rng.integers(0, n_times - 1, n_facts)
        t1 = np.minimum(t0 + rng.integers(0, 2, n_facts), n_times - 2)
        t0[:3] = t1[:3] = n_times - 1  # a few facts with no known year
        key = rng.integers(0, 2 * n_times, n_facts)
        labels = [f"{1900 + 10 * i}..{1909 + 10 * i}" for i in range(n_times - 1)] + ["unknown"]
        keys = [f"k{i}" for i in range(2 * n_times)]
        extra = {"buckets": [(1900 + 10 * i, 1909 + 10 * i) for i in range(n_times - 1)], "min_bucket_size": 1,
                 "unknown_time": n_times - 1}
    facts = np.stack([s, r, o, t0, t1, key], 1).astype(np.int64)
    cut = [int(0.7 * n_facts), int(0.85 * n_facts)]
    parts = np.split(facts, cut)
    return TKGDataset(
        name=f"tiny-{kind}", time_kind=kind, splits=dict(zip(SPLITS, parts)),
        entity_names=[f"e{i}" for i in range(n_ent)], relation_names=[f"r{i}" for i in range(n_rel)],
        entity_text=[f"entity {i}" for i in range(n_ent)], relation_text=[f"relation {i}" for i in range(n_rel)],
        time_labels=labels, time_keys=keys, **extra,
    )
