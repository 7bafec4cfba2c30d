"""The frozen-feature disk cache (distkg.llm.features): a hit only under the exact key, never stale."""

from __future__ import annotations

import pytest
import torch

from distkg.config import load_config
from distkg.llm.features import feature_key, feature_path, frozen_features
from distkg.llm.train import build_teacher, train_teacher
from tests.helpers import tiny_dataset


def cfg_for(model: str, *sets: str):
    return load_config(None, [f"llm.model={model}", "llm.quantization=none", "llm.dim=8", "llm.feature_cache=true",
                              "llm.valid_queries=0", "llm.progress=false", "eval.progress=false", *sets])


@pytest.fixture(scope="module")
def ds():
    return tiny_dataset("point", n_ent=15, n_facts=60)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTKG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_second_call_reads_the_same_features_from_disk(tiny_llama, ds):
    teacher = build_teacher(cfg_for(tiny_llama), ds)
    first, hit = frozen_features(teacher, cfg_for(tiny_llama))
    assert not hit and all(feature_path(feature_key(teacher, cfg_for(tiny_llama), kind)).is_file() for kind in teacher.texts)
    again = build_teacher(cfg_for(tiny_llama), ds)
    calls = again.encoder.stats.forward_calls
    second, hit = frozen_features(again, cfg_for(tiny_llama))
    assert hit and again.encoder.stats.forward_calls == calls  # no LLM work
    for kind in first:
        torch.testing.assert_close(second[kind], first[kind])
    # the encoder was handed them: encoding a text now is a cache hit
    again.embed("entity", torch.arange(ds.num_entities))
    assert again.encoder.stats.forward_calls == calls


@pytest.mark.parametrize("change", [("llm.entity_text=facts",), ("llm.max_tokens=5",), ("llm.layers=1",)])
def test_the_key_follows_texts_tokens_and_layers(tiny_llama, ds, change):
    base = feature_key(build_teacher(cfg_for(tiny_llama), ds), cfg_for(tiny_llama), "entity")
    assert feature_key(build_teacher(cfg_for(tiny_llama, *change), ds), cfg_for(tiny_llama, *change), "entity") != base


def test_a_lora_step_changes_the_key_so_no_stale_features(tiny_llama, ds):
    cfg = cfg_for(tiny_llama)
    teacher = build_teacher(cfg, ds)
    frozen_features(teacher, cfg)
    with torch.no_grad():
        next(p for n, p in teacher.lm_model.named_parameters() if "lora_B" in n).add_(0.5)
    teacher.encoder.mark_updated()
    feats, hit = frozen_features(teacher, cfg)
    assert not hit
    assert not torch.allclose(feats["entity"], build_teacher(cfg, ds).features()["entity"].cpu())


def test_a_file_with_another_key_is_not_served(tiny_llama, ds):
    cfg = cfg_for(tiny_llama)
    teacher = build_teacher(cfg, ds)
    path = feature_path(feature_key(teacher, cfg, "entity"))
    path.parent.mkdir(parents=True)
    wrong = torch.zeros(len(teacher.texts["entity"]), teacher.head.in_features)
    torch.save({"key": "something-else", "features": wrong}, path)
    feats, hit = frozen_features(teacher, cfg)
    assert not hit and feats["entity"].abs().sum() > 0


def test_head_warmup_reuses_the_cache_and_gives_the_same_teacher(tiny_llama, ds, tmp_path):
    cfg = cfg_for(tiny_llama, "llm.head_epochs=2", "llm.steps=0", "llm.objective=infonce", "llm.head_queries_per_step=16")
    cold = train_teacher(cfg, tmp_path / "a", dataset=ds)
    warm = train_teacher(cfg, tmp_path / "b", dataset=ds)
    assert cold["head_warmup"]["feature_cache_hit"] is False and warm["head_warmup"]["feature_cache_hit"] is True
    assert warm["mrr"] == pytest.approx(cold["mrr"], abs=1e-6)
    assert warm["encoder"]["texts_encoded"] == 0  # evaluation read the cached features too (adapters unchanged)


def test_fresh_adapters_share_their_features_whatever_the_seed(tiny_llama, ds):
    # lora_B starts at zero: fresh adapters add exact zeros until a step, so no seed re-encodes its texts
    cfg = cfg_for(tiny_llama)
    fresh = {feature_key(build_teacher(c, ds), c, "entity") for c in (cfg, cfg_for(tiny_llama, "seed=3"))}
    assert len(fresh) == 1 and feature_key(build_teacher(cfg, ds, lora=False), cfg, "entity") not in fresh
