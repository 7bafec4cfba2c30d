"""Training on real YAGO11k with tiny dims: exact resume after a crash, the NaN guard, checkpoints, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from distkg.cli.main import main
from distkg.config import load_config
from distkg.training import trainer
from distkg.training.checkpoint import Checkpoints


def config(data_root, **train):
    sets = [f"data.root={data_root}", "data.dataset=yago11k", "model.name=tadistmult", "model.args.dim=6",
            "train.batch_size=4000", "train.epochs=3", "train.progress=false", "eval.progress=false",
            "train.patience=10"] + [f"train.{k}={v}" for k, v in train.items()]
    return load_config(None, sets)


def test_resume_after_crash_gives_the_same_result(data_root, tmp_path, monkeypatch):
    straight = trainer.train(config(data_root), tmp_path / "a")

    def crash(epoch, step):
        if epoch == 1 and step == 3:
            raise KeyboardInterrupt("simulated crash mid-epoch")

    monkeypatch.setattr(trainer, "_after_step", crash)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config(data_root), tmp_path / "b")
    assert [p.name for p in Checkpoints(tmp_path / "b" / "checkpoints").epochs()] == ["epoch_0001.pt"]
    monkeypatch.setattr(trainer, "_after_step", lambda epoch, step: None)
    resumed = trainer.train(config(data_root), tmp_path / "b")
    for key in ("mrr", "mr", "hits@1", "hits@10", "best_epoch", "epochs_run"):
        assert resumed[key] == straight[key], key
    a = torch.load(tmp_path / "a" / "checkpoints" / "best.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "best.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]


def test_nan_stops_and_keeps_the_last_good_checkpoint(data_root, tmp_path):
    trainer.train(config(data_root, epochs=1), tmp_path)
    good = Checkpoints(tmp_path / "checkpoints").latest()
    with pytest.raises(trainer.TrainingDiverged, match=r"became (nan|inf).*epoch 2.*epoch_0001\.pt"):
        trainer.train(config(data_root, epochs=3, lr=1e38), tmp_path)
    ck = Checkpoints(tmp_path / "checkpoints")
    assert ck.latest() == good
    state = torch.load(good, weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_checkpoints_kept_and_curves_written(data_root, tmp_path):
    m = trainer.train(config(data_root, keep_checkpoints=2, grad_accum=2), tmp_path)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["best.pt", "epoch_0002.pt", "epoch_0003.pt"]
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert m["epochs_run"] == 3 and 0 < m["mrr"] <= 1 and m["protocol"]["filter"] == "time"


def test_negative_sampling_learns(data_root, tmp_path):
    m = trainer.train(config(data_root, loss="negative_sampling", negatives=8, epochs=2, optimizer="adam", lr=0.01), tmp_path)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[1]["loss"] < log[0]["loss"] and m["mrr"] > 0


def test_cli_train_then_evaluate_run(data_root, tmp_path):
    out = tmp_path / "run"
    args = ["--out", str(out), "--set", f"data.root={data_root}", "--set", "model.name=ttranse", "--set", "model.args.dim=6",
            "--set", "train.epochs=1", "--set", "train.batch_size=4000", "--set", "train.progress=false"]
    assert main(["train", *args]) == 0
    trained = json.loads((out / "metrics.json").read_text())
    assert main(["evaluate", "--run", str(out), "--set", "eval.splits=[test]"]) == 0
    rescored = json.loads((out / "rescore" / "metrics.json").read_text())
    assert rescored["mrr"] == pytest.approx(trained["mrr"], abs=1e-9)
    assert main(["train", *args, "--set", "train.epoks=2"]) == 2  # a typo is rejected by name
