"""``distkg llm train`` with ``runtime.backend: ray``: a Ray Train job under DeepSpeed ZeRO
(``runtime.zero_stage``) over the LoRA and head parameters, on the runner of distkg.runtime.raytrain."""

from __future__ import annotations

from pathlib import Path

from distkg.config import RunConfig, to_dict
from distkg.llm.rounds import check_workers
from distkg.runfolder import prepare_folder
from distkg.runtime.raytrain import absolute, ray_session, run_workers, worker_setup, written_metrics


def _train_teacher_worker(config: dict) -> dict:
    from distkg.llm.train import train_teacher

    return train_teacher(worker_setup(config), Path(config["out"]), checked=True, written=True)  # the driver wrote OUT


def train_teacher_on_ray(cfg: RunConfig, out: Path, restart: bool = False) -> dict:
    """`distkg llm train` as a Ray Train job: ``runtime.workers`` workers, DeepSpeed ZeRO
    (``runtime.zero_stage``) over the LoRA and head parameters; rank 0 saves and evaluates. OUT is
    prepared here, before Ray starts (``restart`` clears it); the workers resume in it."""
    cfg, out, runtime_cfg = absolute(cfg), out.resolve(), cfg.runtime
    check_workers(cfg)
    prepare_folder(cfg, out, "llm", restart=restart)
    with ray_session(runtime_cfg, []):
        result = run_workers(_train_teacher_worker, {"cfg": to_dict(cfg), "out": str(out)}, runtime_cfg, out, "llm-train")
    return written_metrics(out, result)
