"""The Ray Train runner of distkg's jobs on Ray (the students of distkg.runtime.students, the LLM's
fine-tuning of distkg.runtime.finetune): a Ray session sized and checked for the run, workers with
their resources and process group, restarts on failure, and Ctrl-C that stops it all.

Paths (OUT, teacher runs, the data root) are made absolute here, because workers and actors do
not share the driver's working directory; on a multi-node cluster OUT must be on a shared
filesystem (cluster/SCALING.md).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from contextlib import contextmanager
from pathlib import Path

from distkg.config import RunConfig, build
from distkg.data import resolve_data_root
from distkg.errors import DistkgError
from distkg.runfolder import read_metrics
from distkg.runtime.cluster import connect
from distkg.runtime.resources import check_fits, local_cpus, on_resources

log = logging.getLogger("distkg")


def absolute(cfg: RunConfig) -> RunConfig:
    """The config with every path the workers read made absolute."""
    distill_cfg = cfg.distill
    distill = dataclasses.replace(distill_cfg, teacher_run=distill_cfg.teacher_run and str(Path(distill_cfg.teacher_run).resolve()),
                                  llm_run=distill_cfg.llm_run and str(Path(distill_cfg.llm_run).resolve()))
    data = dataclasses.replace(cfg.data, root=str(resolve_data_root(cfg.data.root).resolve()))
    return dataclasses.replace(cfg, distill=distill, data=data)


@contextmanager
def ray_session(runtime_cfg, pools: list[str]):
    """Connected to Ray for the block, which runs only when the cluster can hold the run's ``pools``
    and workers (distkg.runtime.resources); a local Ray started here is shut down after it, also
    when the block is interrupted (Ctrl-C)."""
    started = connect(runtime_cfg.address, local_cpus(runtime_cfg, pools))
    try:
        check_fits(runtime_cfg, pools)
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def written_metrics(out: Path) -> dict:
    metrics = read_metrics(out)
    if metrics is None:
        raise DistkgError(f"{out}: the Ray Train workers finished but wrote no metrics.json")
    return metrics


def worker_setup(config: dict) -> RunConfig:
    """A Ray Train worker's threads (its CPU share) and log format; the run config it was sent."""
    import torch

    from distkg.allocator import apply_heap_settings

    apply_heap_settings()  # a process distkg runs (distkg.allocator)
    torch.set_num_threads(max(1, int(config["threads"])))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = build(RunConfig, config["cfg"])
    return on_resources(cfg, cfg.runtime.worker_resources)  # a worker computes where Ray placed it


def worker_scaling(runtime_cfg) -> dict:
    """How Ray Train runs the workers of ``runtime``: the resources each declares (a GPU fraction
    included: {GPU: 0.5} puts two workers on one card), whether they get GPUs, and the process
    group's backend: NCCL when the workers have GPUs, gloo otherwise."""
    resources = {k: v for k, v in runtime_cfg.worker_resources.items() if k != "GPU" or v > 0}
    use_gpu = "GPU" in resources
    return {"num_workers": runtime_cfg.workers, "use_gpu": use_gpu, "resources_per_worker": resources,
            "backend": "nccl" if use_gpu else "gloo"}


def run_workers(fn, config: dict, runtime_cfg, out: Path, name: str) -> None:
    """``fn(config)`` on ``runtime.workers`` Ray Train workers (worker_scaling: their resources and
    process group), restarted up to ``runtime.max_failures`` times; Ray Train state in OUT/ray."""
    from ray.train import FailureConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    scaling = worker_scaling(runtime_cfg)
    backend = scaling.pop("backend")
    trainer = TorchTrainer(
        fn, train_loop_config={**config, "threads": scaling["resources_per_worker"].get("CPU", 1)},
        scaling_config=ScalingConfig(**scaling), torch_config=TorchConfig(backend=backend),
        run_config=RayRunConfig(name=name, storage_path=str(out / "ray"),
                                # controller failures (a worker group that cannot start) are bounded
                                # too: Ray's default retries them without end
                                failure_config=FailureConfig(max_failures=runtime_cfg.max_failures,
                                                             controller_failure_limit=runtime_cfg.max_failures)))
    report = out / "ray" / f"{name}-error.log"
    try:
        result = interruptible(trainer.fit)
    except Exception as e:
        if not type(e).__module__.startswith("ray."):
            raise
        raise DistkgError(ray_failure(e, report, f"the Ray Train {name} workers")) from None
    if result.error is not None:
        raise DistkgError(ray_failure(result.error, report, f"the Ray Train {name} workers"))


def ray_failure(error: BaseException, log_file: Path, who: str) -> str:
    """One line for an error raised inside Ray processes (a worker group, a pool's actors): their own
    error (the last ``Name: message`` line of what Ray reports, a DistkgError's message as distkg
    words it), Ray's whole report, tracebacks included, in ``log_file``."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # Ray colours its process names
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_text(f"{type(error).__name__}: {text}\n")
    causes = re.findall(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception|Exit|Interrupt)): (.+)$", text, flags=re.M)
    if causes:
        cause = f"{causes[-1][0]}: {causes[-1][1].strip()}"
    else:
        cause = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return f"{who} failed: {cause} (Ray's report: {log_file})"


def interruptible(fit):
    """``fit()`` in a thread, so that Ctrl-C reaches this (main) thread and stops the run: Ray Train's
    own handler, installed when fit runs in the main thread, only asks its controller to abort, which
    a worker group still waiting for resources never does. The caller's ``ray_session`` then shuts
    the local Ray down (the workers and actors with it)."""
    box: dict = {}

    def target() -> None:
        try:
            box["result"] = fit()
        except BaseException as e:  # handed to the main thread
            box["error"] = e

    thread = threading.Thread(target=target, name="ray-train-fit", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        log.warning("interrupted: stopping the Ray Train workers, the scoring actors and a local Ray")
        raise
    if "error" in box:
        raise box["error"]
    return box["result"]
