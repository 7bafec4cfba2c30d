"""scripts/bench_scale.py at tiny sizes, so the benchmark behind cluster/SCALING.md's cost table
cannot rot: every part runs and the JSON holds its rows and exponents."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_scale_runs_at_tiny_sizes(tmp_path):
    out = tmp_path / "scale.json"
    proc = subprocess.run([sys.executable, "scripts/bench_scale.py", "--out", str(out), "--entities", "500,1000",
                           "--steps", "1", "--data-root", str(tmp_path / "data")], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result["results"]
    assert [(r["part"], r["entities"]) for r in rows] == [(p, n) for n in (500, 1000) for p in ("student", "eval", "teacher")]
    assert all("failed" not in r and r["peak_rss_gb"] > 0 for r in rows)
    assert len(result["exponents"]["teacher"]["step_seconds"]) == 1


def test_sizing_model_is_what_its_script_computes_from_the_committed_benchmarks(tmp_path):
    """cluster/SCALING.md's sizing table comes from scripts/sizing.py over the committed JSONs: running it
    again gives docs/bench/sizing.json, and the curves' script draws from the same files."""
    out = tmp_path / "sizing.json"
    proc = subprocess.run([sys.executable, "scripts/sizing.py", "--steps", "docs/bench/bench_scale_sparse_cpu.json",
                           "--pool", "docs/bench/bench_runtime_pool_1m.json", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(out.read_text()) == json.loads((REPO / "docs" / "bench" / "sizing.json").read_text())
    png = tmp_path / "curves.png"
    proc = subprocess.run([sys.executable, "scripts/plot_scale.py", "--out", str(png),
                           "1-vs-all=docs/bench/bench_scale_cpu.json", "sampled=docs/bench/bench_scale_sparse_cpu.json"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert png.stat().st_size > 10_000
