"""The head warm-up's options (distkg.llm.rounds): held-out texts (``llm.text_folds``); on the tiny random Llama."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from distkg.data.dataset import O, R, S
from distkg.llm.features import feature_key, frozen_features
from distkg.llm.train import build_teacher, train_teacher
from distkg.llm.prompts import entity_texts, held_out_texts
from distkg.llm.rounds import head_data, head_loss
from tests.llm.test_features import cache_dir, ds  # noqa: F401 (fixtures: a tiny dataset, a private cache root)
from tests.llm.test_teacher import cfg_for


def folds_cfg(model: str, **llm):
    return cfg_for(model, **{"entity_text": "facts", "entity_facts": 4, "feature_cache": "true", "text_folds": 2, **llm})


def test_held_out_features_are_the_fold_texts_and_cached_under_their_own_keys(tiny_llama, ds, cache_dir):
    cfg = folds_cfg(tiny_llama)
    teacher = build_teacher(cfg, ds)
    own, _ = frozen_features(teacher, cfg)
    data = head_data(teacher, cfg, ds, own)
    fold, texts = held_out_texts(ds, 4, 2, cfg.seed)
    assert teacher.texts["entity"] == entity_texts(ds, "facts", 4)  # restored after the folds were encoded
    assert torch.equal(data.fold, torch.cat([torch.from_numpy(fold)] * 2)) and len(data.fold) == len(data.queries)
    # a file per kind of the own texts (entity, relation, time) + the entity texts of each fold
    assert len({p.name for p in (cache_dir / "features").iterdir()}) == 5
    for f in range(2):
        other = build_teacher(cfg, ds)
        other.texts["entity"] = texts[f]
        torch.testing.assert_close(data.feats[f]["entity"], other.features()["entity"])
        assert feature_key(other, cfg, "entity") != feature_key(teacher, cfg, "entity")
        torch.testing.assert_close(data.feats[f]["relation"], own["relation"])
    assert not torch.allclose(data.feats[0]["entity"], data.feats[1]["entity"])


def test_each_query_is_scored_on_its_folds_features(tiny_llama, ds):
    cfg = folds_cfg(tiny_llama)
    teacher = build_teacher(cfg, ds)
    data = head_data(teacher, cfg, ds, frozen_features(teacher, cfg)[0])
    with torch.no_grad():
        for f in range(2):
            mine = torch.nonzero(data.fold == f).flatten()
            alone = F.cross_entropy(teacher.score_from_features(data.feats[f], data.queries[mine]), data.answers[mine])
            torch.testing.assert_close(head_loss(teacher, data, mine), alone)
        every = torch.arange(len(data.queries))
        parts = [F.cross_entropy(teacher.score_from_features(data.feats[f], data.queries[data.fold == f]),
                                 data.answers[data.fold == f], reduction="sum") for f in range(2)]
        torch.testing.assert_close(head_loss(teacher, data, every), sum(parts) / len(every))


def test_auto_folds_hold_texts_out_only_where_validation_rarely_repeats_training(tiny_llama, ds, caplog):
    """llm.text_folds=auto: two folds when under 5% of validation triples are training triples (YAGO11k:
    0%), own texts when more are (Wikidata12k: 29%); the decision is logged; names alone: no folds."""
    from distkg.llm.prompts import repeat_share
    from distkg.llm.rounds import text_folds

    train, valid = ds.splits["train"], ds.splits["valid"]
    known = {tuple(t) for t in train[:, [S, R, O]].tolist()}
    novel = valid[[tuple(t) not in known for t in valid[:, [S, R, O]].tolist()]]
    novel = np.resize(novel, (50, novel.shape[1]))  # 50 validation rows, none a training triple
    cfg = folds_cfg(tiny_llama, text_folds="auto")
    for repeats, folds in ((0, 2), (2, 2), (3, 1), (50, 1)):  # 0%, 3.8%, 5.7%, 50%
        split = dataclasses.replace(ds, splits={**ds.splits, "valid": np.concatenate([train[:repeats], novel])})
        assert (repeat_share(split) < 0.05) == (folds == 2)
        with caplog.at_level("INFO", logger="distkg"):
            assert text_folds(cfg, split) == folds
        assert "llm.text_folds=auto" in caplog.text
        caplog.clear()
    assert text_folds(cfg_for(tiny_llama, text_folds="auto"), ds) == 1  # entity_text: name
    teacher = build_teacher(cfg, ds)
    data = head_data(teacher, cfg, ds, frozen_features(teacher, cfg)[0])
    assert data.folds == text_folds(cfg, ds) == len(data.feats)


def test_training_with_held_out_texts(tiny_llama, ds, tmp_path):
    """The whole warm-up runs with folds; the saved teacher keeps its own texts."""
    cfg = folds_cfg(tiny_llama, steps=0, head_epochs=2, head_queries_per_step=32)
    metrics = train_teacher(cfg, tmp_path / "run", dataset=ds)
    assert metrics["head_warmup"]["epochs"] == 2 and 0 <= metrics["mrr"] <= 1
    plain = train_teacher(folds_cfg(tiny_llama, steps=0, head_epochs=2, head_queries_per_step=32, text_folds=1),
                     tmp_path / "plain", dataset=ds)
    assert metrics["head_warmup"]["losses"] != plain["head_warmup"]["losses"]
