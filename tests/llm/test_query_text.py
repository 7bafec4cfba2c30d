"""The LLM teacher that reads a query as one text (``llm.query: text``): what the text holds (never a fact
answering the query itself), the warm-up and InfoNCE steps on it, the saved teacher and its exported
tables, on the tiny random Llama (the weights do not matter here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distkg.data.dataset import O, R, S, T0, T1
from distkg.distill.teachers import LLMTables
from distkg.errors import DistkgError
from distkg.evaluation import build_queries
from distkg.llm.features import frozen_features
from distkg.llm.finetune import build_teacher, finetune, load_teacher
from distkg.llm.prompts import QueryTexts, time_phrase
from distkg.llm.rounds import head_data, head_loss
from tests.helpers import tiny_dataset
from tests.llm.test_features import cache_dir  # noqa: F401 (fixture: a private cache root)
from tests.llm.test_teacher import cfg_for

DS = tiny_dataset("interval", n_ent=20, n_facts=160, n_times=8, seed=5)


def text_cfg(model: str, **llm):
    return cfg_for(model, **{"query": "text", "query_facts": 4, "query_tokens": 64, "steps": 0, "head_epochs": 2,
                             "head_queries_per_step": 32, **llm})


def test_a_query_text_names_the_question_and_the_entitys_nearest_facts_never_its_own():
    texts = QueryTexts(DS, facts=50)
    train = DS.splits["train"]
    for split in ("train", "valid", "test"):
        qs = build_queries(DS.splits[split], DS.num_relations)
        for (e, r2, t0, t1), text in zip(qs.queries.tolist()[::7], texts.texts(qs.queries[::7])):
            r = r2 % DS.num_relations
            head = f"? {DS.relation_text[r]} {DS.entity_text[e]}" if r2 >= DS.num_relations else \
                f"{DS.entity_text[e]} {DS.relation_text[r]} ?"
            assert text.startswith(head)
            answers_it = (train[:, R] == r) & (train[:, T0] == t0) & (train[:, T1] == t1) & (
                train[:, O] == e if r2 >= DS.num_relations else train[:, S] == e)
            mine = ((train[:, S] == e) | (train[:, O] == e)) & ~answers_it
            known = text.split(" Known: ")[1].split("; ") if " Known: " in text else []
            assert len(known) == mine.sum()  # every other fact of the entity, none that answers the query
            for s_, r_, o_, a_ in train[answers_it][:, [S, R, O, T0]].tolist():
                other = DS.entity_text[o_ if s_ == e else s_]
                own = f"{time_phrase(DS, a_)}: " + (f"{DS.relation_text[r_]} {other}" if s_ == e else f"{other} {DS.relation_text[r_]}")
                assert own not in known


def test_facts_come_nearest_in_time_first():
    texts = QueryTexts(DS, facts=3)
    e = int(np.bincount(DS.splits["train"][:, S]).argmax())
    for t in (0, 6):
        text = texts((e, DS.num_relations - 1, t, t))
        years = [int(p.split(":")[0].split("-")[0]) for p in text.split(" Known: ")[1].split("; ")]
        lo = DS.buckets[t][0]
        gaps = [abs(y - lo) for y in years]
        assert gaps == sorted(gaps)


def test_the_warmup_scores_each_training_query_on_its_own_texts_features(tiny_llama, cache_dir):
    cfg = text_cfg(tiny_llama, feature_cache="true")
    teacher = build_teacher(cfg, DS)
    feats, hit = frozen_features(teacher, cfg)
    assert not hit and set(feats) == {"entity", "query"} and len(feats["query"]) == len(teacher.texts["query"])
    data = head_data(teacher, cfg, DS, feats)
    idx = torch.arange(0, len(data.queries), 3)
    with torch.no_grad():
        direct = teacher.match(teacher.text_query(data.queries[idx]), teacher.embed("entity", torch.arange(DS.num_entities)))
        loss = torch.nn.functional.cross_entropy(direct, data.answers[idx])
        torch.testing.assert_close(head_loss(teacher, data, idx), loss, atol=1e-5, rtol=1e-5)
    again = build_teacher(cfg, DS)
    assert frozen_features(again, cfg)[1]  # every kind read from its own file


def test_a_text_teacher_trains_saves_loads_and_exports_the_same_distribution(tiny_llama, tmp_path):
    cfg = text_cfg(tiny_llama, steps=3, objective="infonce", queries_per_step=8, refresh_every=2)
    metrics = finetune(cfg, tmp_path, dataset=DS)
    assert metrics["steps"] == 3 and 0 < metrics["mrr"] <= 1
    teacher = load_teacher(tmp_path / "teacher", cfg, DS)
    assert teacher.query_mode == "text"
    q = torch.from_numpy(build_queries(DS.splits["test"], DS.num_relations).queries)
    with torch.no_grad():
        direct = torch.softmax(teacher.score_candidates(q, 0, DS.num_entities), dim=1)
    tables = LLMTables(tmp_path, DS)
    torch.testing.assert_close(tables.probs(q), direct, atol=1e-5, rtol=1e-4)
    with pytest.raises(DistkgError, match="is not one of the dataset's queries"):
        tables.scores(torch.tensor([[0, 0, 7, 3]]))


def test_infonce_steps_move_the_adapters_through_the_query_text(tiny_llama):
    cfg = text_cfg(tiny_llama)
    teacher = build_teacher(cfg, DS)
    from distkg.evaluation import FilterIndex, QuerySet
    from distkg.llm.contrastive import full_cache, infonce_loss

    cache = full_cache(teacher.eval())["entity"]
    qs = build_queries(DS.splits["train"], DS.num_relations)
    batch = QuerySet(qs.queries[:8], qs.answers[:8], qs.keys[:8], num_tail=8)
    before = {n: p.detach().clone() for n, p in teacher.named_parameters() if p.requires_grad}
    loss, n_texts = infonce_loss(teacher.train(), cache, batch, FilterIndex(DS.splits["train"], DS.num_relations, "time"), "lengths")
    loss.backward()
    torch.optim.SGD([p for p in teacher.parameters() if p.requires_grad], lr=1.0).step()
    changed = {n for n, p in teacher.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    assert n_texts == len(set(teacher.query_texts.texts(batch.queries)))
    assert any("lora_" in n for n in changed) and any(n.startswith("qhead.") for n in changed)
