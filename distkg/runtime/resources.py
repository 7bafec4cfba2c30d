"""Before any actor or worker is placed: can the Ray cluster hold what the config asks for?

Why: Ray waits without end for resources that never come. A scoring actor stays pending, and Ray
Train retries "worker group startup timed out" every 60 s (the laptop path's 2 scoring actors x 1
CPU plus 1 worker x 1 CPU on a 2-CPU machine hung so, printing nothing). So the demand of the
config (``runtime.teacher_actors`` x ``runtime.teacher_resources`` per scoring pool, plus
``runtime.workers`` x ``runtime.worker_resources``) is compared with the cluster's totals first,
and a run that cannot fit stops within seconds naming each resource. A local Ray (the laptop
path) is sized to the run instead: it declares at least the CPUs the run asks for.
The check is on totals: it catches every run that cannot fit anywhere, not one whose resources
exist but are split across nodes so that no node holds one actor's share.
"""

from __future__ import annotations

import logging
import math
import os

from distkg.config import RunConfig, RuntimeConfig
from distkg.errors import DistkgError

log = logging.getLogger("distkg")


def tp_degree(runtime_cfg: RuntimeConfig, kind: str) -> int:
    """Actors a shard of a ``kind`` pool is: ``runtime.tp_size`` for an LLM teacher, 1 for a KG model
    (distkg.runtime.pool.ScoringShard)."""
    return runtime_cfg.tp_size if kind == "llm" else 1


def demand(runtime_cfg: RuntimeConfig, pools: list[str]) -> tuple[dict[str, float], list[str]]:
    """Total resources the run asks for, and one line per group of actors or workers (for messages)."""
    total: dict[str, float] = {}
    groups = []
    for name in pools:  # the "llm" pool's shard is runtime.tp_size actors
        count = runtime_cfg.teacher_actors * tp_degree(runtime_cfg, name)
        what = f"{runtime_cfg.teacher_actors} {name} scoring actor(s)" + (f" x tp_size {runtime_cfg.tp_size}" if count > runtime_cfg.teacher_actors else "")
        groups.append((what, count, runtime_cfg.teacher_resources))
    groups.append((f"{runtime_cfg.workers} Ray Train worker(s)", runtime_cfg.workers, runtime_cfg.worker_resources))
    for _, count, each in groups:
        for key, amount in each.items():
            total[key] = total.get(key, 0.0) + count * amount
    return total, [f"{what} x {each}" for what, _, each in groups]


def shortfall(need: dict[str, float], have: dict[str, float]) -> dict[str, tuple[float, float]]:
    """{resource: (asked, available)} for each resource the cluster has too little of."""
    return {k: (v, have.get(k, 0.0)) for k, v in need.items() if v > 0 and have.get(k, 0.0) + 1e-9 < v}


def local_cpus(runtime_cfg: RuntimeConfig, pools: list[str]) -> int | None:
    """The CPUs a local Ray declares: ``runtime.num_cpus``, else this machine's, raised to the run's
    demand (Ray's CPUs are an accounting unit; the actors and workers then share the cores)."""
    if runtime_cfg.num_cpus is not None or runtime_cfg.address or os.environ.get("RAY_ADDRESS"):
        return runtime_cfg.num_cpus  # a cluster's CPUs are its own
    machine = os.cpu_count() or 1
    need = math.ceil(demand(runtime_cfg, pools)[0].get("CPU", 0.0))
    if need > machine:
        log.info("local Ray: the run asks for %d CPUs on a %d-CPU machine; declaring %d so every actor and worker "
                 "is placed (they share the cores; runtime.num_cpus overrides)", need, machine, need)
    return max(machine, need)


def check_fits(runtime_cfg: RuntimeConfig, pools: list[str]) -> None:
    """Stop with a DistkgError naming the resources when the connected Ray cluster cannot hold the run."""
    import ray

    need, groups = demand(runtime_cfg, pools)
    short = shortfall(need, ray.cluster_resources())
    if short:
        missing = ", ".join(f"{k}: asks for {a:g}, the cluster has {h:g}" for k, (a, h) in short.items())
        raise DistkgError(
            f"the Ray cluster cannot hold this run ({missing}); it asks for {' + '.join(groups)}. Lower "
            "runtime.teacher_actors / runtime.workers or their resources (runtime.teacher_resources, "
            "runtime.worker_resources), or give the cluster more (runtime.num_cpus for a local Ray, "
            "--resources on `ray start` for a cluster)")
    log.info("Ray resources: the run asks for %s of the cluster's %s", need,
             {k: v for k, v in ray.cluster_resources().items() if k in need})


def on_resources(cfg: RunConfig, resources: dict[str, float]) -> RunConfig:
    """``cfg`` with its devices set for a Ray actor or worker that declared ``resources``: ``cuda``
    when it asked for a GPU (Ray then shows it only its own), ``cpu`` when it asked for none, so a
    CPU actor on a GPU node never computes on a card the scheduler gave to someone else."""
    import dataclasses

    choice = "cuda" if resources.get("GPU", 0) > 0 else "cpu"
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=choice),
                               llm=dataclasses.replace(cfg.llm, device=choice))
