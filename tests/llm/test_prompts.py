"""Entity texts with training facts (distkg.llm.prompts): only training facts, most telling first."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from distkg.config import load_config
from distkg.data.dataset import O, S
from distkg.errors import ConfigError
from distkg.llm.prompts import entity_texts
from tests.helpers import tiny_dataset


@pytest.fixture(scope="module")
def ds():
    return tiny_dataset("interval", n_ent=12, n_facts=60)


def neighbours_named(text: str, ds) -> set[int]:
    """Entities whose name appears as a whole phrase part in the facts part of ``text``."""
    facts = text.split(": ", 1)[1] if ": " in text else ""
    return {e for e, name in enumerate(ds.entity_text) for w in facts.split("; ")
            if w.startswith(name + " relation") or w.endswith(" " + name)}


def test_names_mode_is_the_dataset_text(ds):
    assert entity_texts(ds, "name") == ds.entity_text


def test_facts_never_come_from_validation_or_test(ds):
    """Texts depend on the training split alone: new validation/test facts change nothing, and every
    neighbour named is a training neighbour."""
    texts = entity_texts(ds, "facts", 50)
    rng = np.random.default_rng(1)
    other = {split: ds.splits[split].copy() for split in ("valid", "test")}
    for facts in other.values():
        facts[:, S], facts[:, O] = rng.permutation(facts[:, S]), rng.integers(0, ds.num_entities, len(facts))
    assert entity_texts(dataclasses.replace(ds, splits={**ds.splits, **other}), "facts", 50) == texts
    train = ds.splits["train"]
    for e, text in enumerate(texts):
        mine = train[(train[:, S] == e) | (train[:, O] == e)]
        allowed = set(mine[:, S].tolist()) | set(mine[:, O].tolist())
        assert neighbours_named(text, ds) <= allowed, text


def test_most_frequent_facts_first_and_capped(ds):
    """A fact repeated over time comes before one seen once; ``facts`` caps how many are written;
    direction is in the order of words."""
    train = ds.splits["train"].copy()
    repeated = np.array([[0, 1, 5, 0, 0, 0]] * 9 + [[7, 2, 0, 1, 1, 1]] * 8, dtype=np.int64)
    ds2 = dataclasses.replace(ds, splits={**ds.splits, "train": np.concatenate([train, repeated])})
    text = entity_texts(ds2, "facts", 2)[0]
    name, facts = text.split(": ", 1)
    assert name == ds.entity_text[0]
    assert facts.split("; ") == [f"{ds.relation_text[1]} {ds.entity_text[5]}", f"{ds.entity_text[7]} {ds.relation_text[2]}"]


def test_an_entity_without_training_facts_keeps_its_name(ds):
    train = ds.splits["train"]
    lonely = ds.num_entities - 1
    keep = (train[:, S] != lonely) & (train[:, O] != lonely)
    ds2 = dataclasses.replace(ds, splits={**ds.splits, "train": train[keep]})
    assert entity_texts(ds2, "facts", 8)[lonely] == ds.entity_text[lonely]


@pytest.mark.parametrize("key, value", [("entity_text", "neighbours"), ("entity_facts", "0")])
def test_bad_entity_text_settings_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=key):
        load_config(None, [f"llm.{key}={value}"])


def test_the_teacher_encodes_the_configured_entity_texts(ds, tiny_llama):
    from distkg.llm.train import build_teacher

    cfg = load_config(None, [f"llm.model={tiny_llama}", "llm.quantization=none", "llm.dim=8", "llm.entity_text=facts",
                             "llm.entity_facts=3"])
    assert build_teacher(cfg, ds).texts["entity"] == entity_texts(ds, "facts", 3) != ds.entity_text


def test_fact_folds_keep_each_triple_in_one_fold_and_are_balanced_and_seeded(ds):
    from distkg.data.dataset import R
    from distkg.llm.prompts import fact_folds

    train = ds.splits["train"]
    repeated = np.concatenate([train, train[:5]])  # the same triples at other rows (as at other times)
    fold = fact_folds(repeated, 2, seed=0)
    by_triple: dict = {}
    for row, triple in enumerate(map(tuple, repeated[:, [S, R, O]].tolist())):
        by_triple.setdefault(triple, set()).add(int(fold[row]))
    assert all(len(f) == 1 for f in by_triple.values())
    per_fold = np.bincount([next(iter(f)) for f in by_triple.values()], minlength=2)
    assert abs(per_fold[0] - per_fold[1]) <= 1
    assert np.array_equal(fact_folds(repeated, 2, seed=0), fold)
    assert not np.array_equal(fact_folds(repeated, 2, seed=1), fold)
    assert set(fact_folds(repeated, 3, seed=0).tolist()) == {0, 1, 2}


def test_held_out_texts_never_name_a_fact_of_their_own_fold(ds):
    """Fold f's texts name only neighbours linked by training facts outside fold f (so a training
    query of fold f never finds its own fact in a text), and never read validation or test facts."""
    from distkg.llm.prompts import held_out_texts

    fold, texts = held_out_texts(ds, 50, 2, seed=0)
    train = ds.splits["train"]
    assert len(texts) == 2 and texts[0] != texts[1]
    for f in range(2):
        kept = train[fold != f]
        for e, text in enumerate(texts[f]):
            mine = kept[(kept[:, S] == e) | (kept[:, O] == e)]
            assert neighbours_named(text, ds) <= set(mine[:, S].tolist()) | set(mine[:, O].tolist()), text
    # a fact of fold 0 whose two entities share no other training fact: neither text of fold 0 names the other
    pairs = [tuple(sorted(p)) for p in train[:, [S, O]].tolist()]
    lone = [i for i, p in enumerate(pairs) if pairs.count(p) == 1 and p[0] != p[1] and fold[i] == 0]
    assert lone
    s, o = train[lone[0], S], train[lone[0], O]
    assert o not in neighbours_named(texts[0][s], ds) and s not in neighbours_named(texts[0][o], ds)
    assert o in neighbours_named(texts[1][s], ds)  # the other fold's texts do name it
    rng = np.random.default_rng(1)
    other = {split: ds.splits[split].copy() for split in ("valid", "test")}
    for facts in other.values():
        facts[:, S], facts[:, O] = rng.permutation(facts[:, S]), rng.integers(0, ds.num_entities, len(facts))
    assert held_out_texts(dataclasses.replace(ds, splits={**ds.splits, **other}), 50, 2, seed=0)[1] == texts


def test_text_folds_need_facts_texts(ds, tiny_llama):
    from distkg.llm.train import build_teacher

    cfg = load_config(None, [f"llm.model={tiny_llama}", "llm.quantization=none", "llm.dim=8", "llm.text_folds=2"])
    with pytest.raises(ConfigError, match="llm.text_folds=2.*llm.entity_text='name'"):
        build_teacher(cfg, ds)
    with pytest.raises(ConfigError, match="text_folds"):
        load_config(None, ["llm.text_folds=0"])


def test_repeat_share_counts_split_triples_found_in_training_at_any_time(ds):
    from distkg.data.dataset import R, T0, T1
    from distkg.llm.prompts import repeat_share

    train = ds.splits["train"]
    known = {tuple(t) for t in train[:, [S, R, O]].tolist()}
    repeats = train[:3].copy()
    repeats[:, [T0, T1]] += 1  # the same (s, r, o) at another time still repeats it
    fresh = np.repeat(train[:1].copy(), 5, axis=0)
    fresh[:, O] = next(o for o in range(ds.num_entities) if (fresh[0, S], fresh[0, R], o) not in known)
    valid = np.concatenate([repeats, fresh])
    assert repeat_share(dataclasses.replace(ds, splits={**ds.splits, "valid": valid})) == pytest.approx(3 / 8)
    with pytest.raises(ValueError, match="text_folds=auto.*valid split"):
        repeat_share(dataclasses.replace(ds, splits={**ds.splits, "valid": valid[:0]}))


def test_auto_folds_are_checked_by_name_and_removed_keys_refused(ds, tiny_llama):
    for key, bad in (("text_folds", "most"), ("text_folds", "0")):
        with pytest.raises(ConfigError, match=f"llm.{key}"):
            load_config(None, [f"llm.{key}={bad}"])
    assert load_config(None, ["llm.text_folds=auto"]).llm.text_folds == "auto"
    for gone in ("own_text_share=0.3", "head_weight_decay=0.01", "head_label_smoothing=0.1"):  # no measured use (issue 31)
        with pytest.raises(ConfigError, match=f"unknown key '{gone.split('=')[0]}'"):
            load_config(None, [f"llm.{gone}"])
