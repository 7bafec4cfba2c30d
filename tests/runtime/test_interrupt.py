"""Ctrl-C stops a Ray run: the command exits (rc 130) within seconds, the local Ray it started goes
with it (before, Ray Train's own SIGINT handler only asked its controller to abort, which a worker
group waiting for resources never did, and the command hung), and the same command resumes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from distkg.config import save_config

REPO = Path(__file__).resolve().parents[2]


def _command(cfg_file: Path, out: Path, env: dict) -> subprocess.Popen:
    # SIGINT at its default in the child, as a terminal gives a foreground command: a suite started as
    # a shell's background job inherits SIGINT ignored, and Python then installs no Ctrl-C handler
    return subprocess.Popen([sys.executable, "-m", "distkg", "distill", "--config", str(cfg_file), "--out", str(out)],
                            cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_ctrl_c_then_the_same_command_resumes_bit_identically(tiny_runs, tmp_path):
    """Issue 33 item 1: a Ray run stopped by Ctrl-C after its first epochs, then the identical command
    line: it resumes (the devices a worker resolved are not part of the folder's config) and ends
    with the metrics and losses of an uninterrupted run, bit for bit at one thread."""
    cfg = tiny_runs.student("ours", "distill.stages.0.epochs=8", "distill.stages.1.epochs=8", "train.patience=10000",
                            "runtime.backend=ray", "runtime.teacher_actors=1", "runtime.num_cpus=2")
    assert cfg.train.device == "auto"  # what the command says; a worker resolves it to cpu
    save_config(cfg, tmp_path / "job.yaml")
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    proc = _command(tmp_path / "job.yaml", out, env)
    try:
        deadline = time.monotonic() + 240
        while len(list((out / "checkpoints").glob("epoch_*.pt"))) < 2:  # two epochs done, more to come
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
            time.sleep(0.05)
        ray_processes = psutil.Process(proc.pid).children(recursive=True)
        assert ray_processes
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        assert "distkg: interrupted" in proc.stderr.read()
        # the local Ray it started goes with it
        gone, alive = psutil.wait_procs(ray_processes, timeout=30)
        assert not [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], alive
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "metrics.json").exists()  # stopped before the end: the next command resumes
    for folder in (out, tmp_path / "straight"):  # the same command again; an uninterrupted run
        proc = _command(tmp_path / "job.yaml", folder, env)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    losses = [[json.loads(line)["loss"] for line in (f / "log.jsonl").read_text().splitlines()]
              for f in (out, tmp_path / "straight")]
    assert len(losses[0]) == 16 and losses[0] == losses[1]
    metrics = [_timeless(json.loads((f / "metrics.json").read_text())) for f in (out, tmp_path / "straight")]
    assert metrics[0] == metrics[1] and metrics[0]["mrr"] > 0


def _timeless(value):
    """A metrics.json without its wall times (keys naming seconds)."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value
