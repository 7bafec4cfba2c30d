"""Ray never waits for resources that cannot come: the demand of a config is checked against the
cluster before any actor or worker is placed, and the laptop path sizes its local Ray to the run."""

from __future__ import annotations

import time

import pytest

from distkg.config import load_config
from distkg.errors import DistkgError
from distkg.runtime import resources
from distkg.runtime.resources import demand, local_cpus, shortfall

LAPTOP = load_config(["configs/runtime/local-ray.yaml"]).runtime


def test_the_laptop_path_asks_for_three_cpus_and_a_local_ray_declares_them(monkeypatch):
    need, groups = demand(LAPTOP, ["llm"])
    assert need == {"CPU": 3.0} and groups == ["2 llm scoring actor(s) x {'CPU': 1.0}", "1 Ray Train worker(s) x {'CPU': 1.0}"]
    assert shortfall(need, {"CPU": 2.0}) == {"CPU": (3.0, 2.0)} and shortfall(need, {"CPU": 3.0}) == {}
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(resources.os, "cpu_count", lambda: 2)  # the 2-core machine of the issue
    assert local_cpus(LAPTOP, ["llm"]) == 3
    monkeypatch.setattr(resources.os, "cpu_count", lambda: 16)
    assert local_cpus(LAPTOP, ["llm"]) == 16
    assert shortfall({"GPU": 2.0, "teacher": 1.0}, {"CPU": 8.0, "teacher": 4.0}) == {"GPU": (2.0, 0.0)}


def test_a_run_the_local_ray_cannot_hold_stops_within_seconds(tiny_runs):
    """runtime.num_cpus=2 with 2 actors + 1 worker of 1 CPU each hung forever before this check."""
    import ray

    from distkg.runtime.students import distill_on_ray

    cfg = tiny_runs.student("ours", "distill.stages.0.epochs=1", "distill.stages.1.epochs=1", "runtime.backend=ray",
                            "runtime.num_cpus=2")
    connected = ray.is_initialized()  # to the session's loopback cluster (2 CPUs too) when test_students ran first
    started = time.monotonic()
    with pytest.raises(DistkgError, match=r"cannot hold this run \(CPU: asks for 3, the cluster has 2\).*2 llm scoring"):
        distill_on_ray(cfg, tiny_runs.data.parent / "no-room")
    assert time.monotonic() - started < 60
    assert ray.is_initialized() == connected  # a local Ray started for the run was stopped, a joined one left
