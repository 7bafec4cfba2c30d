"""The distillation runner on a small synthetic graph with a real trained KG teacher and a real (tiny,
randomly initialised) LLM teacher fine-tuned for a few steps: every method runs, the plain student
equals `distkg train`, stages resume exactly, teachers' outputs are cached, bad configs fail clearly."""

from __future__ import annotations

import json

import pytest
import torch

from distkg.config import load_config
from distkg.distill import runner
from distkg.distill.losses import DistillBatch, combine
from distkg.distill.runner import kd_temperature
from distkg.distill import teachers as teachers_module
from distkg.distill.teachers import KGTeacher, LLMTables
from distkg.errors import ConfigError, DistkgError
from distkg.llm.train import train_teacher, load_teacher
from distkg.training import trainer
from distkg.training.trainer import training_queries
from tests.helpers import tiny_dataset
from tests.llm.conftest import make_tiny_llama

DS = tiny_dataset("interval", n_ent=40, n_facts=400)
STUDENT = ["model.name=tadistmult", "model.args.dim=4", "train.batch_size=64", "train.patience=10",
           "train.progress=false", "eval.progress=false"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    kg = load_config(None, ["model.name=tadistmult", "model.args.dim=16", "train.epochs=3", "train.batch_size=64",
                            "train.progress=false", "eval.progress=false"])
    trainer.train(kg, root / "kg", dataset=DS)
    llm = load_config(None, [f"llm.model={make_tiny_llama(root / 'tiny-llama')}", "llm.quantization=none", "llm.dim=8",
                             "llm.steps=2", "llm.queries_per_step=4", "llm.negatives=8", "llm.valid_queries=0",
                             "llm.progress=false", "eval.progress=false"])
    train_teacher(llm, root / "llm", dataset=DS)
    return root


def method(name: str, teachers, *sets: str):
    return load_config(["configs/distill/" + name + ".yaml"],
                       STUDENT + [f"distill.teacher_run={teachers / 'kg'}", f"distill.llm_run={teachers / 'llm'}", *sets])


def short(name: str, teachers):
    """The method's stages with 1 epoch each."""
    cfg = method(name, teachers)
    for s in cfg.distill.stages:
        s.epochs = 1
    return cfg


def test_plain_student_equals_distkg_train(teachers, tmp_path):
    a = trainer.train(load_config(None, STUDENT + ["train.epochs=2"]), tmp_path / "train", dataset=DS)
    b = runner.distill(_plain(teachers, 2), tmp_path / "distill", dataset=DS)
    for key in ("mrr", "mr", "hits@1", "hits@10", "best_epoch"):
        assert a[key] == b[key], key
    wa = torch.load(tmp_path / "train" / "checkpoints" / "best.pt", weights_only=True)
    wb = torch.load(tmp_path / "distill" / "checkpoints" / "best.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sampled_students_read_every_term_over_the_batchs_candidates(teachers, tmp_path):
    """train.loss=sampled_softmax in a distillation (issue 29): the plain student equals `distkg train`
    with that loss (same draws, same sparse steps), and a step's kd / P_LLM terms are those of the
    whole-row batch restricted to the candidates (teacher scores gathered, P_LLM renormalised), every
    score less the candidate's log chance (the logQ correction; P_LLM divided by it)."""
    sampled = ["train.loss=sampled_softmax", "train.negatives=8"]
    a = trainer.train(load_config(None, STUDENT + sampled + ["train.epochs=2"]), tmp_path / "train", dataset=DS)
    cfg = method("plain", teachers, *sampled)
    cfg.distill.stages[0].epochs = 2
    b = runner.distill(cfg, tmp_path / "distill", dataset=DS)
    wa = torch.load(tmp_path / "train" / "checkpoints" / "best.pt", weights_only=True)
    wb = torch.load(tmp_path / "distill" / "checkpoints" / "best.pt", weights_only=True)
    assert a["mrr"] == b["mrr"] and all(torch.equal(wa[k], wb[k]) for k in wa)

    cfg = method("ours", teachers, *sampled)
    ours = runner.distill(cfg, tmp_path / "ours", dataset=DS)  # every stage trains
    assert 0 < ours["mrr"] <= 1
    queries, answers = training_queries(DS.splits["train"], DS.num_relations)
    student = trainer.build_model(cfg, DS)
    kg = KGTeacher(teachers / "kg", DS, queries)
    llm = LLMTables(teachers / "llm", DS, queries, cfg.distill.llm_temperature)
    spec = cfg.distill.stages[1].losses
    idx = torch.arange(16)
    q, a = queries[idx], answers[idx]
    log_q = trainer.sampling_log_q(cfg, DS)
    assert log_q is not None
    got, _ = runner.step_loss(student, spec, "x", cfg.distill, kg=kg, llm=llm, train_cfg=cfg.train, log_q=log_q)(
        idx, q, a, torch.Generator().manual_seed(3))
    cands = torch.unique(torch.cat([a, torch.randint(0, DS.num_entities, (8,), generator=torch.Generator().manual_seed(3))]))
    pi = log_q[cands].exp()
    p = llm.probs(q, cfg.distill.llm_temperature, idx)[:, cands] / pi
    batch = DistillBatch(student_scores=student(q)[:, cands] - pi.log(), answers=torch.searchsorted(cands, a),
                         teacher_scores=kg.scores(idx)[:, cands] - pi.log(), llm_probs=p / p.sum(1, keepdim=True))
    want, _ = combine(spec, batch)
    torch.testing.assert_close(got, want + student.regularizer(q, a))


def _plain(teachers, epochs: int):
    cfg = method("plain", teachers)
    cfg.distill.stages[0].epochs = epochs
    return cfg


@pytest.mark.parametrize("name", ["bkd", "fitnet", "rkd", "ours", "ours-l1-l2", "ours-l1-l3"])
def test_every_method_trains_and_logs_its_losses(name, teachers, tmp_path):
    cfg = short(name, teachers)
    m = runner.distill(cfg, tmp_path, dataset=DS)
    assert m["method"] == name and 0 < m["mrr"] <= 1
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log] == [s.name for s in cfg.distill.stages]
    for stage, row in zip(cfg.distill.stages, log):
        assert {f"loss_{k}" for k in stage.losses} <= row.keys()
        assert all(torch.isfinite(torch.tensor(row[f"loss_{k}"])) for k in stage.losses)


def test_two_stage_run_resumes_exactly_after_a_crash_in_stage_two(teachers, tmp_path, monkeypatch):
    def cfg():
        c = method("ours", teachers)
        c.distill.stages[0].epochs = c.distill.stages[1].epochs = 2
        return c

    straight = runner.distill(cfg(), tmp_path / "a", dataset=DS)

    def crash(epoch, step):
        if epoch == 2 and step == 1:
            raise KeyboardInterrupt("simulated crash in stage 2")

    monkeypatch.setattr(trainer, "_after_step", crash)
    with pytest.raises(KeyboardInterrupt):
        runner.distill(cfg(), tmp_path / "b", dataset=DS)
    monkeypatch.setattr(trainer, "_after_step", lambda epoch, step: None)
    resumed = runner.distill(cfg(), tmp_path / "b", dataset=DS)
    for key in ("mrr", "mr", "hits@1", "best_epoch", "epochs_run"):
        assert resumed[key] == straight[key], key


def test_teacher_outputs_are_computed_once_and_match_the_teacher(teachers, monkeypatch):
    q, _ = training_queries(DS.splits["train"], DS.num_relations)
    first = KGTeacher(teachers / "kg", DS, q)  # writes (or reads) the cache
    idx = torch.arange(0, len(q), 7)
    with torch.no_grad():
        torch.testing.assert_close(first.scores(idx), first.model(q[idx]))

    def no_recompute(self, queries):
        raise AssertionError("teacher outputs were recomputed instead of read from the cache")

    monkeypatch.setattr(type(first.model), "query_repr", no_recompute)
    again = KGTeacher(teachers / "kg", DS, q)
    torch.testing.assert_close(again.scores(idx), first.scores(idx))
    monkeypatch.undo()
    # large graphs: one matmul per batch, and past that (a million entities' 16M training queries) the
    # query representations themselves computed per batch (QueryRows), never written to the cache
    monkeypatch.setattr(teachers_module, "SCORE_CACHE_BYTES", 0)
    big = KGTeacher(teachers / "kg", DS, q)
    assert first.all_scores is not None and big.all_scores is None
    assert isinstance(big.query, teachers_module.QueryRows) and big.query.shape == first.query.shape
    torch.testing.assert_close(big.scores(idx), first.scores(idx))
    torch.testing.assert_close(big.query[idx], first.query[idx])
    torch.testing.assert_close(torch.cat(list(big.query.split(5))), first.query)


def test_llm_tables_give_the_llm_teachers_distribution(teachers):
    cfg = load_config(teachers / "llm" / "config.yaml")
    teacher = load_teacher(teachers / "llm" / "teacher", cfg, DS)
    q = torch.from_numpy(DS.splits["test"][:, [0, 1, 3, 4]].copy())
    torch.testing.assert_close(LLMTables(teachers / "llm", DS).probs(q), teacher.distribution(q).cpu(), atol=1e-5, rtol=1e-4)
    train_q, _ = training_queries(DS.splits["train"], DS.num_relations)
    cached = LLMTables(teachers / "llm", DS, train_q, temperature=2.0)  # P_LLM of every training query, kept
    idx = torch.tensor([5, 0, 17])
    assert cached.all_probs is not None
    for temperature in (2.0, 0.5):  # the kept matrix, and a temperature it was not made at (computed)
        torch.testing.assert_close(cached.probs(train_q[idx], temperature, idx),
                                   teacher.distribution(train_q[idx], temperature).cpu(), atol=1e-5, rtol=1e-4)


def test_tempered_teacher_targets_give_the_same_kd_as_scores(teachers):
    q, _ = training_queries(DS.splits["train"], DS.num_relations)
    kg, idx = KGTeacher(teachers / "kg", DS, q), torch.arange(0, len(q), 5)
    scores = kg.scores(idx)
    student = torch.randn(scores.shape, generator=torch.Generator().manual_seed(1))
    by_scores = combine({"kd": {"temperature": 3.0}}, DistillBatch(student, idx, teacher_scores=scores))[0]
    assert kg.temper(3.0) and kg.all_scores is None
    targets = kg.targets(idx)
    by_targets = combine({"kd": {"temperature": 3.0}}, DistillBatch(student, idx, teacher_targets=targets))[0]
    torch.testing.assert_close(by_targets, by_scores)
    torch.testing.assert_close(kg.scores(idx), scores)  # scores are still there, recomputed per batch
    other = combine({"kd": {"temperature": 2.0}}, DistillBatch(student, idx, teacher_scores=scores,
                                                               teacher_targets=targets))[0]  # another T: from scores
    torch.testing.assert_close(other, combine({"kd": {"temperature": 2.0}}, DistillBatch(student, idx, teacher_scores=scores))[0])


def test_kd_temperature_is_known_only_when_kd_alone_reads_the_teacher_at_one_temperature():
    def method(*stages):
        return load_config("configs/train/tadistmult-yago11k-25.yaml", [
            f"distill.stages={json.dumps([{'name': f's{i}', 'epochs': 1, 'losses': s} for i, s in enumerate(stages)])}"])

    assert kd_temperature(method({"kd": {}, "ce": {}})) == 7.0
    assert kd_temperature(method({"kd": {"temperature": 2}}, {"kd": {"temperature": 2}, "llm_huber": {}})) == 2.0
    assert kd_temperature(method({"kd": {"temperature": 2}}, {"kd": {"temperature": 3}})) is None
    assert kd_temperature(method({"ce": {}})) is None


def test_bad_method_configs_fail_by_name(teachers, tmp_path):
    with pytest.raises(ConfigError, match=r"distill.teacher_run"):
        runner.check_method(load_config(["configs/distill/bkd.yaml"], STUDENT))
    with pytest.raises(ConfigError, match=r"distill.llm_run"):
        runner.check_method(load_config(["configs/distill/ours.yaml"], STUDENT + ["distill.teacher_run=x"]))
    with pytest.raises(ConfigError, match=r"unknown loss 'kdd' \(did you mean 'kd'\?\)"):
        runner.check_method(load_config(None, ["distill.stages=[{losses: {kdd: {}}}]"]))
    with pytest.raises(ConfigError, match=r"distill.stages\[0\].losses.kd: loss 'kd' has no argument 'temp'"):
        runner.check_method(load_config(None, ["distill.stages=[{losses: {kd: {temp: 2}}}]"]))
    with pytest.raises(ConfigError, match=r"train.loss.*'negative_sampling'"):  # removed: no measured use (issue 31)
        load_config(["configs/distill/plain.yaml"], ["train.loss=negative_sampling"])
    with pytest.raises(ConfigError, match=r"runtime.soft_targets: topk .* use lowrank"):
        runner.check_method(load_config(["configs/distill/plain.yaml"], ["train.loss=sampled_softmax", "runtime.kg_teacher=pool",
                                                                         "runtime.soft_targets=topk"]))
    with pytest.raises(DistkgError, match=r"distill.teacher_run='.*nowhere'.*metrics.json"):
        runner.distill(load_config(["configs/distill/bkd.yaml"], STUDENT + [f"distill.teacher_run={tmp_path / 'nowhere'}"]),
                       tmp_path / "out", dataset=DS)
    other = tiny_dataset("point", n_ent=40, n_facts=400)
    with pytest.raises(ConfigError, match=r"trained on 'tiny-interval'.*'tiny-point'"):
        runner.distill(short("bkd", teachers), tmp_path / "out2", dataset=other)


def test_soft_targets_are_read_from_one_cache_per_teacher_and_temperature(teachers, monkeypatch):
    q, _ = training_queries(DS.splits["train"], DS.num_relations)
    idx = torch.arange(0, len(q), 3)
    folder = KGTeacher(teachers / "kg", DS, q).targets_folder  # the teacher's derived folder (cache root)
    for f in folder.glob("soft-targets-*"):
        f.unlink()
    first = KGTeacher(teachers / "kg", DS, q)
    assert first.temper(4.0) and (folder / "soft-targets-T4.pt").is_file()
    expected = first.targets(idx)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("soft targets were rebuilt instead of read from the cache")

    with monkeypatch.context() as m:
        m.setattr(teachers_module, "soften_", no_rebuild)
        again = KGTeacher(teachers / "kg", DS, q)
        assert again.temper(4.0)
        torch.testing.assert_close(again.targets(idx).probs, expected.probs)
        torch.testing.assert_close(again.targets(idx).plogp, expected.plogp)
        with pytest.raises(AssertionError, match="rebuilt"):
            KGTeacher(teachers / "kg", DS, q).temper(2.0)  # another temperature: another cache


def test_a_retrained_teacher_is_never_served_stale_soft_targets(teachers, tmp_path):
    import os
    import shutil

    from distkg.training.checkpoint import atomic_save

    q, _ = training_queries(DS.splits["train"], DS.num_relations)
    run = tmp_path / "kg"
    shutil.copytree(teachers / "kg", run)
    KGTeacher(run, DS, q).temper(4.0)
    best = run / "checkpoints" / "best.pt"
    state = torch.load(best, weights_only=True)
    weights = state.get("model", state)
    name = next(k for k, v in weights.items() if torch.is_floating_point(v))
    weights[name] = weights[name] + 0.5  # "retrained": other weights, same size, old mtime kept
    stat = best.stat()
    atomic_save(state, best)  # as the trainer writes it: the same size
    assert best.stat().st_size == stat.st_size
    os.utime(best, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    retrained = KGTeacher(run, DS, q)
    retrained.temper(4.0)
    idx = torch.arange(len(q))
    with torch.no_grad():
        fresh = torch.softmax(retrained.model(q) / 4.0, dim=1)
    torch.testing.assert_close(retrained.targets(idx).probs, fresh)


def test_teachers_read_only_for_representations_never_build_the_score_matrix(teachers, monkeypatch, tmp_path):
    q, _ = training_queries(DS.splits["train"], DS.num_relations)

    def no_matrix(*args, **kwargs):
        raise AssertionError("the [queries, entities] score matrix was built for a method that never reads it")

    monkeypatch.setattr(teachers_module, "score_matrix", no_matrix)
    kg = KGTeacher(teachers / "kg", DS, q)
    assert kg.query.shape[0] == len(q) and kg.entities(torch.tensor([0, 1])).shape[0] == 2
    for name in ("fitnet", "rkd"):
        runner.distill(short(name, teachers), tmp_path / name, dataset=DS)
