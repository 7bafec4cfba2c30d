"""The InfoNCE objective (distkg.llm.contrastive) on a tiny Llama: masking, one forward call per
step, LoRA learning through the fresh rows, the curve, exact resume, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distkg.errors import ConfigError
from distkg.evaluation import FilterIndex, QuerySet, build_queries
from distkg.llm.contrastive import full_cache, infonce_loss, masked_logits, step_texts
from distkg.llm.train import build_teacher, train_teacher, load_teacher
from tests.helpers import tiny_dataset
from tests.llm.test_teacher import cfg_for


@pytest.fixture(scope="module")
def ds():
    return tiny_dataset("point", n_ent=20, n_facts=80)


def infonce_cfg(model: str, **llm):
    return cfg_for(model, objective="infonce", queries_per_step=8, refresh_every=2, **llm)


def test_other_training_answers_of_the_same_key_are_masked_not_the_own():
    # two training facts share (entity 0, relation 1, time key 3): answers 5 and 6
    facts = np.array([[0, 1, 5, 3, 3, 3], [0, 1, 6, 3, 3, 3], [0, 1, 7, 4, 4, 4]])
    index = FilterIndex(facts, num_relations=2, mode="time")
    qs = build_queries(facts, 2)
    batch = QuerySet(qs.queries[:3], qs.answers[:3], qs.keys[:3], num_tail=3)
    out = masked_logits(torch.zeros(3, 8), batch, index)
    assert out[0, 6] == float("-inf") and out[1, 5] == float("-inf")  # each other's answer
    assert torch.isfinite(out[0, 5]) and torch.isfinite(out[1, 6])  # the own answer stays
    assert torch.isfinite(out[2]).all()  # another time key: nothing to mask


def test_a_step_is_one_forward_call_and_trains_adapters_through_the_query_side(tiny_llama, ds):
    cfg = infonce_cfg(tiny_llama)
    teacher = build_teacher(cfg, ds)
    cache = full_cache(teacher)["entity"]
    qs = build_queries(ds.splits["train"], ds.num_relations)
    batch = QuerySet(qs.queries[:8], qs.answers[:8], qs.keys[:8], num_tail=8)
    calls = teacher.encoder.stats.forward_calls
    teacher.train()
    loss, n_texts = infonce_loss(teacher, cache, batch, FilterIndex(ds.splits["train"], ds.num_relations))
    assert teacher.encoder.stats.forward_calls == calls + 1
    q = batch.queries
    assert n_texts == len(np.unique(q[:, 0])) + len(np.unique(q[:, 1])) + len(np.unique(q[:, 2:]))
    loss.backward()
    lora_grads = [p.grad for n, p in teacher.named_parameters() if "lora_B" in n]
    assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)
    assert teacher.head.weight.grad.abs().sum() > 0 and teacher.logit_scale.grad is not None


def test_every_candidate_comes_from_the_cache_none_fresh(tiny_llama, ds):
    """No candidate row is encoded fresh (a fresh answer row is a shortcut, contrastive.py's docstring):
    with one cached state for all entities, every unmasked candidate scores the same."""
    teacher = build_teacher(infonce_cfg(tiny_llama), ds).eval()
    cache = torch.zeros(ds.num_entities, teacher.head.in_features)
    qs = build_queries(ds.splits["train"], ds.num_relations)
    batch = QuerySet(qs.queries[:1], qs.answers[:1], qs.keys[:1], num_tail=1)
    index = FilterIndex(ds.splits["train"], ds.num_relations)
    loss, _ = infonce_loss(teacher, cache, batch, index)
    rows, _ = index.pairs(batch)
    assert loss.item() == pytest.approx(np.log(ds.num_entities - len(rows)), abs=1e-4)


def test_lengths_mode_runs_one_call_per_token_length_with_the_same_states(tiny_llama, ds):
    """llm.step_calls=lengths: no padding, one call per distinct token length; same hidden states (mean pooling
    over real tokens does not depend on padding), so the same loss up to float error."""
    teacher = build_teacher(infonce_cfg(tiny_llama, lora_dropout=0.0), ds).eval()
    cache = full_cache(teacher)["entity"]
    qs = build_queries(ds.splits["train"], ds.num_relations)
    batch = QuerySet(qs.queries[:8], qs.answers[:8], qs.keys[:8], num_tail=8)
    index = FilterIndex(ds.splits["train"], ds.num_relations)
    one, _ = infonce_loss(teacher, cache, batch, index, "one")
    calls = teacher.encoder.stats.forward_calls
    by_length, _ = infonce_loss(teacher, cache, batch, index, "lengths")
    texts, _ = step_texts(teacher, torch.from_numpy(batch.queries))
    assert teacher.encoder.stats.forward_calls - calls == len(set(teacher.encoder._lengths(texts))) > 1
    torch.testing.assert_close(one, by_length, rtol=1e-4, atol=1e-4)


def test_infonce_training_records_a_curve_resumes_exactly_and_saves(tiny_llama, ds, tmp_path):
    straight = train_teacher(infonce_cfg(tiny_llama, steps=4), tmp_path / "a", dataset=ds)
    assert straight["objective"] == "infonce" and straight["steps"] == 4
    assert [p["step"] for p in straight["curve"]] == [0, 2, 4] and straight["llm_texts"] > 0
    assert straight["curve"][-1]["valid_mrr"] == pytest.approx(straight["valid_mrr"], abs=1e-4)
    train_teacher(infonce_cfg(tiny_llama, steps=2), tmp_path / "b", dataset=ds)  # "interrupted" after step 2
    resumed = train_teacher(infonce_cfg(tiny_llama, steps=4), tmp_path / "b", dataset=ds)
    assert resumed["steps"] == 4 and resumed["mrr"] == pytest.approx(straight["mrr"], abs=1e-6)
    cfg = infonce_cfg(tiny_llama, steps=4)
    q = torch.from_numpy(ds.splits["test"][:, [0, 1, 3, 4]].copy())
    loaded = load_teacher(tmp_path / "a" / "teacher", cfg, ds).score_candidates(q, 0, ds.num_entities)
    assert not torch.allclose(loaded, build_teacher(cfg, ds).score_candidates(q, 0, ds.num_entities))


def test_bad_objective_is_a_config_error(tiny_llama):
    with pytest.raises(ConfigError, match="objective"):
        cfg_for(tiny_llama, objective="contrastive")


def test_step_head_lr_sets_the_heads_rate_in_the_infonce_steps(tiny_llama, ds, tmp_path):
    """llm.step_head_lr=0: the head stays as built (no warm-up here) while the adapters train."""
    cfg = infonce_cfg(tiny_llama, steps=2, step_head_lr=0.0)
    train_teacher(cfg, tmp_path, dataset=ds)
    trained, fresh = load_teacher(tmp_path / "teacher", cfg, ds), build_teacher(cfg, ds)
    torch.testing.assert_close(trained.head.weight, fresh.head.weight)
    assert any(p.abs().sum() > 0 for n, p in trained.named_parameters() if "lora_B" in n)


def test_auto_step_calls_follow_the_resolved_device(tiny_llama, ds, tmp_path, monkeypatch):
    """llm.step_calls: auto (the default) takes one padded call on CUDA and per-length calls elsewhere."""
    from distkg.device import placement
    from distkg.llm import contrastive

    seen: list[str] = []
    real = contrastive.infonce_loss

    def spy(teacher, cache, batch, index, step_calls="one", rows=None):
        seen.append(step_calls)
        return real(teacher, cache, batch, index, step_calls, rows)

    monkeypatch.setattr(contrastive, "infonce_loss", spy)
    cfg = infonce_cfg(tiny_llama, steps=1)
    assert cfg.llm.step_calls == "auto"
    train_teacher(cfg, tmp_path / "run", dataset=ds)
    assert seen == ["one" if placement(cfg).llm_device.type == "cuda" else "lengths"]
