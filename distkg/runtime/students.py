"""``distkg distill`` with ``runtime.backend: ray``: a teacher scoring pool plus Ray Train students
(and ``distkg llm finetune`` with ``runtime.backend: ray``: a Ray Train job under DeepSpeed ZeRO).

Read top to bottom: connect to Ray (a local one on 127.0.0.1, or the cluster of
``runtime.address`` / ``ray job submit``); start the LLM teacher's scoring pool (and the KG
teacher's, with ``runtime.kg_teacher: pool``) on the resources the config declares; run
``runtime.workers`` Ray Train workers, each the ordinary distillation loop (distkg.distill.runner,
Accelerate inside) with the pools' handles; a failed worker group is restarted up to
``runtime.max_failures`` times and resumes from the last checkpoint in OUT; stop the pool, and the
local Ray if this process started it.

Paths (OUT, teacher runs, the data root) are made absolute here, because workers and actors do
not share the driver's working directory; on a multi-node cluster OUT must be on a shared
filesystem (cluster/SCALING.md).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from contextlib import contextmanager
from pathlib import Path

from distkg.config import RunConfig, build, to_dict
from distkg.data import load_dataset, resolve_data_root
from distkg.distill.runner import KG_FIELDS, check_method
from distkg.errors import DistkgError
from distkg.runfolder import read_metrics, run_kind
from distkg.runtime.cluster import connect
from distkg.runtime.pool import TeacherPool, soft_targets
from distkg.runtime.resources import check_fits, local_cpus, on_resources

log = logging.getLogger("distkg")


def absolute(cfg: RunConfig) -> RunConfig:
    """The config with every path the workers read made absolute."""
    distill_cfg = cfg.distill
    distill = dataclasses.replace(distill_cfg, teacher_run=distill_cfg.teacher_run and str(Path(distill_cfg.teacher_run).resolve()),
                                  llm_run=distill_cfg.llm_run and str(Path(distill_cfg.llm_run).resolve()))
    data = dataclasses.replace(cfg.data, root=str(resolve_data_root(cfg.data.root).resolve()))
    return dataclasses.replace(cfg, distill=distill, data=data)


def pool_names(runtime_cfg, needs: set[str]) -> list[str]:
    """The scoring pools a method reading ``needs`` uses: the LLM teacher's, and the KG teacher's
    with ``runtime.kg_teacher: pool``."""
    return [name for name, used in (("llm", "llm_probs" in needs),
                                    ("kg", "teacher_scores" in needs and runtime_cfg.kg_teacher == "pool")) if used]


def second_kind(run: str) -> str:
    """The scoring pool's kind for the second teacher (distkg.distill.second): an LLM teacher's pool, or a
    KG model's; an ensemble is mixed in the students' processes, not served."""
    kind = run_kind(Path(run))
    if kind not in ("llm", "kg"):
        raise DistkgError(f"distill.llm_run={run}: a {kind} run as the second teacher is read in-process; set "
                          "runtime.backend=local (a pool serves an LLM teacher or a KG model)")
    return kind


def start_pools(cfg: RunConfig, needs: set[str], num_entities: int) -> dict[str, TeacherPool]:
    """The scoring pools a method reading ``needs`` uses, loaded and ready; their placement is logged."""
    runtime_cfg, distill_cfg = cfg.runtime, cfg.distill
    runs = {"llm": distill_cfg.llm_run, "kg": distill_cfg.teacher_run}
    kinds = {"llm": second_kind(distill_cfg.llm_run) if "llm_probs" in needs else "llm", "kg": "kg"}
    pools = {name: TeacherPool(kinds[name], runs[name], num_entities, runtime_cfg, cfg.data.root)
             for name in pool_names(runtime_cfg, needs)}
    for name, pool in pools.items():
        for info in pool.ready(timeout=runtime_cfg.timeout_s):
            log.info("%s teacher actor pid %s on node %s: entities %s, %s", name, info["pid"], info["node_id"][:8],
                     info["shard"], {k: info[k] for k in ("engine", "dtype", "kernel_inject", "tp_size") if k in info})
    if needs & KG_FIELDS and runtime_cfg.kg_teacher == "local":
        log.info("KG teacher: next to each student (runtime.kg_teacher=local)")
    return pools


def _worker(config: dict) -> None:
    """One Ray Train worker: the ordinary distillation loop; Accelerate finds the process group.
    Each worker records where it ran in OUT/runtime/worker-RANK.json."""
    import os

    import ray
    import ray.train

    from distkg.distill.runner import distill

    cfg = _worker_setup(config)
    rank = ray.train.get_context().get_world_rank()
    where = Path(config["out"]) / "runtime"
    where.mkdir(parents=True, exist_ok=True)
    (where / f"worker-{rank}.json").write_text(json.dumps(
        {"rank": rank, "pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}))
    if config.get("fail_once"):
        _fail_once(rank, **config["fail_once"])
    ds = load_dataset(cfg.data)
    distill(cfg, Path(config["out"]), resume=True, dataset=ds, remote=soft_targets(config["pools"], cfg, ds))


def _worker_setup(config: dict) -> RunConfig:
    """A Ray Train worker's threads (its CPU share) and log format; the run config it was sent."""
    import torch

    torch.set_num_threads(max(1, int(config["threads"])))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = build(RunConfig, config["cfg"])
    return on_resources(cfg, cfg.runtime.worker_resources)  # a worker computes where Ray placed it


def _fail_once(rank: int, epoch: int, step: int, marker: str, on_rank: int = 0) -> None:
    """Fault tests: the worker of ``on_rank`` raises after (epoch, step) the first time only (``marker``)."""
    from distkg.training import trainer

    def crash(e: int, s: int) -> None:
        if rank == on_rank and (e, s) == (epoch, step) and not Path(marker).exists():
            Path(marker).write_text("failed once\n")
            raise RuntimeError(f"injected student worker failure at epoch {e + 1}, step {s + 1}")

    trainer._after_step = crash


def _finetune_worker(config: dict) -> None:
    from distkg.llm.finetune import finetune

    finetune(_worker_setup(config), Path(config["out"]), resume=True)


def finetune_on_ray(cfg: RunConfig, out: Path) -> dict:
    """`distkg llm finetune` as a Ray Train job: ``runtime.workers`` workers, DeepSpeed ZeRO
    (``runtime.zero_stage``) over the LoRA and head parameters; rank 0 saves and evaluates."""
    cfg, out, runtime_cfg = absolute(cfg), out.resolve(), cfg.runtime
    with ray_session(runtime_cfg, []):
        run_workers(_finetune_worker, {"cfg": to_dict(cfg), "out": str(out)}, runtime_cfg, out, "llm-finetune")
    return _written_metrics(out)


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


def _written_metrics(out: Path) -> dict:
    metrics = read_metrics(out)
    if metrics is None:
        raise DistkgError(f"{out}: the Ray Train workers finished but wrote no metrics.json")
    return metrics


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
    result = interruptible(trainer.fit)
    if result.error is not None:
        raise DistkgError(f"the Ray Train {name} workers failed: {result.error}")


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


def distill_on_ray(cfg: RunConfig, out: Path, fail_once: dict | None = None) -> dict:
    """Run the distillation of ``cfg`` on Ray into OUT (module docstring); its metrics.

    ``fail_once``: {epoch, step, marker[, on_rank]} makes one worker fail once (fault tests).
    """
    from distkg.data import load_dataset

    cfg, out, runtime_cfg = absolute(cfg), out.resolve(), cfg.runtime
    needs = check_method(cfg)
    if "llm" in pool_names(runtime_cfg, needs):
        second_kind(cfg.distill.llm_run)  # before Ray starts
    num_entities = load_dataset(cfg.data).num_entities
    pools: dict[str, TeacherPool] = {}
    with ray_session(runtime_cfg, pool_names(runtime_cfg, needs)):
        try:
            pools = start_pools(cfg, needs, num_entities)
            run_workers(_worker, {"cfg": to_dict(cfg), "out": str(out), "pools": pools, "fail_once": fail_once},
                        runtime_cfg, out, "students")
            record = {"pools": {n: {"actors": p.ready(), "stats": p.stats()} for n, p in pools.items()},
                      "workers": runtime_cfg.workers, "address": runtime_cfg.address or "local"}
            (out / "runtime").mkdir(parents=True, exist_ok=True)
            (out / "runtime" / "pools.json").write_text(json.dumps(record, indent=2))
            for name, pool in pools.items():
                log.info("%s pool: %s", name, record["pools"][name]["stats"])
        finally:
            for pool in pools.values():
                pool.shutdown()
    return _written_metrics(out)
