"""TKGDataset's own helpers (the readers are tested in test_readers.py)."""

from __future__ import annotations

import numpy as np

from tests.helpers import tiny_dataset


def test_with_queries_takes_a_fixed_sample_of_one_split_and_leaves_the_rest():
    ds = tiny_dataset("interval", n_ent=30, n_facts=300)
    n_valid = len(ds.splits["valid"])
    small = ds.with_queries("valid", 20, seed=3)
    assert len(small.splits["valid"]) == 10  # 20 queries: 10 facts asked both ways
    assert np.array_equal(small.splits["valid"], ds.with_queries("valid", 20, seed=3).splits["valid"])
    assert not np.array_equal(small.splits["valid"], ds.with_queries("valid", 20, seed=4).splits["valid"])
    rows = {tuple(r) for r in ds.splits["valid"]}
    assert all(tuple(r) in rows for r in small.splits["valid"])
    assert small.splits["train"] is ds.splits["train"] and len(ds.splits["valid"]) == n_valid
    assert ds.with_queries("valid", 0, seed=3) is ds and ds.with_queries("valid", 10 ** 6, seed=3) is ds
