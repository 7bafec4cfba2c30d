"""``distkg distill`` with ``runtime.backend: ray``: a teacher scoring pool plus Ray Train students
(the Ray Train runner they share with the LLM's fine-tuning job: distkg.runtime.raytrain).

Read top to bottom: connect to Ray (a local one on 127.0.0.1, or the cluster of
``runtime.address`` / ``ray job submit``); start the LLM teacher's scoring pool (and the KG
teacher's, with ``runtime.kg_teacher: pool``) on the resources the config declares; run
``runtime.workers`` Ray Train workers, each the ordinary distillation loop (distkg.distill.runner,
Accelerate inside) with the pools' handles; a failed worker group is restarted up to
``runtime.max_failures`` times and resumes from the last checkpoint in OUT; stop the pool, and the
local Ray if this process started it.

Paths (OUT, teacher runs, the data root) are made absolute here, because workers and actors do
not share the driver's working directory; checkpoints reach a restarted worker through Ray Train's
storage (distkg.runtime.raytrain), so OUT may be node-local on a multi-node cluster.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from distkg.config import RunConfig, to_dict
from distkg.data import load_dataset
from distkg.distill.runner import KG_FIELDS, check_method
from distkg.errors import DistkgError
from distkg.runfolder import MODEL_KINDS, open_finished, prepare_folder
from distkg.runtime.pool import TeacherPool, check_tensor_parallel, soft_targets
from distkg.runtime.raytrain import absolute, ray_failure, ray_session, run_workers, worker_setup, written_metrics

log = logging.getLogger("distkg")


def pool_names(runtime_cfg, needs: set[str]) -> list[str]:
    """The scoring pools a method reading ``needs`` uses: the LLM teacher's, and the KG teacher's
    with ``runtime.kg_teacher: pool``."""
    return [name for name, used in (("llm", "llm_probs" in needs),
                                    ("kg", "teacher_scores" in needs and runtime_cfg.kg_teacher == "pool")) if used]


def second_kind(run: str) -> str:
    """The scoring pool's kind for the second teacher (distkg.distill.second): an LLM teacher's pool, or a
    KG model's; an ensemble is mixed in the students' processes, not served."""
    kind, _ = open_finished(Path(run), "distill.llm_run", ("llm", *MODEL_KINDS, "ensemble"))
    if kind == "ensemble":
        raise DistkgError(f"distill.llm_run={run}: an ensemble run as the second teacher is read in-process; set "
                          "runtime.backend=local (a pool serves an LLM teacher or a KG model)")
    return "llm" if kind == "llm" else "kg"


def start_pools(cfg: RunConfig, needs: set[str], num_entities: int, out: Path) -> dict[str, TeacherPool]:
    """The scoring pools a method reading ``needs`` uses, loaded and ready; their placement is logged.
    An actor that cannot load its teacher (or a pool not ready within ``runtime.timeout_s``) stops
    the command with one line naming the cause, Ray's report in OUT/ray/NAME-pool-error.log."""
    import ray.exceptions

    runtime_cfg, distill_cfg = cfg.runtime, cfg.distill
    runs = {"llm": distill_cfg.llm_run, "kg": distill_cfg.teacher_run}
    kinds = {"llm": second_kind(distill_cfg.llm_run) if "llm_probs" in needs else "llm", "kg": "kg"}
    pools = {name: TeacherPool(kinds[name], runs[name], num_entities, runtime_cfg, cfg.data.root)
             for name in pool_names(runtime_cfg, needs)}
    for name, pool in pools.items():
        try:
            infos = pool.ready(timeout=runtime_cfg.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise DistkgError(f"the {name} teacher's scoring actors ({runs[name]}) were not ready within "
                              f"runtime.timeout_s={runtime_cfg.timeout_s} s") from None
        except ray.exceptions.RayError as e:
            raise DistkgError(ray_failure(e, out / "ray" / f"{name}-pool-error.log",
                                          f"the {name} teacher's scoring actors ({runs[name]})")) from None
        for info in infos:
            log.info("%s teacher actor pid %s on node %s: entities %s, %s", name, info["pid"], info["node_id"][:8],
                     info["shard"], {k: info[k] for k in ("engine", "dtype", "tp_size", "tp_members", "deepspeed_skipped")
                      if k in info})
    if needs & KG_FIELDS and runtime_cfg.kg_teacher == "local":
        log.info("KG teacher: next to each student (runtime.kg_teacher=local)")
    return pools


def _worker(config: dict) -> dict:
    """One Ray Train worker: the ordinary distillation loop; Accelerate finds the process group.
    Each worker records where it ran in OUT/runtime/worker-RANK.json."""
    import os

    import ray
    import ray.train

    from distkg.distill.runner import distill

    cfg = worker_setup(config)
    rank = ray.train.get_context().get_world_rank()
    where = Path(config["out"]) / "runtime"
    where.mkdir(parents=True, exist_ok=True)
    (where / f"worker-{rank}.json").write_text(json.dumps(
        {"rank": rank, "pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}))
    if config.get("fail_once"):
        _fail_once(rank, **config["fail_once"])
    ds = load_dataset(cfg.data)
    return distill(cfg, Path(config["out"]), dataset=ds, remote=soft_targets(config["pools"], cfg, ds), checked=True,
                   written=True)


def _fail_once(rank: int, epoch: int, step: int, marker: str, on_rank: int = 0, kill: bool = False,
               lose: str | None = None) -> None:
    """Fault tests: the worker of ``on_rank`` raises (``kill``: is killed by SIGKILL) after (epoch, step),
    the first time only (``marker``); ``lose``: a folder removed first (OUT/checkpoints: the restarted
    workers then start as on a node whose node-local OUT never held them)."""
    from distkg.training import trainer

    def crash(e: int, s: int) -> None:
        if rank == on_rank and (e, s) == (epoch, step) and not Path(marker).exists():
            Path(marker).write_text("failed once\n")
            if lose:
                import shutil

                shutil.rmtree(lose, ignore_errors=True)
            if kill:
                import os
                import signal

                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected student worker failure at epoch {e + 1}, step {s + 1}")

    trainer._after_step = crash


def distill_on_ray(cfg: RunConfig, out: Path, restart: bool = False, fail_once: dict | None = None) -> dict:
    """Run the distillation of ``cfg`` on Ray into OUT (module docstring); its metrics. OUT is prepared
    here, before Ray starts (distkg.runfolder.prepare_folders; ``restart`` clears it), the workers resume in it.

    ``fail_once``: {epoch, step, marker[, on_rank]} makes one worker fail once (fault tests).
    """
    from distkg.data import load_dataset

    cfg, out, runtime_cfg = absolute(cfg), out.resolve(), cfg.runtime
    needs = check_method(cfg)
    if "llm" in pool_names(runtime_cfg, needs):  # before Ray starts
        check_tensor_parallel(runtime_cfg, second_kind(cfg.distill.llm_run), cfg.distill.llm_run)
    prepare_folder(cfg, out, "student", restart=restart)
    num_entities = load_dataset(cfg.data).num_entities
    pools: dict[str, TeacherPool] = {}
    with ray_session(runtime_cfg, pool_names(runtime_cfg, needs)):
        try:
            pools = start_pools(cfg, needs, num_entities, out)
            result = run_workers(_worker, {"cfg": to_dict(cfg), "out": str(out), "pools": pools, "fail_once": fail_once},
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
    return written_metrics(out, result)
