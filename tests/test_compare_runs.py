"""scripts/compare_runs.py, the check that a change left results alone: two folders whose metrics
differ only in wall times and paths are the same; a metric that differs, or a part in one folder
only, makes it say DIFFERENT and exit 1."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def write(folder, mrr: float, seconds: float) -> None:
    (folder / "students" / "plain").mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"parts": {"plain": {"mrr": mrr, "train_seconds": seconds}}}))
    (folder / "students" / "plain" / "metrics.json").write_text(
        json.dumps({"mrr": mrr, "train_seconds": seconds, "run": str(folder)}))
    (folder / "report.md").write_text(f"# run\n\n## Metrics\n\n| plain | {mrr} |\n\n## Size and cost\n\n{seconds} s\n")


def compare(a, b, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "compare_runs.py"), str(a), str(b), *extra],
                          capture_output=True, text=True)


def test_same_results_apart_from_times_and_paths(tmp_path):
    write(tmp_path / "before", 0.25, 10.0)
    write(tmp_path / "after", 0.25, 99.0)
    done = compare(tmp_path / "before", tmp_path / "after")
    assert done.returncode == 0 and done.stdout.count("same") == 3 and "DIFFERENT" not in done.stdout


def test_a_different_metric_or_a_missing_part_is_reported(tmp_path):
    write(tmp_path / "before", 0.25, 10.0)
    write(tmp_path / "after", 0.2500001, 10.0)
    done = compare(tmp_path / "before", tmp_path / "after")
    assert done.returncode == 1 and done.stdout.count("DIFFERENT") == 3
    (tmp_path / "after" / "students" / "plain" / "metrics.json").unlink()
    done = compare(tmp_path / "before", tmp_path / "after")
    assert done.returncode == 1 and "DIFFERENT students/plain/metrics.json (in one folder only)" in done.stdout


def test_a_key_added_on_purpose_is_left_out_only_when_named(tmp_path):
    # a change that adds a key (eval.splits honoured: every metrics.json gained "splits") is compared on
    # the rest with --ignore splits; without it the added key counts as a difference
    write(tmp_path / "before", 0.25, 10.0)
    write(tmp_path / "after", 0.25, 10.0)
    part = tmp_path / "after" / "students" / "plain" / "metrics.json"
    part.write_text(json.dumps({**json.loads(part.read_text()), "splits": {"test": {"mrr": 0.25}}}))
    assert compare(tmp_path / "before", tmp_path / "after").returncode == 1
    assert compare(tmp_path / "before", tmp_path / "after", "--ignore", "splits").returncode == 0
