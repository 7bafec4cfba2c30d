"""Students as shareable models (distkg.serving.pretrained): `distkg export --format hf` writes config.json,
model.safetensors and vocab.json; `distkg predict --model` answers from that folder alone, with no data
root, no pickle, and the same top-k as predict on the run."""

from __future__ import annotations

import json

import pytest
import torch

from distkg.cli.main import main
from distkg.errors import ConfigError, QueryError
from distkg.serving.predict import Predictor, load_predictor
from distkg.serving.pretrained import export_hf
from tests.serving.conftest import train_yago

QUERIES = ["Barack Obama Sr.|isMarriedTo|?|1960", "?|isMarriedTo|Barack Obama Sr.|1950..1970", "<Berlin>|<diedIn>|?|unknown"]


def predict_json(capsys, *which: str) -> list:
    capsys.readouterr()
    assert main(["predict", *which, *[a for q in QUERIES for a in ("--query", q)], "--top", "10", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_predict_from_the_model_folder_alone_matches_the_run(yago_run, data_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "hf"
    assert main(["export", "--run", str(yago_run), "--format", "hf", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "vocab.json"]
    from_run = predict_json(capsys, "--run", str(yago_run))
    monkeypatch.setenv("DISTKG_DATA", str(tmp_path / "no-data-here"))  # nothing of the dataset is readable
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a model folder is read without pickle"))
    from_model = predict_json(capsys, "--model", str(out))
    assert [[a["entity"] for a in r["answers"]] for r in from_model] == [[a["entity"] for a in r["answers"]] for r in from_run]
    assert [a["score"] for r in from_model for a in r["answers"]] == [a["score"] for r in from_run for a in r["answers"]]
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "tadistmult" and config["args"] == {"dim": 8} and config["source"]["kind"] == "kg"


@pytest.mark.parametrize("model", ["ttranse", "tntcomplex"])
def test_every_backbone_scores_the_same_after_the_round_trip(model, data_root, tmp_path):
    run = train_yago(data_root, tmp_path / model, model, dim=6)
    pred, loaded = load_predictor(run), Predictor.from_pretrained(export_hf(run, tmp_path / "hf"))
    queries = torch.tensor([[0, 1, 2, 3], [5, 3 + pred.ds.num_relations, 1, 1]])
    assert torch.equal(pred.score(queries), loaded.score(queries))
    again = Predictor.from_pretrained(loaded.save_pretrained(tmp_path / "again"))  # from Python, no run behind it
    assert torch.equal(again.score(queries), loaded.score(queries))


def test_what_needs_the_facts_or_a_sound_folder_is_refused(yago_run, tmp_path, capsys):
    out = export_hf(yago_run, tmp_path / "hf")
    with pytest.raises(QueryError, match="filter 'known' needs the training facts"):
        load_predictor(out).predict([QUERIES[0]], 5, "known")
    assert main(["predict", "--model", str(yago_run), "--query", QUERIES[0]]) == 2
    assert "not a model folder" in capsys.readouterr().err
    (out / "model.safetensors").write_bytes(b"cut")
    with pytest.raises(ConfigError, match=r"model\.safetensors cannot be read"):
        Predictor.from_pretrained(out)
    (out / "config.json").write_text("{")
    with pytest.raises(ConfigError, match=r"config\.json cannot be read"):
        Predictor.from_pretrained(out)
