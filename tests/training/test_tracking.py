"""``train.log_with``: a run watched in TensorBoard through Accelerate's trackers (distkg.training.tracking),
its event files read back with TensorBoard's own record format, not through the writer that wrote them."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import pytest

from distkg.config import load_config
from distkg.errors import ConfigError
from distkg.training import trainer
from tests.helpers import tiny_dataset

DS = tiny_dataset("interval", n_ent=60, n_facts=600)


def config(*sets: str):
    return load_config(None, ["model.name=tadistmult", "model.args.dim=6", "train.batch_size=64", "train.epochs=3",
                              "train.progress=false", "eval.progress=false", "train.patience=10", *sets])


def events(folder: Path) -> list:
    """Every event in the TFRecord files under FOLDER (8-byte length, 4-byte CRC, the Event proto, 4-byte CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    found = []
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event()
            event.ParseFromString(data[at + 12:at + 12 + length])
            found.append(event)
            at += 12 + length + 4
    return found


def scalars(folder: Path) -> dict[str, dict[int, float]]:
    """tag -> step -> value; a later file's value for a step wins (a resumed run purges past its checkpoint)."""
    out: dict[str, dict[int, float]] = {}
    for event in events(folder):
        for value in event.summary.value:
            if value.HasField("simple_value"):
                out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


def test_tensorboard_gets_each_epochs_loss_and_validation_mrr(tmp_path):
    trainer.train(config("train.log_with=tensorboard"), tmp_path, dataset=DS)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    got = scalars(tmp_path / "tracking" / "kg")
    assert got["loss"] == pytest.approx({r["epoch"]: r["loss"] for r in rows})
    assert got["valid_mrr"] == pytest.approx({r["epoch"]: r["valid_mrr"] for r in rows})
    assert sorted(got["loss"]) == [1, 2, 3]
    # the config as hyperparameters (TensorBoard's hparams plugin data names the keys)
    text = b"".join(e.SerializeToString() for e in events(tmp_path / "tracking" / "kg"))
    assert b"model.args.dim" in text and b"train.batch_size" in text


def test_a_resumed_run_logs_each_epoch_once(tmp_path, monkeypatch):
    def crash(epoch, step):
        if epoch == 1 and step == 3:
            raise KeyboardInterrupt("simulated crash mid-epoch")

    monkeypatch.setattr(trainer, "_after_step", crash)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config("train.log_with=tensorboard"), tmp_path, dataset=DS)
    monkeypatch.setattr(trainer, "_after_step", lambda epoch, step: None)
    trainer.train(config("train.log_with=tensorboard"), tmp_path, dataset=DS)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    got = scalars(tmp_path / "tracking" / "kg")
    assert got["loss"] == pytest.approx({r["epoch"]: r["loss"] for r in rows}) and sorted(got["loss"]) == [1, 2, 3]
    steps = [e.step for e in events(tmp_path / "tracking" / "kg") for v in e.summary.value if v.tag == "loss"]
    assert sorted(steps) == [1, 2, 3]  # none written twice


def test_no_tracking_writes_nothing(tmp_path):
    trainer.train(config("train.epochs=1"), tmp_path, dataset=DS)
    assert not (tmp_path / "tracking").exists()


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is not None, reason="mlflow is installed here")
def test_a_tracker_that_is_not_installed_is_refused_when_the_config_is_read():
    with pytest.raises(ConfigError, match=r"train\.log_with='mlflow': the mlflow package is not installed"):
        config("train.log_with=mlflow")
