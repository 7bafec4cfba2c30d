"""Second teachers (distkg.distill.second) and ensembles (distkg.experiments.ensemble) on a small synthetic
graph with real trained KG models and a real tiny LLM teacher: P of each kind is the run's own
distribution, an ensemble's P is the mixture at the weight it chose on validation, the LLM terms and
llm_kd train a student from any of them, and bad inputs fail by name."""

from __future__ import annotations

import json

import pytest
import torch

from distkg.config import load_config
from distkg.distill import runner
from distkg.distill.losses import DistillBatch, combine, llm_kd
from distkg.distill.second import EnsembleProbs, KGProbs, open_second
from distkg.distill.teachers import LLMTables
from distkg.errors import ConfigError, DistkgError
from distkg.evaluation import build_queries
from distkg.experiments.ensemble import TEMPERATURES, WEIGHTS, ensemble
from distkg.llm.train import train_teacher
from distkg.runfolder import run_kind
from distkg.training import trainer
from distkg.training.checkpoint import Checkpoints
from distkg.training.trainer import build_model, training_queries
from tests.helpers import tiny_dataset
from tests.llm.conftest import make_tiny_llama

DS = tiny_dataset("interval", n_ent=40, n_facts=400, seed=3)
QUERIES, _ = training_queries(DS.splits["train"], DS.num_relations)
FAST = ["train.batch_size=64", "train.progress=false", "eval.progress=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("second")
    trainer.train(load_config(None, ["model.name=tadistmult", "model.args.dim=16", "train.epochs=3", *FAST]),
                  root / "tadistmult", dataset=DS)
    trainer.train(load_config(None, ["model.name=ttranse", "model.args.dim=16", "train.epochs=3", *FAST]),
                  root / "ttranse", dataset=DS)
    train_teacher(load_config(None, [f"llm.model={make_tiny_llama(root / 'tiny-llama')}", "llm.quantization=none",
                                "llm.dim=8", "llm.steps=0", "llm.head_epochs=2", "llm.valid_queries=0",
                                "llm.progress=false", "eval.progress=false"]), root / "llm", dataset=DS)
    ensemble([root / "ttranse", root / "llm"], root / "mix", dataset=DS)
    return root


def _model(run):
    model = build_model(load_config(run / "config.yaml"), DS)
    Checkpoints(run / "checkpoints").load_best(model, json.loads((run / "metrics.json").read_text())["best_epoch"])
    return model.eval()


def test_each_kind_of_run_is_named_by_what_it_holds(runs, tmp_path):
    assert [run_kind(runs / n) for n in ("tadistmult", "llm", "mix")] == ["kg", "llm", "ensemble"]
    assert run_kind(tmp_path) == "unknown"


def test_a_kg_second_teacher_gives_its_softmax_at_the_temperature(runs):
    idx = torch.arange(0, len(QUERIES), 5)
    second = open_second(runs / "ttranse", DS, QUERIES, temperature=2.0)
    assert isinstance(second, KGProbs)
    with torch.no_grad():
        expected = torch.softmax(_model(runs / "ttranse")(QUERIES[idx]) / 2.0, dim=1)
    torch.testing.assert_close(second.probs(QUERIES[idx], 2.0, idx), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(second.probs(QUERIES[idx], 3.0, idx).sum(1), torch.ones(len(idx)))  # another T: per batch


def test_the_ensemble_chose_its_weight_on_validation_and_mixes_at_it(runs):
    spec = json.loads((runs / "mix" / "ensemble.json").read_text())
    metrics = json.loads((runs / "mix" / "metrics.json").read_text())
    curve = {p["weight"]: p["valid_mrr"] for p in spec["valid_curve"]}
    assert sorted(curve) == WEIGHTS and curve[spec["weight"]] == max(curve.values())
    assert metrics["kind"] == "ensemble" and metrics["weight"] == spec["weight"] and (runs / "mix" / "weights.png").is_file()
    # each member's temperature is the one of lowest validation NLL
    valid = build_queries(DS.splits["valid"], DS.num_relations)
    with torch.no_grad():
        s_kg = _model(runs / "ttranse")(torch.from_numpy(valid.queries))
    nll = lambda t: float(-torch.log_softmax(s_kg / t, 1).gather(1, torch.from_numpy(valid.answers)[:, None]).mean())  # noqa: E731
    assert all(nll(spec["temperatures"][0]) <= nll(t) + 1e-6 for t in TEMPERATURES)
    # a member alone (w = 1) ranks exactly as the member's own evaluation
    assert metrics["member_test"][0]["mrr"] == pytest.approx(json.loads((runs / "ttranse" / "metrics.json").read_text())["mrr"])
    second = open_second(runs / "mix", DS, QUERIES)
    assert isinstance(second, EnsembleProbs) and second.all_probs is not None
    idx = torch.arange(0, len(QUERIES), 3)
    w, (t_kg, t_llm) = spec["weight"], spec["temperatures"]
    with torch.no_grad():
        p_kg = torch.softmax(_model(runs / "ttranse")(QUERIES[idx]) / t_kg, dim=1)
    p_llm = LLMTables(runs / "llm", DS).probs(QUERIES[idx], t_llm)
    torch.testing.assert_close(second.probs(QUERIES[idx], 1.0, idx), w * p_kg + (1 - w) * p_llm, atol=1e-6, rtol=1e-5)
    again = open_second(runs / "mix", DS, QUERIES)  # read from the ensemble's own cache, members unopened
    assert again._members is None
    torch.testing.assert_close(again.probs(QUERIES[idx], 1.0, idx), second.probs(QUERIES[idx], 1.0, idx))


def test_a_finished_ensemble_is_read_and_one_of_other_members_refused(runs):
    assert ensemble([runs / "ttranse", runs / "llm"], runs / "mix", dataset=DS)["weight"] is not None
    with pytest.raises(ConfigError, match="holds an ensemble of"):
        ensemble([runs / "tadistmult", runs / "llm"], runs / "mix", dataset=DS)
    with pytest.raises(DistkgError, match="not a finished run"):
        ensemble([runs / "tadistmult", runs / "nowhere"], runs / "mix2", dataset=DS)


def _files(root) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("second", ["ttranse", "mix", "llm"])
def test_the_llm_terms_and_llm_kd_train_a_student_from_any_second_teacher(runs, second, tmp_path):
    # and the student writes only its own folder: its caches of the teachers' outputs go to the cache
    # root (distkg.distill.teachers.derived_folder), not into the teachers' runs
    before = _files(runs)
    for name in ("bkd-l2", "bkd2"):
        cfg = load_config([f"configs/distill/{name}.yaml"],
                          ["model.name=tadistmult", "model.args.dim=4", *FAST, f"distill.teacher_run={runs / 'tadistmult'}",
                           f"distill.llm_run={runs / second}"])
        for stage in cfg.distill.stages:
            stage.epochs = 1
        m = runner.distill(cfg, tmp_path / name, dataset=DS)
        log = [json.loads(x) for x in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        term = "loss_llm_huber" if name == "bkd-l2" else "loss_llm_kd"
        assert m["llm_run"] == str(runs / second) and term in log[-1] and log[-1][term] >= 0
    assert _files(runs) == before
    assert not [f for f in before if "probs-T" in f or "soft-targets" in f or "train_queries" in f]


def test_llm_kd_reads_p_llm_at_its_own_temperature(runs):
    cfg = load_config(["configs/distill/bkd2.yaml"], ["model.name=tadistmult", "model.args.dim=4",
                                                      f"distill.teacher_run={runs / 'tadistmult'}",
                                                      f"distill.llm_run={runs / 'ttranse'}", "distill.llm_temperature=1"])
    with pytest.raises(ConfigError, match="llm_kd.temperature=7 reads P_LLM at that temperature"):
        runner.check_method(cfg)


def test_llm_kd_is_hintons_kd_against_p_llm_fused_or_not():
    torch.manual_seed(0)
    s = torch.randn(6, 9, dtype=torch.float64, requires_grad=True)
    p = torch.softmax(torch.randn(6, 9, dtype=torch.float64) / 3.0, dim=1)
    batch = DistillBatch(student_scores=s, answers=torch.arange(6) % 9, llm_probs=p)
    expected = 9.0 * torch.nn.functional.kl_div(torch.log_softmax(s / 3.0, 1), p, reduction="batchmean")
    value = llm_kd(batch, temperature=3.0)
    torch.testing.assert_close(value, expected)
    (g,) = torch.autograd.grad(value, s)
    (g_expected,) = torch.autograd.grad(expected, s)
    torch.testing.assert_close(g, g_expected)
    total, parts = combine({"llm_kd": {"temperature": 3.0}, "ce": {}}, batch)  # the fused pass
    (g_fused,) = torch.autograd.grad(total, s)
    ce = torch.nn.functional.cross_entropy(s, batch.answers)
    (g_ce,) = torch.autograd.grad(ce, s)
    torch.testing.assert_close(parts["llm_kd"], expected.item())
    torch.testing.assert_close(g_fused, g_expected + g_ce)


def test_a_run_that_is_no_teacher_is_refused_by_name(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"run\.json is missing or unreadable: not a distkg run.*--restart"):
        open_second(tmp_path, DS, QUERIES)
    (tmp_path / "run.json").write_text('{"kind": "pipeline"}')  # the kind is read, never guessed from files
    with pytest.raises(ConfigError, match=r"holds a pipeline run \(`distkg run`\); expected a run of `distkg llm train`"):
        open_second(tmp_path, DS, QUERIES)
    with pytest.raises(DistkgError, match="no finished run there"):
        open_second(tmp_path / "none", DS, QUERIES)


def test_a_ray_pool_serves_an_llm_or_kg_second_teacher_and_refuses_an_ensemble_before_ray(runs):
    from distkg.runtime.students import second_kind

    assert second_kind(str(runs / "llm")) == "llm" and second_kind(str(runs / "ttranse")) == "kg"
    with pytest.raises(DistkgError, match="read in-process; set runtime.backend=local"):
        second_kind(str(runs / "mix"))
