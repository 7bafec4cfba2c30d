"""Connecting to Ray: a local Ray on 127.0.0.1 (the laptop path), or a cluster (the cluster path).

Why the environment variable: Ray replaces 127.0.0.1 with the machine's own interface address
unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set *before ray is imported* (ray_constants reads
it at import). On the machines this project is tested on, Ray traffic must stay on loopback, so
every local or loopback connection sets it first; a real cluster address leaves it alone.

``LoopbackCluster`` starts a real multi-node Ray on one machine (a head and further nodes, each a
``ray start`` on 127.0.0.1 with its own custom resources) for tests and benchmarks, and stops it.
A second node cannot be started with ``ray start`` under that variable (the CLI refuses multi-node
there), so those nodes are started through ``python -m distkg.runtime.cluster start ...``, which
is ``ray start`` with only that refusal lifted. Its processes run with ``RAY_AUTH_MODE=disabled``
unless the caller set a mode: a local ``ray.init`` writes ~/.ray/auth_token, after which a plain
``ray start --head`` turns token auth on while a joining node does not send the token.

Why worker niceness 0: Ray starts its workers (actors, Ray Train workers) at niceness 15, so on a
machine shared with any other work they get almost no CPU: a scoring actor beside three busy
processes on 2 cores imported torch at 2.7% of a core and the run had not started after 4 minutes.
Here the workers do the run's work, so a Ray that distkg starts (local, or a loopback cluster) runs
them at the driver's priority. A cluster started elsewhere keeps its own setting (cluster/SCALING.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from distkg.errors import DistkgError

log = logging.getLogger("distkg")

LOOPBACK = "127.0.0.1"
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
WORKER_NICENESS = 0  # module docstring


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on ``host`` now (the OS's choice; "" for every interface)."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def is_loopback(address: str | None) -> bool:
    """True for a local Ray (None) or an address on 127.0.0.1/localhost."""
    if address is None:
        return True
    host = address.split("://")[-1].split(":")[0]
    return host in (LOOPBACK, "localhost")


def keep_on_loopback() -> None:
    """Set the variables that keep Ray on 127.0.0.1; must run before the first ``import ray``."""
    if "ray._private.ray_constants" in sys.modules:  # imported before this call: correct the value it read
        sys.modules["ray._private.ray_constants"].ENABLE_RAY_CLUSTER = False
    os.environ.update(LOOPBACK_ENV)


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect this process to Ray; returns True when it started a local Ray (the caller shuts it
    down). Inside ``ray job submit`` RAY_ADDRESS is set and wins over ``address=None``."""
    from distkg.extras import require

    require("ray", "Ray (runtime.backend: ray, distkg reproduce --jobs, a Ray Train job)")
    address = address or os.environ.get("RAY_ADDRESS")
    if is_loopback(address):
        keep_on_loopback()
    import ray

    if ray.is_initialized():
        return False
    if address is None:
        # the dashboard (on 127.0.0.1) serves the state API that Ray Train's controller polls;
        # address "local": a new Ray of this command's own, not a `ray start` cluster found on the machine
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host=LOOPBACK, _node_ip_address=LOOPBACK,
                 logging_level=logging.WARNING, log_to_driver=True, _system_config={"worker_niceness": WORKER_NICENESS})
        return True
    ray.init(address=address, logging_level=logging.WARNING)
    return False


@dataclass
class LoopbackCluster:
    """A real Ray cluster of several nodes on 127.0.0.1 (tests, benchmarks), started and stopped here.

    ``nodes``: one dict of custom resources per node (the first is the head), e.g.
    ``[{"teacher": 2}, {"student": 2}]``; ``cpus``: CPUs each node declares. ``temp_dir``: the
    nodes' Ray temp dir (None: a new one, removed by ``stop``); ``stop`` ends the processes that
    name it, and only those.
    """

    nodes: list[dict[str, float]]
    cpus: int = 1
    port: int | None = None  # the GCS port; None: a free one (two clusters on one machine do not meet)
    dashboard_port: int | None = None  # None: a free one
    temp_dir: Path | None = None
    made_temp_dir: bool = False

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        self.dashboard_port = self.dashboard_port or free_port()

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    @staticmethod
    def env() -> dict[str, str]:
        """Environment of the cluster's processes and of the clients that talk to it."""
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        # PATH: a job's `python` entrypoint runs with the PATH of the process that ran `ray start`
        return {"RAY_AUTH_MODE": "disabled", **os.environ, **LOOPBACK_ENV, "PATH": path,
                "RAY_worker_niceness": str(WORKER_NICENESS)}

    def _ray(self, *args: str, head: bool = False) -> subprocess.CompletedProcess:
        """The head through the plain ``ray`` CLI, further nodes through this module (docstring)."""
        env = self.env()
        cmd = [_ray_cli(), *args] if head else [sys.executable, "-m", "distkg.runtime.cluster", *args]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            raise DistkgError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        return done

    def start(self) -> LoopbackCluster:
        head, *others = self.nodes
        if self.temp_dir is None:  # short: Ray's socket paths under it must stay under 108 characters
            self.temp_dir = Path(tempfile.mkdtemp(prefix="distkg-ray-"))
            self.made_temp_dir = True
        extra = ["--temp-dir", str(self.temp_dir)]
        self._ray("start", "--head", "--node-ip-address", LOOPBACK, "--port", str(self.port),
                  "--dashboard-host", LOOPBACK, "--dashboard-port", str(self.dashboard_port),
                  "--num-cpus", str(self.cpus), "--resources", json.dumps(head), "--disable-usage-stats",
                  "--ray-client-server-port", str(free_port()), *extra, head=True)
        for resources in others:
            self._ray("start", "--address", self.address, "--node-ip-address", LOOPBACK, "--num-cpus",
                      str(self.cpus), "--resources", json.dumps(resources), "--disable-usage-stats", *extra)
        self._wait_for_nodes()
        return self

    def _wait_for_nodes(self, timeout: float = 60) -> None:
        code = (f"import ray; ray.init(address='{self.address}', logging_level='ERROR'); "
                "print(sum(n['Alive'] for n in ray.nodes()))")
        deadline = time.monotonic() + timeout
        while True:
            out = subprocess.run([sys.executable, "-c", code], env=self.env(),
                                 capture_output=True, text=True, timeout=120)
            alive = int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0
            if alive >= len(self.nodes):
                return
            if time.monotonic() > deadline:
                raise DistkgError(f"Ray loopback cluster: {alive} of {len(self.nodes)} nodes up after {timeout}s")
            time.sleep(1)

    def processes(self) -> list:
        """This cluster's processes: those whose command line names its temp dir (GCS, raylets,
        dashboard, monitors) or its GCS address (the Ray Client server), and all their children
        (workers, agents: their titles drop the path)."""
        import psutil

        if self.temp_dir is None:
            return []
        # the temp dir names the GCS, raylets, dashboard and monitors; the Ray Client server of the head
        # (started by `ray start`, orphaned when it exits) names only the cluster's GCS address
        marks = (str(self.temp_dir), f"--address={self.address}")
        me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}  # `distkg ray-stop --temp-dir DIR` names it too
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if proc.pid not in me and any(mark in arg for arg in proc.info["cmdline"] or () for mark in marks):
                    for p in [proc, *proc.children(recursive=True)]:
                        found[p.pid] = p
            except psutil.Error:
                continue
        return list(found.values())

    def stop(self, timeout: float = 30) -> None:
        """End this cluster's processes (``processes``: SIGTERM, then SIGKILL after ``timeout``), then
        the temp dir it made. Not ``ray stop``, which ends every Ray on the machine, other users' too."""
        import psutil

        procs = self.processes()
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=timeout)
        if self.made_temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LoopbackCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _ray_cli() -> str:
    """The ``ray`` script of this Python's environment (a job's workers use the Python that ran it)."""
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else "ray"


def _ray_start_cli(argv: list[str]) -> int:
    """``ray start`` with the multi-node refusal lifted, for nodes on loopback (module docstring).

    Only the CLI's own check sees the lifted value; the node's addresses still come from
    ray_constants, which keeps them on 127.0.0.1.
    """
    import types

    keep_on_loopback()
    import ray._private.ray_constants as rc
    import ray.scripts.scripts as scripts

    proxy = types.ModuleType("ray_constants_for_cli")
    proxy.__dict__.update(rc.__dict__)
    proxy.ENABLE_RAY_CLUSTER = True
    scripts.ray_constants = proxy
    sys.argv = ["ray", *argv]
    try:
        scripts.main()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(_ray_start_cli(sys.argv[1:]))
