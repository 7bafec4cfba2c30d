"""The Ray Train runner of distkg's jobs on Ray (the students of distkg.runtime.students, the LLM's
fine-tuning of distkg.runtime.llm_train): a Ray session sized and checked for the run, workers with
their resources and process group, restarts on failure, and Ctrl-C that stops it all.

Paths (OUT, teacher runs, the data root) are made absolute here, because workers and actors do
not share the driver's working directory.

Checkpoints travel through Ray Train: after each round every worker reports the checkpoint files it
wrote (rank 0 the round's checkpoint and best.pt, each ZeRO rank its partition) to
``runtime.storage_path`` (default OUT/ray; NFS, s3://, gs:// as Ray Train's storage takes them), and a
restarted worker first copies the latest reported checkpoint into its OUT when it is newer than what
that OUT holds. So OUT may be node-local on a multi-node cluster: a worker restarted on another node
resumes from storage, and the run's final metrics reach the driver in Ray's result.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
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
    """The config with every path the workers read made absolute (a storage URI stays as it is)."""
    distill_cfg = cfg.distill
    distill = dataclasses.replace(distill_cfg, teacher_run=distill_cfg.teacher_run and str(Path(distill_cfg.teacher_run).resolve()),
                                  llm_run=distill_cfg.llm_run and str(Path(distill_cfg.llm_run).resolve()))
    data = dataclasses.replace(cfg.data, root=str(resolve_data_root(cfg.data.root).resolve()))
    storage = cfg.runtime.storage_path
    runtime = dataclasses.replace(cfg.runtime, storage_path=storage if not storage or "://" in storage
                                  else str(Path(storage).resolve()))
    return dataclasses.replace(cfg, distill=distill, data=data, runtime=runtime)


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


def written_metrics(out: Path, result=None) -> dict:
    """OUT/metrics.json; when rank 0 wrote it on another node's OUT, the copy it reported (Ray's result)."""
    from distkg.runfolder import write_metrics

    metrics = read_metrics(out)
    reported = (result.metrics or {}).get("final_metrics") if result is not None else None
    if metrics is None and reported:
        metrics = json.loads(reported)
        write_metrics(out, metrics)
    if metrics is None:
        raise DistkgError(f"{out}: the Ray Train workers finished but wrote no metrics.json")
    return metrics


_ROUND = re.compile(r"^[a-z]+_(\d{4})\.pt$")  # epoch_0003.pt, round_0003.pt (distkg.training.checkpoint)


def _newest_round(folder: Path) -> int:
    return max((int(m.group(1)) for p in folder.glob("*.pt") if (m := _ROUND.match(p.name))), default=0)


def restore_reported(out: Path) -> int:
    """Copy the latest checkpoint Ray Train holds for this run into OUT/checkpoints when it is newer than
    OUT's own (a worker restarted on a node whose OUT lacks it); the round restored, or 0. A restore is
    recorded in OUT/runtime/restored.json (the round, from where)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    folder = out / "checkpoints"
    with checkpoint.as_directory() as reported:
        reported = Path(reported)
        newest = _newest_round(reported)
        if newest <= _newest_round(folder):
            return 0
        for path in reported.rglob("*"):
            if path.is_file():
                target = folder / path.relative_to(reported)
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")  # workers of one node restore side by side
                shutil.copyfile(path, tmp)
                tmp.replace(target)
    log.info("restored round %d from Ray Train's storage into %s", newest, folder)
    record = out / "runtime" / f"restored.json.{os.getpid()}.tmp"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"round": newest, "from": str(getattr(checkpoint, "path", ""))}) + "\n")
    record.replace(out / "runtime" / "restored.json")
    return newest


class Reporter:
    """The round hook of a Ray Train worker (distkg.training.loop.on_rounds): report the files this rank
    wrote for the round, with the round's numbers; every rank reports each round (Ray Train's report is
    a barrier), ranks without files with no checkpoint."""

    def __init__(self, out: Path, rank: int) -> None:
        self.folder, self.rank = out / "checkpoints", rank
        self.staging = out / "runtime" / f"report-{rank}"  # beside OUT's files: hard links, not copies

    def files(self, round_: int) -> list[Path]:
        mine = list(self.folder.glob(f"zero/*_{round_:04d}.rank{self.rank}-of-*.pt"))
        if self.rank == 0:
            mine += [p for p in self.folder.glob(f"*_{round_:04d}.pt")] + [p for p in [self.folder / "best.pt"] if p.is_file()]
        return mine

    def __call__(self, round_: int, row: dict) -> None:
        import ray.train

        metrics = {k: v for k, v in row.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        files = self.files(round_)
        if not files:
            ray.train.report({**metrics, "round": round_}, checkpoint=None)
            return
        self.staging.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.staging) as tmp:
            for path in files:
                target = Path(tmp) / path.relative_to(self.folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(path, target)
                except OSError:
                    shutil.copyfile(path, target)
            # uploaded before report returns (Ray Train's default, synchronous upload)
            ray.train.report({**metrics, "round": round_}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def reporting_worker(fn):
    """A Ray Train worker function that restores and reports checkpoints (module docstring) around
    ``fn(config)``, then reports the run's final metrics (rank 0's) for the driver."""

    def worker(config: dict) -> None:
        import ray.train

        from distkg.training.loop import on_rounds

        out = Path(config["out"])
        rank = ray.train.get_context().get_world_rank()
        restore_reported(out)
        with on_rounds(Reporter(out, rank)):
            metrics = fn(config)
        ray.train.report({"final_metrics": json.dumps(metrics) if rank == 0 and metrics else ""}, checkpoint=None)

    worker.__name__ = getattr(fn, "__name__", "worker")
    return worker


def run_name(out: Path, name: str) -> str:
    """The Ray Train run's name: ``name`` and an id kept in OUT/runtime while the folder lives (a
    --restart clears it), so a run resumes from its own reported checkpoints and never another's."""
    path = out / "runtime" / f"{name}-ray-run.txt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{name}-{os.urandom(4).hex()}\n")
    return path.read_text().strip()


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


def run_workers(fn, config: dict, runtime_cfg, out: Path, name: str):
    """``fn(config)`` on ``runtime.workers`` Ray Train workers (worker_scaling: their resources and
    process group), restarted up to ``runtime.max_failures`` times, reporting their checkpoints to
    ``runtime.storage_path`` (module docstring; default OUT/ray); Ray's result."""
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    scaling = worker_scaling(runtime_cfg)
    backend = scaling.pop("backend")
    trainer = TorchTrainer(
        reporting_worker(fn), train_loop_config={**config, "threads": scaling["resources_per_worker"].get("CPU", 1)},
        scaling_config=ScalingConfig(**scaling), torch_config=TorchConfig(backend=backend),
        run_config=RayRunConfig(name=run_name(out, name), storage_path=runtime_cfg.storage_path or str(out / "ray"),
                                checkpoint_config=CheckpointConfig(num_to_keep=2),
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
    return result


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
