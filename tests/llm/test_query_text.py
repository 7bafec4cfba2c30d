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
from distkg.llm.train import build_teacher, train_teacher, load_teacher
from distkg.llm.prompts import QueryTexts, time_phrase
from distkg.llm.rounds import head_data, head_loss
from tests.helpers import tiny_dataset
from tests.llm.test_features import cache_dir  # noqa: F401 (fixture: a private cache root)
from tests.llm.test_teacher import cfg_for

DS = tiny_dataset("interval", n_ent=20, n_facts=160, n_times=8, seed=5)


def text_cfg(model: str, **llm):
    return cfg_for(model, **{"query": "text", "query_facts": 4, "query_tokens": 64, "steps": 0, "head_epochs": 2,
                             "head_queries_per_step": 32, **llm})


def _known(text: str) -> list[str]:
    return text.split(" Known: ")[1].split("; ") if " Known: " in text else []


def _phrase(e: int, fact) -> str:
    s_, r_, o_, a_ = fact
    other = DS.entity_text[o_ if s_ == e else s_]
    return f"{time_phrase(DS, a_)}: " + (f"{DS.relation_text[r_]} {other}" if s_ == e else f"{other} {DS.relation_text[r_]}")


def test_a_query_text_names_the_question_and_every_fact_of_its_entity_but_its_own():
    from collections import Counter

    texts = QueryTexts(DS, facts=50)
    train, n = DS.splits["train"], len(DS.splits["train"])
    degree = lambda e: int(((train[:, S] == e) | (train[:, O] == e)).sum())  # noqa: E731
    qs = build_queries(train, DS.num_relations)
    every = texts.training()
    for i in range(0, len(qs), 5):
        (e, r2, t0, t1), fact = qs.queries[i].tolist(), train[i % n, [S, R, O, T0]].tolist()
        r = r2 % DS.num_relations
        head = f"? {DS.relation_text[r]} {DS.entity_text[e]}" if r2 >= DS.num_relations else f"{DS.entity_text[e]} {DS.relation_text[r]} ?"
        assert every[i].startswith(head) and every[i] == texts((e, r2, t0, t1), i % n)
        left_out = Counter(_known(texts((e, r2, t0, t1)))) - Counter(_known(every[i]))
        assert len(_known(every[i])) == degree(e) - 1 and left_out == Counter([_phrase(e, fact)])
    for split in ("valid", "test"):  # their own facts are not training facts: every fact of the entity is there
        for q in build_queries(DS.splits[split], DS.num_relations).queries[::3].tolist():
            assert len(_known(texts(q))) == degree(q[0])


def test_a_teacher_reading_text_is_sent_each_training_querys_row():
    from distkg.llm.teacher import LLMTeacher

    qs = torch.from_numpy(build_queries(DS.splits["train"], DS.num_relations).queries)
    rows = torch.tensor([0, 3, len(DS.splits["train"]) + 3])
    five = LLMTeacher.with_rows(type("T", (), {"query_texts": QueryTexts(DS)})(), qs[rows], rows)
    assert five[:, 4].tolist() == [0, 3, 3] and QueryTexts(DS).texts(five.numpy()) == [QueryTexts(DS).training()[i] for i in rows]


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
    cfg = text_cfg(tiny_llama, steps=3, objective="infonce", queries_per_step=8, refresh_every=2, curve_test="true")
    metrics = train_teacher(cfg, tmp_path, dataset=DS)
    assert metrics["steps"] == 3 and 0 < metrics["mrr"] <= 1
    # llm.curve_test: the test MRR at every curve point, and CPU minutes without the points' evaluations
    assert [p["phase"] for p in metrics["curve"]] == ["head", "head", "lora", "lora"]
    assert all(0 < p["test_mrr"] <= 1 and p["training_cpu_minutes"] <= p["process_cpu_minutes"] for p in metrics["curve"])
    teacher = load_teacher(tmp_path / "teacher", cfg, DS)
    assert teacher.query_mode == "text"
    q = torch.from_numpy(build_queries(DS.splits["test"], DS.num_relations).queries)
    with torch.no_grad():
        direct = torch.softmax(teacher.score_candidates(q, 0, DS.num_entities), dim=1)
    tables = LLMTables(tmp_path, DS)
    torch.testing.assert_close(tables.probs(q), direct, atol=1e-5, rtol=1e-4)
    with pytest.raises(DistkgError, match="is not one of the validation or test queries"):
        tables.scores(torch.tensor([[0, 0, 7, 3]]))
    train_q = torch.from_numpy(build_queries(DS.splits["train"], DS.num_relations).queries)
    rows = torch.arange(0, len(train_q), 4)  # training queries by their rows: each text leaves its own fact out
    with torch.no_grad():
        own = torch.softmax(teacher.match(teacher.text_query(teacher.with_rows(train_q[rows], rows)),
                                          teacher.embed("entity", torch.arange(DS.num_entities))), dim=1)
    student_view = LLMTables(tmp_path, DS, train_q)  # what a student reads: every training row's P_LLM
    torch.testing.assert_close(student_view.probs(train_q[rows], 1.0, rows), own, atol=1e-5, rtol=1e-4)


def test_infonce_steps_move_the_adapters_through_the_query_text(tiny_llama):
    cfg = text_cfg(tiny_llama)
    teacher = build_teacher(cfg, DS)
    from distkg.evaluation import FilterIndex, QuerySet
    from distkg.llm.contrastive import full_cache, infonce_loss

    cache = full_cache(teacher.eval())["entity"]
    qs = build_queries(DS.splits["train"], DS.num_relations)
    batch = QuerySet(qs.queries[:8], qs.answers[:8], qs.keys[:8], num_tail=8)
    before = {n: p.detach().clone() for n, p in teacher.named_parameters() if p.requires_grad}
    index = FilterIndex(DS.splits["train"], DS.num_relations, "time")
    with pytest.raises(ValueError, match="needs the batch's training rows"):
        infonce_loss(teacher, cache, batch, index, "lengths")
    loss, n_texts = infonce_loss(teacher.train(), cache, batch, index, "lengths", torch.arange(8))
    loss.backward()
    torch.optim.SGD([p for p in teacher.parameters() if p.requires_grad], lr=1.0).step()
    changed = {n for n, p in teacher.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    assert n_texts == len(set(teacher.query_texts.texts(batch.queries, np.arange(8))))
    assert any("lora_" in n for n in changed) and any(n.startswith("qhead.") for n in changed)
