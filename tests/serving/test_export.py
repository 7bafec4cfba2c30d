"""distkg export --format onnx: the file's scores equal PyTorch's (max |difference| <= 1e-5) with
identical top-10 lists, on every YAGO11k test query in both directions, for each exportable model;
and on an LLM teacher's tables."""

from __future__ import annotations

import json

import pytest
import torch

from distkg.cli.main import main
from distkg.evaluation.queries import build_queries
from distkg.serving.export import export_onnx, onnx_scorer
from distkg.serving.predict import load_predictor
from tests.serving.conftest import train_yago


def check_same_scores(run, folder) -> None:
    pred = load_predictor(run)
    queries = torch.as_tensor(build_queries(pred.ds.splits["test"], pred.ds.num_relations).queries)
    with torch.no_grad():
        want = pred.score(queries).float()
    got = onnx_scorer(folder / "model.onnx", threads=1)(queries)
    assert got.shape == want.shape == (len(queries), pred.ds.num_entities)
    assert (got - want).abs().max().item() <= 1e-5
    assert torch.equal(got.topk(10).indices, want.topk(10).indices)


def test_cli_export_tadistmult_matches_pytorch(yago_run, data_root, tmp_path, capsys):
    out = tmp_path / "onnx"
    assert main(["export", "--run", str(yago_run), "--format", "onnx", "--out", str(out), "--data-root", str(data_root)]) == 0
    assert "model.onnx" in capsys.readouterr().out
    check_same_scores(yago_run, out)
    maps = json.loads((out / "maps.json").read_text())
    assert maps["entities"][:3] == load_predictor(yago_run).ds.entity_names[:3] and maps["time_kind"] == "interval"


@pytest.mark.parametrize("model", ["ttranse", "tntcomplex"])
def test_export_other_backbones_match_pytorch(model, data_root, tmp_path):
    run = train_yago(data_root, tmp_path / model, model)
    check_same_scores(run, export_onnx(run))


def test_export_llm_teacher_tables_match(tiny_runs, tmp_path):
    check_same_scores(tiny_runs.llm, export_onnx(tiny_runs.llm, tmp_path / "llm"))


def test_training_free_runs_predict_but_do_not_export(data_root, tmp_path, capsys):
    out = tmp_path / "freq"
    assert main(["run", "configs/frequency-baseline.yaml", "--out", str(out), "--data-root", str(data_root),
                 "--set", "eval.progress=false"]) == 0
    capsys.readouterr()
    assert main(["predict", "--run", str(out), "--query", "Barack Obama Sr.|isMarriedTo|?|1960", "--top", "2"]) == 0
    assert "  2. " in capsys.readouterr().out
    assert main(["export", "--run", str(out)]) == 2
    assert "distkg: error: export: no ONNX graph for a FrequencyBaseline model" in capsys.readouterr().err
