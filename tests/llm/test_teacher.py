"""The LLM teacher on a tiny Llama: LoRA trains only adapters, save/load round trip, cache, errors."""

from __future__ import annotations

import json
import logging
import re
import sys

import pytest
import torch

from distkg.config import load_config
from distkg.errors import ConfigError
from distkg.llm.train import build_teacher, train_teacher, load_teacher
from distkg.llm.loading import load_lm
from distkg.training.checkpoint import CheckpointError
from tests.helpers import tiny_dataset


def cfg_for(model: str, **llm):
    sets = [f"llm.model={model}", "llm.quantization=none", "llm.dim=16", "llm.steps=3", "llm.queries_per_step=4",
            "llm.negatives=8", "llm.checkpoint_every=2", "llm.valid_queries=0", "llm.progress=false",
            "eval.progress=false"] + [f"llm.{k}={v}" for k, v in llm.items()]
    return load_config(None, sets)


@pytest.fixture(scope="module")
def ds():
    return tiny_dataset("point", n_ent=20, n_facts=80)


def test_lora_step_changes_only_adapters_and_head(tiny_llama, ds, tmp_path):
    cfg = cfg_for(tiny_llama, steps=1)
    teacher = build_teacher(cfg, ds)
    before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    opt = torch.optim.AdamW([p for p in teacher.parameters() if p.requires_grad], lr=1e-2)
    q = torch.from_numpy(ds.splits["train"][:4][:, [0, 1, 3, 4]].copy())
    cands = torch.arange(ds.num_entities)
    target = torch.from_numpy(ds.splits["train"][:4, 2].copy()).to(teacher.device)  # scores live on the LM's device
    loss = torch.nn.functional.cross_entropy(teacher.score_sampled(q, cands), target)
    loss.backward()
    opt.step()
    changed = {n for n, p in teacher.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n or n.startswith("head.") or n == "logit_scale" for n in changed)
    assert any("lora_" in n for n in changed) and "head.weight" in changed


def test_train_save_load_round_trip_gives_identical_scores(tiny_llama, ds, tmp_path):
    cfg = cfg_for(tiny_llama)
    metrics = train_teacher(cfg, tmp_path, dataset=ds)
    assert metrics["steps"] == 3 and 0 < metrics["mrr"] <= 1 and {"mrr", "hits@10"} <= metrics.keys()
    assert json.loads((tmp_path / "metrics.json").read_text())["mrr"] == metrics["mrr"]
    q = torch.from_numpy(ds.splits["test"][:, [0, 1, 3, 4]].copy())
    a = load_teacher(tmp_path / "teacher", cfg, ds)
    b = load_teacher(tmp_path / "teacher", cfg, ds)
    sa = a.score_candidates(q, 0, ds.num_entities)
    torch.testing.assert_close(sa, b.score_candidates(q, 0, ds.num_entities))
    fresh = build_teacher(cfg, ds)  # untrained: the loaded one must differ from it
    assert not torch.allclose(sa, fresh.score_candidates(q, 0, ds.num_entities))
    p = a.distribution(q).cpu()
    torch.testing.assert_close(p.sum(1), torch.ones(len(q)))


def test_resume_continues_from_the_checkpoint(tiny_llama, ds, tmp_path, caplog):
    straight = train_teacher(cfg_for(tiny_llama, steps=4), tmp_path / "a", dataset=ds)
    train_teacher(cfg_for(tiny_llama, steps=2), tmp_path / "b", dataset=ds)  # "interrupted" after step 2
    resumed = train_teacher(cfg_for(tiny_llama, steps=4), tmp_path / "b", dataset=ds)
    assert resumed["steps"] == 4
    assert resumed["mrr"] == pytest.approx(straight["mrr"], abs=1e-6)
    # one checkpoint format with the KG trainer (distkg.training.loop): a damaged newest checkpoint is
    # named and the one before it resumed, exactly; none intact is an error naming the folder
    newest = tmp_path / "b" / "checkpoints" / "round_0002.pt"
    newest.write_bytes(newest.read_bytes()[:50])  # truncated
    with caplog.at_level(logging.WARNING, logger="distkg"):
        again = train_teacher(cfg_for(tiny_llama, steps=4), tmp_path / "b", dataset=ds)
    assert re.search(r"round_0002\.pt cannot be read .*truncated or corrupt", caplog.text)
    assert again["mrr"] == straight["mrr"] and again["steps"] == 4
    for path in (tmp_path / "b" / "checkpoints").glob("round_*.pt"):
        path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match=r"no intact checkpoint in .*checkpoints \(round_0001\.pt, round_0002\.pt"):
        train_teacher(cfg_for(tiny_llama, steps=6), tmp_path / "b", dataset=ds)


def test_a_run_folder_of_the_old_llm_checkpoint_format_is_refused_by_name(tiny_llama, ds, tmp_path):
    """Before the one training loop, LLM fine-tuning kept checkpoints/latest/{state.pt, adapter, head.pt}:
    such a folder is not resumed (nor silently restarted) but refused, naming the file and --restart."""
    old = tmp_path / "checkpoints" / "latest" / "state.pt"
    old.parent.mkdir(parents=True)
    torch.save({"state": {"step": 2}}, old)
    with pytest.raises(CheckpointError, match=r"checkpoints/latest/state\.pt was written by the LLM fine-tuning loop .*--restart"):
        train_teacher(cfg_for(tiny_llama, steps=2), tmp_path, dataset=ds)
    assert train_teacher(cfg_for(tiny_llama, steps=2), tmp_path, resume=False, dataset=ds)["steps"] == 2


def test_time_budget_stops_training(tiny_llama, ds, tmp_path):
    """A spent budget (here: none at all) ends the LoRA steps at once."""
    assert train_teacher(cfg_for(tiny_llama, steps=5, max_minutes=0), tmp_path / "a", dataset=ds)["steps"] == 0


def test_cache_hits_skip_the_model(tiny_llama, ds):
    teacher = build_teacher(cfg_for(tiny_llama), ds)
    enc = teacher.encoder
    first = teacher.candidate_table()
    calls = enc.stats.forward_calls
    again = teacher.candidate_table()
    assert enc.stats.forward_calls == calls and enc.stats.cache_hits >= ds.num_entities
    torch.testing.assert_close(first, again)
    with torch.no_grad():  # a weights change is a new version: texts are encoded again
        next(p for p in teacher.lm_model.parameters() if p.requires_grad).add_(0.5)
    enc.mark_updated()
    teacher.candidate_table()
    assert enc.stats.forward_calls > calls


def test_length_buckets_reduce_padding(tiny_llama):
    from distkg.llm.encoder import TextEncoder

    lm = load_lm(tiny_llama, "none", "cpu")
    texts = [("x" * (1 + (i * 7) % 25)) + str(i) for i in range(64)]
    bucketed = TextEncoder(lm, batch_size=8)
    bucketed.encode(texts)
    unsorted = TextEncoder(lm, batch_size=8)
    for b in range(0, 64, 8):  # the naive way: padded batches in file order
        unsorted._run(texts[b : b + 8])
    assert bucketed.stats.padding_share == 0 < unsorted.stats.padding_share
    graded = TextEncoder(lm, batch_size=8)  # the fine-tuning path buckets too, and gives the same vectors
    torch.testing.assert_close(graded.encode(texts, grad=True), bucketed.encode(texts), atol=1e-5, rtol=1e-4)
    assert graded.stats.padding_share == 0


def test_nf4_base_with_lora(tiny_llama, ds):
    teacher = build_teacher(cfg_for(tiny_llama, quantization="nf4"), ds)
    kinds = {type(m).__name__ for m in teacher.lm_model.modules()}
    assert "Linear4bit" in kinds or any("4bit" in k for k in kinds)
    q = torch.from_numpy(ds.splits["test"][:3][:, [0, 1, 3, 4]].copy())
    assert torch.isfinite(teacher.score_candidates(q, 0, ds.num_entities)).all()


def test_bad_input_errors(tiny_llama, ds, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="llm.model='no/such-model' cannot be loaded"):
        load_lm("no/such-model", "none", "cpu")
    train_teacher(cfg_for(tiny_llama, steps=1), tmp_path, dataset=ds)
    with pytest.raises(ConfigError, match="does not match base model"):
        load_teacher(tmp_path / "teacher", cfg_for(tiny_llama, dim=8), ds)
    with pytest.raises(ConfigError, match="trained on llm.model="):
        load_teacher(tmp_path / "teacher", cfg_for(str(tmp_path)), ds)
    # stands in for a machine where bitsandbytes is missing: its import fails
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ConfigError, match="nf4 needs a working bitsandbytes"):
        load_lm(tiny_llama, "nf4", "cpu")


def test_length_batches_have_one_length_each():
    from distkg.llm.encoder import length_batches

    texts = [f"t{i}" for i in range(10)]
    lengths = [3, 1, 3, 2, 1, 3, 3, 2, 1, 3]
    batches = length_batches(texts, lengths, batch_size=2)
    assert sorted(t for b in batches for t in b) == sorted(texts)
    assert all(len(b) <= 2 and len({lengths[texts.index(t)] for t in b}) == 1 for b in batches)
    assert [lengths[texts.index(b[0])] for b in batches] == [1, 1, 2, 3, 3, 3]


def test_gpu_batching_pads_few_calls_and_keeps_the_vectors(tiny_llama):
    """The CUDA path (length-sorted batches, right-padded to a multiple of 8) run on the CPU: the same
    pooled vectors as exact-length batches, in fewer forward calls, with and without gradients."""
    from distkg.llm.encoder import TextEncoder

    lm = load_lm(tiny_llama, "none", "cpu")
    texts = [("x" * (1 + (i * 7) % 25)) + str(i) for i in range(64)]
    exact, padded = TextEncoder(lm, batch_size=32), TextEncoder(lm, batch_size=32, exact_lengths=False)
    torch.testing.assert_close(padded.encode(texts), exact.encode(texts), atol=1e-5, rtol=1e-4)
    assert padded.stats.forward_calls == 2 < exact.stats.forward_calls and padded.stats.padding_share > 0
    graded = TextEncoder(lm, exact_lengths=False)
    torch.testing.assert_close(graded.encode(texts, grad=True), exact.encode(texts), atol=1e-5, rtol=1e-4)
    assert graded.stats.forward_calls == 1


def test_no_gradient_checkpointing_in_qlora(tiny_llama, ds):
    """The 135M model fits any card: recomputing every layer in the backward pass would only cost time."""
    teacher = build_teacher(cfg_for(tiny_llama, quantization="nf4"), ds)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in teacher.lm_model.modules())


def test_a_fine_tuning_step_is_one_forward_call_on_the_gpu_path(tiny_llama, ds):
    """score_sampled sends the step's entity, relation, time and candidate texts through the LM together:
    one padded call on the GPU path, and the same scores as kind-by-kind embedding."""
    teacher = build_teacher(cfg_for(tiny_llama), ds)
    teacher.encoder.exact_lengths = False  # the CUDA batching, run on the CPU
    q = torch.from_numpy(ds.splits["train"][:4][:, [0, 1, 3, 4]].copy())
    cands = torch.arange(ds.num_entities)
    calls = teacher.encoder.stats.forward_calls
    together = teacher.score_sampled(q, cands)
    assert teacher.encoder.stats.forward_calls == calls + 1
    e, r = teacher.embed("entity", q[:, 0], grad=True), teacher.embed("relation", q[:, 1], grad=True)
    t = teacher.embed("time", torch.cat([q[:, 2], q[:, 3]]), grad=True)
    apart = teacher.match(teacher._query_from(q, e, r, t), teacher.embed("entity", cands, grad=True))
    torch.testing.assert_close(together, apart, atol=1e-5, rtol=1e-4)


def test_a_reloaded_4bit_teacher_scores_as_fine_tuning_recorded(tiny_llama, ds, tmp_path):
    """The metrics of fine-tuning are those of the saved teacher: with NF4 on a CPU with AVX512-BF16,
    bitsandbytes repacks the weights (bf16 scales) on the head warm-up's inference pass and back on
    saving, so the in-memory weights differed from the saved ones (by ~1e-5 of MRR on this graph)."""
    from distkg.llm.train import evaluate_teacher

    graph = tiny_dataset("interval", n_ent=40, n_facts=400)
    cfg = cfg_for(tiny_llama, quantization="nf4", dim=8, steps=3, head_epochs=1, head_queries_per_step=64)
    recorded = train_teacher(cfg, tmp_path / "run", dataset=graph)
    (tmp_path / "again").mkdir()
    again = evaluate_teacher(load_teacher(tmp_path / "run" / "teacher", cfg, graph), cfg, graph, tmp_path / "again", {})
    for key in ("mrr", "mr", "hits@1", "hits@10", "valid_mrr"):
        assert again[key] == recorded[key], key
