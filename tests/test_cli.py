"""The distkg command line, end to end on the real data (tiny model sizes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from distkg.cli.main import main

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "distkg", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("data", "train", "evaluate", "run"):
        assert cmd in out


def test_data_stats_json(data_root, capsys):
    assert main(["data", "stats", "wikidata12k", "--data-root", str(data_root), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert (st["entities"], st["relations"], st["train"], st["valid"], st["test"]) == (12554, 24, 32497, 4062, 4062)
    assert st["date_rules"]["unknown"] == 6140


def test_errors_are_one_line_and_exit_2(data_root, capsys, tmp_path):
    assert main(["data", "stats", "yago", "--data-root", str(data_root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("distkg: error: unknown dataset 'yago'") and "Traceback" not in err
    assert main(["run", str(REPO / "configs" / "quickstart.yaml"), "--out", str(tmp_path / "x"), "--set", "model.args.dimm=3"]) == 2
    assert "no argument 'dimm' (did you mean 'dim'?)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # rejected before anything was written


def test_run_frequency_baseline(data_root, tmp_path):
    out = tmp_path / "freq"
    assert main(["run", str(REPO / "configs" / "frequency-baseline.yaml"), "--out", str(out), "--data-root",
                 str(data_root), "--set", "eval.progress=false"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert {"mrr", "mr", "hits@1", "hits@3", "hits@10"} <= m.keys()
    assert m["protocol"]["filter"] == "time" and m["protocol"]["ties"] == "realistic"
    assert set(m["splits"]) == {"valid", "test"} and 0 < m["mrr"] < 1
    assert "| frequency (test) |" in (out / "report.md").read_text()


def test_run_trains_a_trainable_model(data_root, tmp_path):
    out = tmp_path / "quick"
    assert main(["run", str(REPO / "configs" / "quickstart.yaml"), "--out", str(out), "--data-root", str(data_root),
                 "--set", "model.args.dim=6", "--set", "train.epochs=1", "--set", "train.batch_size=4000",
                 "--set", "train.progress=false", "--set", "eval.progress=false",
                 "--set", "pipeline.students={}"]) == 0  # the teacher alone; tests/test_pipeline.py has the rest
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == "tadistmult" and m["dim"] == 6 and m["epochs_run"] == 1
    report = (out / "report.md").read_text()
    assert "curves.png" in report and "filter=time" in report
    assert (out / "curves.png").is_file() and (out / "config.yaml").is_file()


def test_a_folder_another_live_process_trains_is_refused(tmp_path, capsys):
    """Two `distkg train` on one --out: the second stops with one line (OUT/claim names the first) and
    writes nothing; once that process is gone, its claim is taken over and the run trains."""
    import socket

    from tests.runtime.conftest import write_tiny_icews

    data = write_tiny_icews(tmp_path / "data")
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--data-root", str(data), "--set", "data.dataset=icews14", "--set",
            "model.name=tadistmult", "--set", "model.args.dim=4", "--set", "train.epochs=1", "--set", "train.progress=false",
            "--set", "eval.progress=false"]
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        out.mkdir()
        (out / "claim").write_text(f"{socket.gethostname()} {other.pid}")
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"being trained by another process ({socket.gethostname()} {other.pid})" in err[0]
        assert sorted(p.name for p in out.iterdir()) == ["claim"]  # nothing written
    finally:
        other.kill()
        other.wait()
    assert main(args) == 0  # the holder is gone: its claim is taken over
    assert (out / "metrics.json").is_file() and not (out / "claim").exists()  # released at the end
