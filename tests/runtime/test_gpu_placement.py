"""Ray on GPUs, checked on a CPU machine by declaring GPUs to Ray (``ray.init(num_gpus=N)``): the
scoring actors' and student workers' resource requests, fractional GPUs sharing a card, the
process-group backend, and the device each actor or worker then resolves.

What this cannot check without a GPU (stated in cluster/SCALING.md): that CUDA kernels run in the
actors, that NCCL all-reduces between GPU workers, and the speed of any of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from distkg.config import RuntimeConfig, load_config
from distkg.runtime.resources import on_resources
from distkg.runtime.raytrain import worker_scaling
from tests.conftest import REPO

PROBE = r"""
import json, os, sys
from distkg.runtime.cluster import LOOPBACK, keep_on_loopback
keep_on_loopback()
import ray
from distkg.config import load_config
from distkg.runtime.pool import actor_options

cfg = load_config(sys.argv[1])
ray.init(address="local", num_cpus=32, num_gpus=int(sys.argv[2]), include_dashboard=False, _node_ip_address=LOOPBACK,
         logging_level="ERROR")

@ray.remote
class Probe:
    def where(self):
        return {"gpu_ids": [str(g) for g in ray.get_gpu_ids()], "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}

rc = cfg.runtime
options = {"teacher": actor_options(rc.teacher_resources), "worker": actor_options(rc.worker_resources)}
pools = 2 if rc.kg_teacher == "pool" else 1  # the LLM pool, and the KG teacher's pool when it is served too
actors = [Probe.options(**options["teacher"]).remote() for _ in range(pools * rc.teacher_actors)]
actors += [Probe.options(**options["worker"]).remote() for _ in range(rc.workers)]
ready, pending = ray.wait([a.where.remote() for a in actors], num_returns=len(actors), timeout=150)
extra = Probe.options(**options["teacher"]).remote()  # one more than the declared GPUs hold
fits, _ = ray.wait([extra.where.remote()], timeout=3)
print(json.dumps({"placed": [ray.get(r) for r in ready], "pending": len(pending), "extra_placed": len(fits),
                  "teachers": pools * rc.teacher_actors}))
ray.shutdown()
"""


def place(config, gpus: int) -> dict:
    """Start a local Ray declaring ``gpus`` GPUs (and 32 CPUs), place probe actors as ``config`` would, report where."""
    # a Ray of its own even while the suite's loopback cluster runs (its RAY_ADDRESS is not inherited)
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHONPATH": str(REPO),
           "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-c", PROBE, str(config), str(gpus)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cluster_gpu_config_fills_eight_gpus_exactly():
    """configs/runtime/cluster-gpu.yaml: the LLM and KG pools share four cards (0.5 each), four student
    workers take one card each; all of it fits 8 GPUs, and nothing more does."""
    got = place(REPO / "configs" / "runtime" / "cluster-gpu.yaml", gpus=8)
    assert got["pending"] == 0 and got["extra_placed"] == 0
    teachers, workers = got["placed"][: got["teachers"]], got["placed"][got["teachers"]:]
    assert all(len(p["gpu_ids"]) == 1 and p["visible"] == p["gpu_ids"][0] for p in got["placed"])
    shared = [p["gpu_ids"][0] for p in teachers]
    assert sorted(shared.count(g) for g in set(shared)) == [2, 2, 2, 2]  # fractional: two actors a card
    assert not set(shared) & {p["gpu_ids"][0] for p in workers}  # students have cards of their own
    assert len({p["gpu_ids"][0] for p in workers}) == 4


def test_worker_backend_and_devices_follow_the_declared_resources():
    gpu = RuntimeConfig(workers=4, worker_resources={"CPU": 2, "GPU": 0.5})
    assert worker_scaling(gpu) == {"num_workers": 4, "use_gpu": True, "resources_per_worker": {"CPU": 2, "GPU": 0.5},
                                   "backend": "nccl"}
    cpu = RuntimeConfig(workers=2, worker_resources={"CPU": 1, "GPU": 0})
    assert worker_scaling(cpu) == {"num_workers": 2, "use_gpu": False, "resources_per_worker": {"CPU": 1},
                                   "backend": "gloo"}
    cfg = load_config(None)
    on_gpu, on_cpu = on_resources(cfg, {"GPU": 0.25}), on_resources(cfg, {"CPU": 1})
    assert (on_gpu.train.device, on_gpu.llm.device, on_cpu.train.device, on_cpu.llm.device) == ("cuda", "cuda", "cpu", "cpu")


@pytest.mark.parametrize("resources", [{"GPU": 0.5, "CPU": 1}])
def test_fractional_actors_share_a_declared_gpu(tmp_path, resources):
    cfg = tmp_path / "rt.yaml"
    cfg.write_text(json.dumps({"runtime": {"backend": "ray", "teacher_actors": 4, "teacher_resources": resources,
                                           "workers": 1, "worker_resources": {"CPU": 1}, "kg_teacher": "local"}}))
    got = place(cfg, gpus=2)
    assert got["pending"] == 0 and got["extra_placed"] == 0
    ids = [p["gpu_ids"][0] for p in got["placed"][: got["teachers"]]]
    assert sorted(ids) == ["0", "0", "1", "1"]
    assert got["placed"][-1]["gpu_ids"] == []  # a worker that asked for no GPU gets none
