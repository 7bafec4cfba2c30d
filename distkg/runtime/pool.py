"""The teacher scoring pool: Ray actors that each hold one shard of a teacher's entity table.

Why shards of entities, not replicas: a teacher's score row is [entities] long and the LLM's cost
is encoding entity texts. With N actors each owning entities [lo, hi), every entity text goes
through the LLM once in the whole pool (not once per replica), and with ``soft_targets: topk``
each actor returns only its shard's top k, which the client merges into the exact global top k.

  ScoringShard  loads a finished teacher run (an LLM teacher: 4-bit base + LoRA adapter + head,
                wrapped by DeepSpeed inference; or a `distkg train` KG teacher) and scores queries
                against its shard, caching each distinct query's row (an actor holds one teacher
                version for its life, so its cache is per teacher version).
  TeacherPool   creates the actors (declared resources, restarted when they die, in-flight calls
                retried) and merges their answers: [B, E] scores (-inf outside the top k).
  SoftTargets   one student worker's view: the epoch's batches are planned ahead, ``prefetch`` of
                them stay in flight, and the time a step waits for its targets is recorded.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distkg.config import RunConfig, RuntimeConfig
from distkg.data import TKGDataset
from distkg.device import compute_dtype, cuda_available, inference_dtype, placement, release_shm_buffer
from distkg.distill.losses import TopKTargets
from distkg.distill.runner import kd_temperature
from distkg.evaluation import budget_bytes, default_query_chunk
from distkg.errors import DistkgError
from distkg.llm.encoder import TextEncoder
from distkg.runtime.resources import on_resources, tp_degree
from distkg.training.trainer import training_queries

log = logging.getLogger("distkg")


def shard_bounds(num_entities: int, shards: int) -> list[tuple[int, int]]:
    """[lo, hi) of each shard; sizes differ by at most one."""
    edges = [round(i * num_entities / shards) for i in range(shards + 1)]
    return list(zip(edges[:-1], edges[1:]))


def merge_topk(parts: list[tuple[torch.Tensor, torch.Tensor]], k: int, num_entities: int) -> torch.Tensor:
    """The exact global top k from each shard's (values, entity ids) top k, as dense [B, E] scores
    with -inf elsewhere (so softmax(scores / T) is the top-k distribution renormalised)."""
    values = torch.cat([v for v, _ in parts], dim=1)
    ids = torch.cat([i for _, i in parts], dim=1)
    best, where = values.topk(min(k, values.shape[1]), dim=1)
    dense = torch.full((len(values), num_entities), float("-inf"))
    return dense.scatter_(1, ids.gather(1, where), best)


# Largest relative L2 error of a pooled text vector, wrapped vs plain model, that the output check
# accepts: bf16/fp16 carry 8/11 mantissa bits (relative rounding 4e-3 / 5e-4 per value, a few
# times that after 30 layers); fp32 wraps must agree to float rounding.
OUTPUT_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}


def merge_topk_rest(parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], k: int,
                    temperature: float) -> TopKTargets:
    """The global top k with their probabilities at ``temperature`` over the whole row, from each
    shard's (values, entity ids, logsumexp of its row / T): what the missing-mass KL reads (the
    rest bucket is 1 minus their sum)."""
    values = torch.cat([v for v, _, _ in parts], dim=1)
    ids = torch.cat([i for _, i, _ in parts], dim=1)
    lse = torch.logsumexp(torch.stack([s for _, _, s in parts], dim=1), dim=1, keepdim=True)
    best, where = values.topk(min(k, values.shape[1]), dim=1)
    return TopKTargets(temperature, ids.gather(1, where), best / temperature - lse)


def low_rank_basis(table: torch.Tensor, rank: int) -> torch.Tensor:
    """[D, r]: the top ``rank`` right singular vectors of a candidate table [E, D]. A dot-product
    teacher's row q . table is then approximated by (q V)(table V)^T: r numbers per query, the
    best rank-r fit of the table (all D dimensions, so the exact row, when rank >= D)."""
    _, _, vh = torch.linalg.svd(table, full_matrices=False)
    return vh[:rank].T.contiguous()


def shard_topk(rows: torch.Tensor, lo: int, k: int, temperature: float | None = None) -> tuple[torch.Tensor, ...]:
    """One shard's answer for its [B, hi - lo] score rows (entities from ``lo``): the top k's values and
    global ids; with a ``temperature`` each row's logsumexp(row / T)."""
    values, ids = rows.topk(min(k, rows.shape[1]), dim=1)
    out = [values, ids + lo]
    if temperature is not None:
        out.append(torch.logsumexp(rows / temperature, dim=1))
    return tuple(out)


def output_error(plain: torch.Tensor, wrapped: torch.Tensor) -> float:
    """Largest per-row relative L2 difference between two [n, d] outputs."""
    plain, wrapped = plain.float().cpu(), wrapped.float().cpu()
    return float(((wrapped - plain).norm(dim=1) / plain.norm(dim=1).clamp_min(1e-12)).max())


def deepspeed_skipped(runtime_cfg: RuntimeConfig, on_cuda: bool, quantized: bool) -> str | None:
    """Why an LLM actor runs its LM without DeepSpeed inference, or None to wrap it
    (``runtime.deepspeed_inference``). ``auto`` wraps only where the engine does work: tensor
    parallelism (``runtime.tp_size`` > 1). Elsewhere it is a pass-through that costs an import and a
    probe. (Kernel injection is not offered: no run ever measured it, cluster/SCALING.md.)"""
    choice = runtime_cfg.deepspeed_inference
    if choice != "auto":
        return None if choice == "on" else "runtime.deepspeed_inference=off"
    if quantized:
        return "a 4-bit LM: DeepSpeed shards none of bitsandbytes' weights (DeepSpeed issue 4410)"
    if runtime_cfg.tp_size == 1:
        return f"runtime.tp_size 1 ({'CUDA' if on_cuda else 'CPU'}): the engine would only wrap the LM"
    return None


def wrap_deepspeed(encoder: TextEncoder, runtime_cfg: RuntimeConfig, quantized: bool, device: torch.device,
                   probe: list[str]) -> dict:
    """Wrap the encoder's LM with ``deepspeed.init_inference`` in place and check its outputs;
    returns what was chosen (for reports).

    The engine changes the module in place (tensor parallelism shards its layers); the encoder is
    pointed at the engine's module. Output check: ``probe`` (texts of mixed lengths, so the batch is
    padded: the case of DeepSpeed issue 3960) is encoded by the plain and by the wrapped model; a relative error above OUTPUT_TOLERANCE of the coarser of the
    wrap's and the model's dtype stops the actor with an error instead of serving wrong soft targets.
    """
    import deepspeed

    with torch.inference_mode():
        plain = encoder._run(probe)
    dtype = inference_dtype(runtime_cfg.dtype, device.type == "cuda", quantized)
    engine = deepspeed.init_inference(encoder.lm.model, dtype=dtype, replace_with_kernel_inject=False,
                                      tensor_parallel={"tp_size": runtime_cfg.tp_size})
    encoder.lm.model = engine.module
    with torch.inference_mode():
        error = output_error(plain, encoder._run(probe))
    # the coarser of the two precisions sets the tolerance: an NF4 model loaded in bf16 on CUDA and
    # wrapped in fp32 differs from its plain self by bf16 rounding
    tolerance = max(OUTPUT_TOLERANCE[dtype], OUTPUT_TOLERANCE[compute_dtype(device)])
    check = {"texts": len(probe), "max_relative_error": round(error, 6), "tolerance": tolerance}
    if not error <= tolerance:
        raise DistkgError(f"DeepSpeed inference (dtype {dtype}, tp_size {runtime_cfg.tp_size}) changed the LM's outputs: "
                          f"relative error {error:.3g} > {tolerance} on {len(probe)} padded texts; "
                          "set runtime.dtype=auto (or runtime.deepspeed_inference=off)")
    return {"engine": type(engine).__name__, "dtype": str(dtype).removeprefix("torch."),
            "tp_size": runtime_cfg.tp_size, "device": str(device), "output_check": check, "module": engine.module}


def check_tensor_parallel(runtime_cfg: RuntimeConfig, kind: str, run: str | Path) -> None:
    """What ``runtime.tp_size`` > 1 needs, in one line before Ray starts: an LLM teacher, unquantized
    (DeepSpeed shards no bitsandbytes layer, DeepSpeed issue 4410), under DeepSpeed inference."""
    from distkg.errors import ConfigError
    from distkg.runfolder import run_config

    n = runtime_cfg.tp_size
    if n == 1:
        return
    if kind != "llm":
        raise ConfigError(f"runtime.tp_size={n} shards an LLM teacher's layers, but {run} is a KG model's run: "
                          "set runtime.tp_size=1")
    if runtime_cfg.deepspeed_inference == "off":
        raise ConfigError(f"runtime.tp_size={n} runs through DeepSpeed inference, but runtime.deepspeed_inference=off")
    quantization = run_config(Path(run)).llm.quantization
    if quantization != "none":
        raise ConfigError(f"runtime.tp_size={n}: the LLM teacher in {run} is 4-bit (llm.quantization={quantization}) "
                          "and DeepSpeed shards no bitsandbytes layer: set runtime.tp_size=1, or train the teacher "
                          "with llm.quantization=none")


PROBE_TEXTS = 64  # entity texts of its shard each LLM actor checks the DeepSpeed wrap on


class ScoringShard:
    """Scores queries against entities [lo, hi) of one teacher run ("llm" or "kg").

    With ``runtime.tp_size`` N > 1 (an unquantized LLM teacher), a shard is N actors, one per
    device: DeepSpeed inference shards the LM's layers over them (tensor parallelism; DeepSpeed
    runs one process per device, so "an actor's GPUs" are the N actors of its group). They load
    only once the group has joined (``tp_start``); the first (the leader) is the only one the pool
    calls, and it forwards every call to the others first, so all N run the same forward passes in
    the same order (their collectives pair up; calls of several students reach the group through
    the leader alone, in its order)."""

    def __init__(self, kind: str, run: str, lo: int, hi: int, runtime_cfg: RuntimeConfig, data_root: str | None = None,
                 tp_rank: int = 0) -> None:
        from distkg.allocator import apply_heap_settings

        apply_heap_settings()  # a process distkg runs (distkg.allocator)
        torch.set_num_threads(max(1, int(runtime_cfg.teacher_resources.get("CPU", 1))))
        self.kind, self.run, self.lo, self.hi, self.runtime_cfg, self.data_root = kind, run, lo, hi, runtime_cfg, data_root
        self.tp_rank, self.tp_size = tp_rank, tp_degree(runtime_cfg, kind)
        self.followers: list = []
        self.info: dict = {"kind": kind, "run": run, "shard": [lo, hi]}
        if self.tp_size == 1:
            self._load()

    def tp_address(self) -> tuple[str, int]:
        """Where this group's process group meets: the leader's node and a free port there."""
        import ray

        from distkg.runtime.cluster import free_port

        return ray.util.get_node_ip_address(), free_port("")

    def tp_start(self, address: str, port: int, one_node: bool) -> None:
        """Join the group's process group (NCCL on GPUs, gloo on CPUs), then load: DeepSpeed shards the
        LM over the group while every member loads it (all in the same steps). On CPUs DeepSpeed's
        all-reduce goes through shared memory when every member is on one node (LOCAL_SIZE, read by
        its C op, which crashes when it is unset); otherwise through gloo."""
        import os

        import deepspeed
        import torch.distributed as dist

        backend = "nccl" if cuda_available() else "gloo"
        # LOCAL_RANK 0: each member sees only its own device (Ray sets CUDA_VISIBLE_DEVICES per actor)
        os.environ.update(MASTER_ADDR=address, MASTER_PORT=str(port), RANK=str(self.tp_rank),
                          WORLD_SIZE=str(self.tp_size), LOCAL_RANK="0", LOCAL_SIZE=str(self.tp_size if one_node else 1))
        dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=self.tp_rank,
                                world_size=self.tp_size)
        deepspeed.init_distributed(dist_backend=backend)
        release_shm_buffer()
        if backend == "gloo" and not one_node:
            from deepspeed import comm

            comm.cdb.shm_vector_kernel_level = 0  # its shared-memory all-reduce cannot span nodes
        self._load()

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def follow(self, followers: list) -> None:
        """The leader's handles of the group's other members (TeacherPool.ready)."""
        self.followers = followers

    def _forward(self, method: str, *args) -> list:
        return [getattr(f, method).remote(*args) for f in self.followers]

    def _load(self) -> None:
        from distkg.data import load_dataset
        from distkg.runfolder import run_config

        kind, lo, hi, runtime_cfg = self.kind, self.lo, self.hi, self.runtime_cfg
        run_path = Path(self.run)
        cfg = on_resources(run_config(run_path), runtime_cfg.teacher_resources)
        if self.data_root is not None:
            cfg.data.root = self.data_root
        ds = load_dataset(cfg.data)
        if kind == "llm":
            from distkg.llm.train import load_teacher
            from distkg.llm.rounds import lm_bytes

            self.model = load_teacher(run_path / "teacher", cfg, ds)
            quantized, on_cuda = cfg.llm.quantization != "none", self.model.device.type == "cuda"
            if (skipped := deepspeed_skipped(runtime_cfg, on_cuda, quantized)) is not None:
                log.info("LLM actor [%d, %d): no DeepSpeed inference: %s", lo, hi, skipped)
                self.info.update(engine=None, deepspeed_skipped=skipped)
            else:
                if self.tp_size > 1 and hasattr(self.model.lm_model, "merge_and_unload"):
                    # the LoRA adapter into the base weights first: AutoTP shards each base Linear, and
                    # an unsharded adapter beside a sharded layer no longer fits it
                    self.model.lm_model = self.model.encoder.lm.model = self.model.lm_model.merge_and_unload()
                probe = self.model.texts["entity"][lo:hi][:PROBE_TEXTS]
                full = lm_bytes(self.model.encoder.lm.model)
                ds_info = wrap_deepspeed(self.model.encoder, runtime_cfg, quantized, self.model.device, probe)
                self.model.lm_model = self.model.encoder.lm.model = ds_info.pop("module")
                if self.tp_size > 1:  # what this member holds of the LM's weights
                    ds_info["tp"] = {"rank": self.tp_rank, "lm_bytes_full": full,
                                     "lm_bytes_held": lm_bytes(self.model.lm_model)}
                self.info.update(ds_info)
            self.version = f"{self.model.encoder.weights_version()}-{_digest(self.model.head.weight)}"
        else:
            from distkg.training.trainer import load_trained

            _, _, self.model = load_trained(run_path, cfg)  # on this actor's device (distkg.device)
            self.version = _digest(*self.model.parameters())
        self.device = self.model.device if kind == "llm" else placement(cfg).device
        # queries scored at once: what fits the teacher run's eval.memory_budget on this device
        self.block_rows = default_query_chunk(hi - lo, budget_bytes(cfg.eval.memory_budget, self.device))
        self.model.requires_grad_(False)
        self.use_cache = runtime_cfg.cache
        self.cache: dict[tuple, torch.Tensor | tuple] = {}  # (topk, *query) -> its row
        self.stats = {"queries": 0, "cache_hits": 0, "scored": 0, "seconds": 0.0}
        with torch.inference_mode():
            self.table = self.model.candidate_table(lo, hi)  # an LLM teacher encodes its shard's texts here

    def shard_table(self) -> torch.Tensor:
        """E(p) of this shard's entities (LLM teachers; TeacherPool.ready gathers them), on the CPU:
        whoever gathers them may have no GPU."""
        return self.table.cpu()

    def use_projection(self, basis: torch.Tensor) -> None:
        """runtime.soft_targets lowrank: queries are answered as their representation on ``basis``
        ([D, r], the top right singular vectors of the whole candidate table; TeacherPool.ready)."""
        from distkg.models.base import DotProductModel

        followed = self._forward("use_projection", basis)
        if not isinstance(self.model, DotProductModel):
            raise DistkgError(f"runtime.soft_targets=lowrank needs a dot-product teacher (score = query . entity); "
                              f"{type(self.model).__name__} is not one")
        self.basis = basis.to(self.device)
        _wait(followed)

    def project(self, queries: torch.Tensor) -> torch.Tensor:
        """[B, r]: each query's representation on the basis (use_projection), cached per query."""
        t0, followed = time.perf_counter(), self._forward("project", queries)
        keys = [("lowrank", *row) for row in queries.tolist()]
        todo = [i for i, k in enumerate(keys) if not self.use_cache or k not in self.cache]
        self.stats["queries"] += len(queries)
        self.stats["cache_hits"] += len(queries) - len(todo)
        fresh: dict = {}
        if todo:
            with torch.inference_mode():
                fresh = dict(zip(todo, (self.model.query_repr(queries[todo].to(self.device)) @ self.basis).float().cpu()))
            self.stats["scored"] += len(todo)
            if self.use_cache:
                self.cache.update((keys[i], r) for i, r in fresh.items())
        self.stats["seconds"] += time.perf_counter() - t0
        _wait(followed)
        return torch.stack([fresh[i] if i in fresh else self.cache[k] for i, k in enumerate(keys)])

    def use_entity_table(self, table: torch.Tensor) -> None:
        """Every entity's E(p), gathered from all shards: a query's entity is then a lookup, not an
        LLM call in this actor for an entity another shard owns. A restarted actor lacks it and
        encodes such entities itself (the same E(p), more LLM work) until given it again."""
        followed = self._forward("use_entity_table", table)
        self.model.use_tables(entity=table)
        _wait(followed)

    def score(self, queries: torch.Tensor, topk: int | None = None,
              temperature: float | None = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """[B, hi-lo] scores, or (values, global entity ids) of the shard's top ``topk`` per query,
        and with a ``temperature`` each row's logsumexp(scores / T) over the shard too (the
        client's rest bucket: the mass outside the global top k)."""
        t0, followed = time.perf_counter(), self._forward("score", queries, topk, temperature)
        keys = [(topk, temperature, *row) for row in queries.tolist()]
        use_cache = self.use_cache
        todo = [i for i, k in enumerate(keys) if not use_cache or k not in self.cache]
        self.stats["queries"] += len(queries)
        self.stats["cache_hits"] += len(queries) - len(todo)
        fresh: dict[int, torch.Tensor | tuple] = {}
        if todo:
            # blocks of block_rows queries, so that a top k never holds more scores than the budget
            blocks = torch.tensor(todo).split(self.block_rows)
            for block in blocks:
                with torch.inference_mode():
                    # queries arrive on the CPU; rows go back on the CPU (a student may have no GPU)
                    rows = self.model.match(self.model.query_repr(queries[block].to(self.device)), self.table).float().cpu()
                answer = zip(*shard_topk(rows, self.lo, topk, temperature)) if topk is not None else rows
                fresh.update(zip(block.tolist(), answer))
            self.stats["scored"] += len(todo)
            if use_cache:
                self.cache.update((keys[i], r) for i, r in fresh.items())
        out = [fresh[i] if i in fresh else self.cache[k] for i, k in enumerate(keys)]
        self.stats["seconds"] += time.perf_counter() - t0
        _wait(followed)
        if topk is not None:
            return tuple(torch.stack(column) for column in zip(*out))
        return torch.stack(out)

    def node(self) -> dict:
        import os

        import ray

        info = {**self.info, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "version": self.version}
        if self.followers:
            info["tp_members"] = [info.get("tp"), *(m.get("tp") for m in ray.get(self._forward("node")))]
        return info

    def get_stats(self) -> dict:
        """Totals since this actor started: queries answered, cache hits, queries scored, seconds."""
        return dict(self.stats)


def _wait(refs: list) -> None:
    """The group's other members' answers to a forwarded call (discarded: the leader's is the same);
    waited for, so their errors surface here."""
    if refs:
        import ray

        ray.get(refs)


def _digest(*tensors: torch.Tensor) -> str:
    import hashlib

    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def actor_options(resources: dict[str, float]) -> dict:
    """Ray actor options for declared resources: CPU and GPU (fractions share a card: {GPU: 0.5} puts
    two actors on one GPU) plus any custom resources, e.g. {GPU: 1, teacher: 1}."""
    rest = dict(resources)
    cpus, gpus = rest.pop("CPU", 0), rest.pop("GPU", 0)
    return {"num_cpus": cpus, "num_gpus": gpus, "resources": rest or None}


class TeacherPool:
    """N ScoringShard actors over one teacher run; ``score`` merges their answers."""

    def __init__(self, kind: str, run: str | Path, num_entities: int, runtime_cfg: RuntimeConfig,
                 data_root: str | None = None) -> None:
        import ray

        self.kind, self.num_entities, self.runtime_cfg = kind, num_entities, runtime_cfg
        self.bounds = shard_bounds(num_entities, runtime_cfg.teacher_actors)
        # an LLM teacher that reads queries as text is sent each training query's row too (its text
        # leaves that row's fact out; distkg.llm.teacher.LLMTeacher.with_rows)
        self.wants_rows = kind == "llm" and _reads_text(Path(run))
        run = str(Path(run).resolve())
        self.tp = tp_degree(runtime_cfg, kind)
        self.groups: list[list] = []  # tp_size > 1: each shard's actors, the leader first
        self.placement_groups: list = []
        self._started = False  # the groups have met and loaded (ready)
        if self.tp == 1:
            actor_cls = ray.remote(ScoringShard).options(
                **actor_options(runtime_cfg.teacher_resources),
                max_restarts=-1, max_task_retries=-1)  # a killed actor is restarted and its pending calls retried
            self.actors = [actor_cls.remote(kind, run, lo, hi, runtime_cfg, data_root) for lo, hi in self.bounds]
        else:
            self.groups = [self._group(kind, run, lo, hi, runtime_cfg, data_root) for lo, hi in self.bounds]
            self.actors = [group[0] for group in self.groups]
        self.topk = runtime_cfg.topk if runtime_cfg.soft_targets == "topk" else None
        self.lowrank = runtime_cfg.soft_targets == "lowrank" and kind == "kg"  # an LLM pool sends full rows then
        self.projected: torch.Tensor | None = None  # lowrank: [E, r] the candidate table on the basis
        self._calls = 0
        self._shared = False

    def _group(self, kind: str, run: str, lo: int, hi: int, runtime_cfg: RuntimeConfig, data_root: str | None) -> list:
        """The ``tp_size`` actors of one shard, packed on one node (a placement group: tensor
        parallelism talks at every layer). A member that dies is not restarted: it cannot rejoin
        its group's process group, so the pool's calls fail (one line, distkg.runtime.students)."""
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        options = actor_options(runtime_cfg.teacher_resources)
        bundle = {k: v for k, v in runtime_cfg.teacher_resources.items() if v}  # one member's share
        if bundle:
            group = placement_group([bundle] * self.tp, strategy="STRICT_PACK")
            self.placement_groups.append(group)
        actor_cls = ray.remote(ScoringShard)
        return [actor_cls.options(**options, max_restarts=0, **({"scheduling_strategy": PlacementGroupSchedulingStrategy(
                    group, placement_group_bundle_index=i)} if bundle else {})).remote(kind, run, lo, hi, runtime_cfg, data_root, i)
                for i in range(self.tp)]

    def ready(self, timeout: float | None = None) -> list[dict]:
        """Wait until every actor has loaded its teacher and encoded its shard; for an LLM teacher
        give every actor the whole entity table (each text went through the LLM in one actor only).
        Tensor-parallel groups meet (their leader's address), load together, and the leaders learn
        their followers first. Returns the actors' placement."""
        import ray

        if self.groups and not self._started:
            addresses = ray.get([group[0].tp_address.remote() for group in self.groups], timeout=timeout)
            one_node = [len(set(ray.get([m.node_id.remote() for m in group], timeout=timeout))) == 1 for group in self.groups]
            ray.get([member.tp_start.remote(*address, local) for group, address, local in zip(self.groups, addresses, one_node)
                     for member in group], timeout=timeout)
            ray.get([group[0].follow.remote(group[1:]) for group in self.groups], timeout=timeout)
            self._started = True
        infos = ray.get([a.node.remote() for a in self.actors], timeout=timeout)
        if self.lowrank and self.projected is None:
            table = torch.cat(ray.get([a.shard_table.remote() for a in self.actors], timeout=timeout)).float()
            basis = low_rank_basis(table, self.runtime_cfg.rank)
            ray.get([a.use_projection.remote(basis) for a in self.actors], timeout=timeout)
            self.projected = table @ basis
        if self.kind == "llm" and not self._shared:
            table = ray.put(torch.cat(ray.get([a.shard_table.remote() for a in self.actors], timeout=timeout)))
            ray.get([a.use_entity_table.remote(table) for a in self.actors], timeout=timeout)
            self._shared = True
        return infos

    def submit(self, queries: torch.Tensor, temperature: float | None = None) -> list:
        if self.lowrank:  # every actor can project any query: one call, actors in turn
            self._calls += 1
            return [self.actors[self._calls % len(self.actors)].project.remote(queries)]
        return [a.score.remote(queries, self.topk, temperature if self.topk else None) for a in self.actors]

    def collect(self, refs: list, temperature: float | None = None,
                columns: torch.Tensor | None = None) -> torch.Tensor | TopKTargets:
        """[B, E] scores from the shards' answers (-inf outside the merged top k), waiting at most
        ``runtime.timeout_s``; with top-k and a ``temperature`` (the refs submitted with it), the
        top k's probabilities and the rest bucket instead (merge_topk_rest).
        ``columns``: only those entities' scores, [B, C] (a sampled loss's candidates; with low-rank
        targets C products of r numbers a query, never a whole row)."""
        import ray

        parts = ray.get(refs, timeout=self.runtime_cfg.timeout_s)
        if self.lowrank:
            return parts[0] @ (self.projected if columns is None else self.projected[columns]).T
        if self.topk is None:
            rows = torch.cat(parts, dim=1)
            return rows if columns is None else rows[:, columns]
        if columns is not None:
            raise DistkgError("top-k soft targets have no score for a sampled candidate outside the top k; "
                              "use runtime.soft_targets lowrank or full with train.loss sampled_softmax")
        if temperature is not None:
            return merge_topk_rest(parts, self.topk, temperature)
        return merge_topk(parts, self.topk, self.num_entities)

    def score(self, queries: torch.Tensor, temperature: float | None = None) -> torch.Tensor | TopKTargets:
        return self.collect(self.submit(queries, temperature), temperature)

    def stats(self) -> dict:
        """Totals summed over the actors: queries answered, cache hits, queries scored, seconds busy."""
        import ray

        total: dict = {}
        for s in ray.get([a.get_stats.remote() for a in self.actors]):
            for k, v in s.items():
                total[k] = total.get(k, 0) + v
        return total

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for a in [member for group in self.groups for member in group] or self.actors:
            ray.kill(a, no_restart=True)
        for group in self.placement_groups:
            remove_placement_group(group)


@dataclass
class SoftTargets:
    """One student worker's client of a pool: rows of teacher scores by training-query index.

    ``plan`` is given the epoch's batches (index tensors, in order) and sends the first
    ``prefetch`` of them; each ``get`` returns the next planned batch's scores and sends one more,
    so the pool works on batch i+1.. while the student computes batch i. A ``get`` for a batch
    that was not planned is sent and waited for at once.
    """

    pool: TeacherPool
    queries: torch.Tensor  # all training queries, [Q, 4] ([Q, 5] with their rows for an LLM teacher reading text)
    prefetch: int = 2
    temperature: float | None = None  # with a top-k pool: get returns TopKTargets at this T (kd's)
    waits: list[float] = field(default_factory=list)  # seconds each get blocked
    _plan: deque = field(default_factory=deque)
    _inflight: deque = field(default_factory=deque)
    _seen: dict = field(default_factory=dict)  # the pool's totals at the last report

    def plan(self, batches: list[torch.Tensor]) -> None:
        self._plan = deque(batches)
        self._inflight.clear()
        self._fill()

    def _fill(self) -> None:
        while self._plan and len(self._inflight) < self.prefetch:
            self._inflight.append(self._submit(self._plan.popleft()))

    def _submit(self, idx: torch.Tensor) -> tuple:
        return idx, self.pool.submit(self.queries[idx], self.temperature)

    def report(self) -> dict:
        """Since this client's last report: the pool's cache hit rate (all its clients together) and
        how long this client's steps waited for their targets."""
        now, waits = self.pool.stats(), self.waits
        stats = {k: v - self._seen.get(k, 0) for k, v in now.items()}
        self._seen, self.waits = now, []
        return {"steps": len(waits), "wait_mean_s": sum(waits) / max(len(waits), 1), "wait_total_s": sum(waits),
                "queries": stats.get("queries", 0), "scored": stats.get("scored", 0),
                "cache_hit_rate": stats.get("cache_hits", 0) / max(stats.get("queries", 0), 1),
                "pool_busy_s": stats.get("seconds", 0.0)}

    def get(self, idx: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor | TopKTargets:
        """The scores of training queries ``idx`` (TeacherPool.collect; ``columns``: those entities' only)."""
        if self._inflight and torch.equal(self._inflight[0][0], idx):
            _, refs = self._inflight.popleft()
        else:  # not planned (or the plan was abandoned): fetch now
            self._plan.clear()
            self._inflight.clear()
            _, refs = self._submit(idx)
        t0 = time.perf_counter()
        scores = self.pool.collect(refs, self.temperature, columns)
        self.waits.append(time.perf_counter() - t0)
        self._fill()
        return scores


def _reads_text(run: Path) -> bool:
    """Whether the LLM teacher run in ``run`` reads queries as text (``llm.query: text``)."""
    from distkg.runfolder import run_config

    return run_config(run).llm.query == "text"


def soft_targets(pools: dict[str, TeacherPool], cfg: RunConfig, dataset: TKGDataset) -> dict[str, SoftTargets]:
    """One student's clients of its pools ({"llm": ..., "kg": ...}), by training-query index: what
    ``distill.runner.distill`` reads as ``remote``. A top-k KG pool sends kd's top k with the rest
    mass at kd's temperature (losses.TopKTargets)."""
    queries, _ = training_queries(dataset.splits["train"], dataset.num_relations)
    with_rows = torch.cat([queries, (torch.arange(len(queries)) % len(dataset.splits["train"])).unsqueeze(1)], dim=1)
    return {name: SoftTargets(pool, with_rows if pool.wants_rows else queries, cfg.runtime.prefetch,
                              kd_temperature(cfg) if name == "kg" else None) for name, pool in pools.items()}
