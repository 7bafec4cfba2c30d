"""The Rays distkg starts: their workers run at the driver's priority (Ray's default niceness 15
starved them on a shared machine), and a loopback cluster's ``stop`` ends its own processes and
leaves every other Ray on the machine running (``ray stop`` would end them all)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

from distkg.runtime.cluster import LoopbackCluster

REPO = Path(__file__).resolve().parents[2]
NICENESS = "import os, ray\nprint('niceness', ray.get(ray.remote(lambda: os.nice(0)).options(num_cpus=0).remote()))\n"


def run_driver(code: str, env: dict) -> str:
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_local_ray_runs_its_workers_at_the_drivers_priority():
    env = {k: v for k, v in LoopbackCluster.env().items() if k not in ("RAY_ADDRESS", "RAY_worker_niceness")}
    out = run_driver("from distkg.runtime.cluster import connect\nassert connect(None, num_cpus=1)\n" + NICENESS, env)
    assert "niceness 0" in out, out


def test_a_loopback_cluster_stops_its_own_processes_and_no_other_ray(tmp_path):
    # a bystander: another Ray on the machine, as CI's or another user's would be
    env = {k: v for k, v in LoopbackCluster.env().items() if k != "RAY_ADDRESS"}
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import ray, time\nray.init(address='local', num_cpus=1, include_dashboard=False, "
         "_node_ip_address='127.0.0.1')\nprint('up', flush=True)\ntime.sleep(600)\n"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert bystander.stdout.readline().strip() == "up"
        others = psutil.Process(bystander.pid).children(recursive=True)
        assert others
        cluster = LoopbackCluster([{"teacher": 1}], cpus=1).start()
        try:
            assert "niceness 0" in run_driver(f"import ray\nray.init(address='{cluster.address}')\n" + NICENESS, cluster.env())
            mine = cluster.processes()
            assert mine and not {p.pid for p in mine} & {p.pid for p in others}
            # the head's Ray Client server is one of them (its command line names only the GCS address)
            assert any("ray.util.client.server" in " ".join(p.cmdline()) for p in mine)
        finally:
            cluster.stop()
        gone, alive = psutil.wait_procs(mine, timeout=30)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
        assert not cluster.temp_dir.exists()
        time.sleep(1)
        assert bystander.poll() is None and all(p.is_running() for p in others)
    finally:
        for p in psutil.Process(bystander.pid).children(recursive=True):
            p.kill()
        bystander.kill()
        bystander.wait()


def test_ray_stop_does_not_end_itself(tmp_path):
    """`distkg ray-stop --temp-dir DIR` names DIR on its own command line, as the Ray processes it
    ends do: it ended itself (rc 143) before its head's processes (README lane)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "distkg", "ray-stop", "--temp-dir", str(tmp_path / "no-ray-here"),
                           "--port", "6399"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stopped 0 processes" in proc.stdout
