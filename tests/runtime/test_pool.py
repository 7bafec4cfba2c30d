"""The teacher scoring pool on a real 2-node Ray cluster: exact scores, top k, the cache, prefetch
and a killed actor. (Unit tests of the pure parts first; they need no Ray.)"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from distkg.config import RuntimeConfig
from distkg.runtime.pool import merge_topk, shard_bounds

TEACHER = {"teacher": 1.0}  # custom resource only the head node has


def test_shards_cover_every_entity_once():
    for n, k in [(40, 2), (41, 3), (5, 5), (10623, 4)]:
        bounds = shard_bounds(n, k)
        assert bounds[0][0] == 0 and bounds[-1][1] == n and len(bounds) == k
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert max(hi - lo for lo, hi in bounds) - min(hi - lo for lo, hi in bounds) <= 1


def test_merged_shard_topk_is_the_global_topk():
    scores = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    parts = []
    for lo, hi in shard_bounds(50, 3):
        v, i = scores[:, lo:hi].topk(4, dim=1)
        parts.append((v, i + lo))
    dense = merge_topk(parts, 4, 50)
    v, i = scores.topk(4, dim=1)
    assert torch.equal(dense.gather(1, i), v) and int(torch.isfinite(dense).sum()) == 6 * 4
    probs = torch.softmax(dense, dim=1)
    assert torch.allclose(probs.sum(1), torch.ones(6)) and torch.allclose(probs.gather(1, i), torch.softmax(v, 1))


def test_merged_shard_topk_keeps_the_rest_mass():
    from distkg.runtime.pool import merge_topk_rest

    scores = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    parts = []
    for lo, hi in shard_bounds(50, 3):
        v, i = scores[:, lo:hi].topk(4, dim=1)
        parts.append((v, i + lo, torch.logsumexp(scores[:, lo:hi] / 2.0, dim=1)))
    top = merge_topk_rest(parts, 4, 2.0)
    v, i = scores.topk(4, dim=1)
    assert torch.equal(top.ids, i) and top.temperature == 2.0
    full = torch.log_softmax(scores / 2.0, dim=1)  # probabilities over the whole row, not the renormalised top 4
    torch.testing.assert_close(top.log_probs, full.gather(1, i))
    assert (top.log_probs.exp().sum(1) < 1).all()


def test_deepspeed_only_where_it_does_work():
    from distkg.runtime.pool import deepspeed_skipped

    rc = RuntimeConfig()
    assert "4-bit" in deepspeed_skipped(rc, on_cuda=True, quantized=True)
    assert "CPU" in deepspeed_skipped(rc, on_cuda=False, quantized=False)
    assert "tp_size 1" in deepspeed_skipped(rc, on_cuda=True, quantized=False)  # nothing for the engine to do
    assert deepspeed_skipped(dataclasses.replace(rc, tp_size=2), on_cuda=True, quantized=False) is None
    assert deepspeed_skipped(dataclasses.replace(rc, deepspeed_inference="on"), on_cuda=False, quantized=True) is None
    assert deepspeed_skipped(dataclasses.replace(rc, deepspeed_inference="off"), on_cuda=True, quantized=False) is not None


@pytest.fixture(scope="module")
def graph(tiny_runs):
    from distkg.data import load_dataset
    from distkg.training.trainer import training_queries

    ds = load_dataset(tiny_runs.student("plain").data)
    return ds, training_queries(ds.splits["train"], ds.num_relations)[0]


def test_pool_scores_equal_the_in_process_teachers(cluster, tiny_runs, graph):
    import ray

    from distkg.distill.teachers import KGTeacher, LLMTables
    from distkg.runtime.pool import TeacherPool

    ds, queries = graph
    rc = RuntimeConfig(teacher_actors=2, teacher_resources=TEACHER)
    # "on": the real engine and its output check, which auto skips on a CPU (test_deepspeed_only_where_it_does_work)
    llm = TeacherPool("llm", tiny_runs.llm, ds.num_entities, dataclasses.replace(rc, deepspeed_inference="on"),
                      str(tiny_runs.data))
    kg = TeacherPool("kg", tiny_runs.teacher, ds.num_entities, dataclasses.replace(rc, soft_targets="topk", topk=5),
                     str(tiny_runs.data))
    try:
        infos = llm.ready(timeout=120)
        head = next(n["NodeID"] for n in ray.nodes() if n["Resources"].get("teacher"))
        assert {i["node_id"] for i in infos} == {head} and [i["shard"] for i in infos] == [[0, 20], [20, 40]]
        assert infos[0]["engine"] == "InferenceEngine"  # DeepSpeed, CPU
        q = queries[:64]
        assert torch.allclose(llm.score(q), LLMTables(tiny_runs.llm, ds).scores(q), atol=1e-6)
        ref = KGTeacher(tiny_runs.teacher, ds, queries).scores(torch.arange(64))
        top = kg.score(q)
        v, i = ref.topk(5, dim=1)
        assert torch.allclose(top.gather(1, i), v, atol=1e-6) and int(torch.isfinite(top).sum()) == 64 * 5
        rest = kg.score(q, temperature=2.0)  # kd's view: the top 5 with their mass over the whole row
        assert torch.equal(rest.ids, i)
        torch.testing.assert_close(rest.log_probs, torch.log_softmax(ref / 2.0, dim=1).gather(1, i), atol=1e-5, rtol=1e-5)
        # each distinct query is scored once per teacher version; a repeat is a cache hit in every shard
        before = llm.stats()
        llm.score(q)
        after = llm.stats()
        assert {k: after[k] - before[k] for k in ("queries", "cache_hits", "scored")} == {
            "queries": 128, "cache_hits": 128, "scored": 0}
    finally:
        llm.shutdown()
        kg.shutdown()


def test_a_tensor_parallel_group_scores_as_one_actor(cluster, tiny_runs, graph):
    """runtime.tp_size=2 (issue 28 item 3): one shard is two actors in a gloo process group (NCCL on
    GPUs); DeepSpeed inference shards the unquantized LM's layers over them (AutoTP), each holds
    part of its weights, and the pool's scores equal the in-process teacher's (float32 on CPU)."""
    from distkg.distill.teachers import LLMTables
    from distkg.runtime.pool import TeacherPool

    ds, queries = graph
    rc = RuntimeConfig(teacher_actors=1, teacher_resources=TEACHER, tp_size=2)
    pool = TeacherPool("llm", tiny_runs.llm, ds.num_entities, rc, str(tiny_runs.data))
    try:
        (info,) = pool.ready(timeout=300)  # the first run on a machine builds DeepSpeed's CPU all-reduce (~30 s)
        assert info["engine"] == "InferenceEngine" and info["tp_size"] == 2
        members = info["tp_members"]
        assert [m["rank"] for m in members] == [0, 1]
        for m in members:  # the embeddings stay whole; the attention and MLP projections are halved
            assert 0.3 < m["lm_bytes_held"] / m["lm_bytes_full"] < 0.8, members
        q = queries[:64]
        torch.testing.assert_close(pool.score(q), LLMTables(tiny_runs.llm, ds).scores(q), atol=1e-5, rtol=1e-4)
        pool.score(q)  # both members answer from their caches: the group stays in step
        assert pool.stats()["cache_hits"] == 64
    finally:
        pool.shutdown()


def test_tensor_parallel_is_checked_before_ray_starts(tiny_runs, tmp_path):
    import shutil

    import yaml

    from distkg.errors import ConfigError
    from distkg.runtime.pool import check_tensor_parallel

    rc = RuntimeConfig(tp_size=2)
    check_tensor_parallel(rc, "llm", tiny_runs.llm)  # unquantized: fine
    check_tensor_parallel(RuntimeConfig(), "kg", tiny_runs.teacher)  # tp_size 1: nothing to check
    with pytest.raises(ConfigError, match="KG model's run"):
        check_tensor_parallel(rc, "kg", tiny_runs.teacher)
    with pytest.raises(ConfigError, match="deepspeed_inference=off"):
        check_tensor_parallel(dataclasses.replace(rc, deepspeed_inference="off"), "llm", tiny_runs.llm)
    nf4 = tmp_path / "nf4"
    shutil.copytree(tiny_runs.llm, nf4)
    saved = yaml.safe_load((nf4 / "config.yaml").read_text())
    saved["llm"]["quantization"] = "nf4"
    (nf4 / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match="4-bit"):
        check_tensor_parallel(rc, "llm", nf4)


def test_pool_low_rank_rows(cluster, tiny_runs, graph):
    from distkg.distill.teachers import KGTeacher
    from distkg.runtime.pool import TeacherPool, low_rank_basis

    ds, queries = graph
    rc = RuntimeConfig(teacher_actors=2, teacher_resources=TEACHER)
    local = KGTeacher(tiny_runs.teacher, ds, queries)
    ref = local.scores(torch.arange(64))
    d, q = local.table.shape[1], queries[:64]

    def served(**runtime):  # one pool at a time: the head holds {teacher: 4}, two actors a pool
        return TeacherPool("kg", tiny_runs.teacher, ds.num_entities, dataclasses.replace(rc, **runtime),
                           str(tiny_runs.data))

    for rank in (d, 2):
        pool = served(soft_targets="lowrank", rank=rank)
        try:
            pool.ready(timeout=120)
            basis = low_rank_basis(local.table, rank)
            want = ref if rank == d else (local.query[:64] @ basis) @ (local.table @ basis).T  # rank = D: exact rows
            torch.testing.assert_close(pool.score(q), want, atol=1e-4, rtol=1e-4)
            cols = torch.tensor([0, 3, 5, ds.num_entities - 1])  # a sampled loss's candidates: their r-products only
            torch.testing.assert_close(pool.collect(pool.submit(q), columns=cols), want[:, cols], atol=1e-4, rtol=1e-4)
        finally:
            pool.shutdown()



def test_prefetch_keeps_batches_in_flight(cluster, tiny_runs, graph):
    from distkg.runtime.pool import SoftTargets, TeacherPool

    ds, queries = graph
    pool = TeacherPool("kg", tiny_runs.teacher, ds.num_entities, RuntimeConfig(teacher_actors=1, teacher_resources=TEACHER),
                       str(tiny_runs.data))
    try:
        targets = SoftTargets(pool, queries, prefetch=2)
        batches = list(torch.arange(40).split(10))
        targets.plan(batches)
        assert len(targets._inflight) == 2
        first = targets.get(batches[0])
        assert len(targets._inflight) == 2 and torch.equal(first, pool.score(queries[:10]))
        assert torch.equal(targets.get(batches[3]), pool.score(queries[30:40]))  # off-plan: fetched at once
    finally:
        pool.shutdown()


@pytest.mark.faults
def test_a_killed_teacher_actor_is_replaced_and_the_run_matches(cluster, tiny_runs, tmp_path, monkeypatch, record):
    """Kill an LLM scoring actor mid-run: Ray restarts it, its in-flight calls are retried, and the
    student ends with the same metrics as an undisturbed run (tolerance 1e-6: the same arithmetic)."""
    import ray

    from distkg.data import load_dataset
    from distkg.distill.runner import distill
    from distkg.runtime.pool import TeacherPool, soft_targets
    from distkg.training import trainer

    cfg = tiny_runs.student("ours", "distill.stages.0.epochs=1", "distill.stages.1.epochs=2",
                            "runtime.teacher_actors=2", "runtime.teacher_resources={teacher: 1}")
    undisturbed = distill(cfg, tmp_path / "local")  # in-process teachers
    ds = load_dataset(cfg.data)
    pool = TeacherPool("llm", tiny_runs.llm, ds.num_entities, cfg.runtime, str(tiny_runs.data))
    try:
        before = pool.ready(timeout=120)
        killed = []

        def kill(epoch: int, step: int) -> None:
            if (epoch, step) == (1, 2):  # stage 2, batches already in flight
                ray.kill(pool.actors[0], no_restart=False)
                killed.append(step)

        monkeypatch.setattr(trainer, "_after_step", kill)
        got = distill(cfg, tmp_path / "pool", dataset=ds, remote=soft_targets({"llm": pool}, cfg, ds))
        after = pool.ready(timeout=120)
    finally:
        pool.shutdown()
    assert killed and after[0]["pid"] != before[0]["pid"] and after[1]["pid"] == before[1]["pid"]
    rows = [json.loads(line) for line in (tmp_path / "pool" / "runtime" / "targets-0.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[0]["steps"] == 0  # stage 1 does not read P_LLM
    assert rows[1]["steps"] == rows[2]["steps"] > 0 and rows[2]["cache_hit_rate"] > 0
    for key in ("mrr", "mr", "hits@1", "hits@10"):
        assert got[key] == pytest.approx(undisturbed[key], abs=1e-6)
    record("distill (Ray scoring pool)", "an LLM scoring actor killed mid-epoch (loopback cluster)",
           "Ray restarts it, in-flight calls are retried: rc 0, metrics within 1e-6 of in-process teachers")
