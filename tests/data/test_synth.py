"""`distkg data synth`: seeded synthetic graphs that every command reads as it reads a benchmark."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from distkg.data import load_dataset
from distkg.data.synth import shape_stats, write_synth
from distkg.errors import DataError


def test_a_synthetic_graph_reads_like_a_benchmark(tmp_path):
    folder = write_synth(tmp_path, "tiny", entities=500, relations=12, times=30, facts=6000, seed=3)
    ds = load_dataset("tiny", tmp_path)
    assert (ds.name, ds.num_entities, ds.num_relations) == ("tiny", 500, 12)
    assert [len(ds.splits[s]) for s in ("train", "valid", "test")] == [4800, 600, 600]
    train, valid, test = (ds.splits[s] for s in ("train", "valid", "test"))
    assert train[:, 3].max() <= valid[:, 3].min() and valid[:, 3].max() <= test[:, 3].min()  # split by time
    assert not (train[:, 0] == train[:, 2]).any()
    assert json.loads((folder / "synth.json").read_text())["params"]["facts"] == 6000
    stats = shape_stats(train, test, ds.num_entities)
    assert stats["top1pct_mention_share"] > 0.1  # heavy-tailed: uniform degrees would give about 0.01
    assert stats["test_triples_seen_in_train"] > 0.2  # recurring facts


def test_the_same_seed_writes_the_same_graph(tmp_path):
    a = write_synth(tmp_path / "a", "g", entities=100, relations=4, times=10, facts=1000, seed=7)
    b = write_synth(tmp_path / "b", "g", entities=100, relations=4, times=10, facts=1000, seed=7)
    c = write_synth(tmp_path / "c", "g", entities=100, relations=4, times=10, facts=1000, seed=8)
    assert (a / "train.txt").read_bytes() == (b / "train.txt").read_bytes() != (c / "train.txt").read_bytes()


def test_bad_requests_say_what_is_wrong(tmp_path):
    with pytest.raises(DataError, match="not a benchmark's"):
        write_synth(tmp_path, "icews18", entities=100, relations=4, times=10, facts=1000, seed=0)
    with pytest.raises(DataError, match="--facts=5: at least 10"):
        write_synth(tmp_path, "g", entities=100, relations=4, times=10, facts=5, seed=0)
    write_synth(tmp_path, "g", entities=100, relations=4, times=10, facts=1000, seed=0)
    with pytest.raises(DataError, match="exists: choose another name, or --force"):
        write_synth(tmp_path, "g", entities=100, relations=4, times=10, facts=1000, seed=0)
    with pytest.raises(DataError, match="no graph of `distkg data synth`"):
        load_dataset("nosuch", tmp_path)


def test_the_command_prints_the_graph_s_shape(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "distkg", "data", "synth", "g", "--entities", "200", "--facts", "2000",
                           "--data-root", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["entities"] == 200 and out["train"] == 1600 and np.isfinite(out["top1pct_mention_share"])


def test_data_stats_shape_prints_what_synth_imitates(tmp_path):
    write_synth(tmp_path, "g", entities=200, relations=4, times=10, facts=2000, seed=0)
    proc = subprocess.run([sys.executable, "-m", "distkg", "data", "stats", "g", "--shape", "--data-root", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)) >= {"top1pct_mention_share", "share_at_most_3_mentions", "test_triples_seen_in_train"}
