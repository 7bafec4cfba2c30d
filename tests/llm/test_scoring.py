"""The LLM teacher scores through the backbone's own scoring form (distkg.models ``ScoringForm``), the
one the KG models score their tables with, and gives the scores the string switch of
llm/teacher.py gave before (written out below as the reference)."""

from __future__ import annotations

import pytest
import torch

from distkg.distill.teachers import LLMTables
from distkg.llm.contrastive import full_cache
from distkg.llm.train import build_teacher
from distkg.llm.teacher import LLMTeacher
from distkg.models import MODELS, scoring_form
from distkg.models.ttranse import neg_l2
from tests.helpers import tiny_dataset
from tests.llm.test_teacher import cfg_for

FORMS = ["tadistmult", "ttranse"]


# ------------------------------------------------- the scoring of llm/teacher.py before it used the backbone's
def old_compose(form: str, e, r, t):
    return e * r * t if form == "tadistmult" else e + r + t


def old_match(form: str, log_scale, q, c):
    raw = q @ c.T if form == "tadistmult" else neg_l2(q, c)
    return raw * log_scale.exp()


def old_table_query(form: str, entity, relation, time, queries):
    t = 0.5 * (time[queries[:, 2]] + time[queries[:, 3]])
    return old_compose(form, entity[queries[:, 0]], relation[queries[:, 1]], t)


@pytest.fixture(scope="module")
def ds():
    return tiny_dataset("interval", n_ent=30, n_facts=120)


def queries(ds) -> torch.Tensor:
    return torch.from_numpy(ds.splits["test"][:, [0, 1, 3, 4]].copy())


@pytest.mark.parametrize("form", FORMS)
def test_the_teacher_gives_the_scores_of_the_old_string_switch(tiny_llama, ds, form):
    teacher = build_teacher(cfg_for(tiny_llama, form=form, dim=16), ds)
    with torch.no_grad():
        teacher.logit_scale.fill_(0.3)  # not the initial value: the scale must enter as before
    assert teacher.scoring is MODELS.get(form).form  # the backbone model's own form object
    q = queries(ds)
    feats = {k: v.to(teacher.device) for k, v in full_cache(teacher).items()}
    with torch.no_grad():
        proj = {k: torch.sigmoid(teacher.head(v)) for k, v in feats.items()}
        expected = old_match(form, teacher.logit_scale, old_table_query(form, proj["entity"], proj["relation"],
                                                                         proj["time"], q), proj["entity"])
        assert torch.equal(teacher.score_from_features(feats, q), expected)
        teacher.use_tables(**proj)  # E(p) read from these tables: the query/candidate path of evaluation
        assert torch.equal(teacher.score_candidates(q, 0, ds.num_entities), expected)
        teacher.use_tables()
        tables = teacher.tables()
        students_see = LLMTables.from_tables(tables, ds).scores(q)  # what students distil from (no LLM)
        assert torch.equal(students_see, old_match(form, tables["logit_scale"], old_table_query(
            form, tables["entity"], tables["relation"], tables["time"], q), tables["entity"]))


@pytest.mark.parametrize("form", FORMS)
def test_the_kg_model_scores_its_tables_with_the_same_form(ds, form):
    model = MODELS.create(form, {"dim": 8}, "model.args", dataset=ds).eval()
    q = queries(ds)
    f = scoring_form(form)
    with torch.no_grad():
        if form == "ttranse":
            expected = f.match(f.table_query(model.ent.weight, model.rel.weight, model.time.weight, q), model.ent.weight)
        else:  # TA-DistMult's relation-time vector comes from its LSTM; the form joins it with the entity
            rt = model.relation_time(q[:, 1], q[:, 2], q[:, 3])
            expected = f.match(f.join(model.ent(q[:, 0]), rt), model.ent.weight)
        assert torch.equal(model.score_candidates(q, 0, ds.num_entities), expected)


def test_a_backbone_without_a_form_over_supplied_vectors_is_refused_by_name(tiny_llama, ds):
    from distkg.llm.loading import load_lm

    with pytest.raises(ValueError, match=r"llm.form: 'tntcomplex' has no scoring form .*tadistmult, ttranse"):
        LLMTeacher(load_lm(tiny_llama, "none", "cpu"), ds, dim=8, form="tntcomplex")
