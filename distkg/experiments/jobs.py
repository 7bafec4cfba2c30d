"""``distkg reproduce --jobs N``: one grid run by N one-thread worker processes that split its parts
by claims (distkg.experiments.claims), and how many such workers a machine should get."""

from __future__ import annotations

import logging
import os

log = logging.getLogger("distkg")

SMALL_MACHINE_CORES = 8  # up to this many cores, a grid runs as one 1-thread process per core


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_jobs(cores: int | None = None) -> int:
    """Processes for ``distkg reproduce --jobs auto``: one per core on a small machine, where a 25-d
    student's step is too small to keep two threads busy (two 1-thread cells finish sooner than two
    2-thread cells in turn); one process with every thread on a larger one."""
    cores = usable_cores() if cores is None else cores
    return cores if cores <= SMALL_MACHINE_CORES else 1


def worker_command(config: str, out: str, sets: list[str], data_root: str | None) -> list[str]:
    """The command of one ``--jobs`` worker: the same grid, one process, claims deciding its cells."""
    import sys

    cmd = [sys.executable, "-m", "distkg", "reproduce", "--config", config, "--out", out, "--jobs", "1"]
    for item in sets:
        cmd += ["--set", item]
    return cmd + (["--data-root", data_root] if data_root else [])


def run_jobs(jobs: int, config: str, out: str, sets: list[str], data_root: str | None) -> int:
    """Run a grid as ``jobs`` 1-thread worker processes (they split it by claims, teachers
    included) and wait for them; the worst exit status. The caller writes the report after."""
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log.info("running the grid as %d one-thread processes (--jobs)", jobs)
    workers = [subprocess.Popen(worker_command(config, out, sets, data_root), env=env) for _ in range(jobs)]
    try:
        return max(w.wait() for w in workers)
    finally:
        for w in workers:  # interrupted: stop the workers this process started (their claims free up)
            if w.poll() is None:
                w.terminate()
