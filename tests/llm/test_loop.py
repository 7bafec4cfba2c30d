"""LLM fine-tuning runs in the KG trainer's loop (distkg.training.loop via distkg.llm.rounds), so it has
what that loop guarantees: exact resume after a crash mid-round, a NaN guard that keeps the last good
checkpoint, early stopping on validation MRR, a time budget that covers the head warm-up, the log,
the curve and progress lines with rate and ETA. On a tiny random Llama (tests/llm/conftest.py)."""

from __future__ import annotations

import json
import logging
import time

import pytest
import torch
from safetensors.torch import load_file

from distkg.errors import ConfigError
from distkg.llm import contrastive, rounds
from distkg.llm.train import train_teacher
from distkg.training.checkpoint import Checkpoints
from distkg.training.loop import TrainingDiverged
from tests.helpers import tiny_dataset
from tests.llm.test_teacher import cfg_for


@pytest.fixture(scope="module")
def ds():
    return tiny_dataset("point", n_ent=20, n_facts=80)


def infonce(model: str, **llm):
    return cfg_for(model, **{"objective": "infonce", "queries_per_step": 8, "refresh_every": 2, "head_epochs": 2,
                             "head_queries_per_step": 32, **llm})


def saved_teacher(folder) -> dict[str, torch.Tensor]:
    head = torch.load(folder / "teacher" / "head.pt", weights_only=True)
    return {**load_file(folder / "teacher" / "adapter_model.safetensors"), "head.weight": head["head"]["weight"],
            "head.bias": head["head"]["bias"], "logit_scale": head["logit_scale"]}


def test_a_crash_mid_round_resumes_to_the_same_teacher_and_metrics(tiny_llama, ds, tmp_path, monkeypatch):
    straight = train_teacher(infonce(tiny_llama, steps=6), tmp_path / "a", dataset=ds)
    real, calls = contrastive.infonce_loss, []

    def crash(*args):  # stands in for the process being killed during the 5th InfoNCE step (round 3 of LoRA)
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt("simulated crash mid-round")
        return real(*args)

    monkeypatch.setattr(contrastive, "infonce_loss", crash)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(infonce(tiny_llama, steps=6), tmp_path / "b", dataset=ds)
    names = [p.name for p in Checkpoints(tmp_path / "b" / "checkpoints", prefix="round").epochs()]
    assert names == ["round_0003.pt", "round_0004.pt"]  # 2 head epochs, 2 LoRA rounds; the 3rd never finished
    monkeypatch.setattr(contrastive, "infonce_loss", real)
    clock, zero = time.process_time, time.process_time()  # a new process: its CPU clock starts at 0
    monkeypatch.setattr(rounds.time, "process_time", lambda: clock() - zero)
    resumed = train_teacher(infonce(tiny_llama, steps=6), tmp_path / "b", dataset=ds)
    monkeypatch.setattr(rounds.time, "process_time", clock)
    cpu = [p["process_cpu_minutes"] for p in resumed["curve"]]
    assert cpu == sorted(cpu), cpu  # the run's CPU minutes go on across the resume
    for key in ("mrr", "mr", "hits@1", "hits@10", "valid_mrr", "steps", "best_round", "best_valid_mrr", "rounds_run"):
        assert resumed[key] == straight[key], key
    a, b = saved_teacher(tmp_path / "a"), saved_teacher(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [p["valid_mrr"] for p in resumed["curve"]] == [p["valid_mrr"] for p in straight["curve"]]
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["stage"]) for r in log] == [(1, "head"), (2, "head"), (3, "lora"), (4, "lora"), (5, "lora")]
    assert all("valid_mrr" in r for r in log) and [r["step"] for r in log[2:]] == [2, 4, 6]
    assert (tmp_path / "b" / "curves.png").stat().st_size > 1000


def test_nan_stops_keeps_the_last_good_checkpoint_and_a_lower_rate_resumes(tiny_llama, ds, tmp_path, monkeypatch):
    train_teacher(infonce(tiny_llama, steps=2, head_epochs=0), tmp_path, dataset=ds)
    good = Checkpoints(tmp_path / "checkpoints", prefix="round").latest()
    real = contrastive.infonce_loss
    # the loss becomes nan in step 3, as a far too large rate makes it (the multiplication stands in for that rate)
    monkeypatch.setattr(contrastive, "infonce_loss", lambda *args: (real(*args)[0] * float("nan"), 1))
    with pytest.raises(TrainingDiverged, match=r"LLM fine-tuning stopped: the loss became nan at step 3; "
                                               r"the last good checkpoint is .*round_0001\.pt \(lower llm\.lr"):
        train_teacher(infonce(tiny_llama, steps=4, head_epochs=0), tmp_path, dataset=ds)
    assert Checkpoints(tmp_path / "checkpoints", prefix="round").latest() == good
    assert all(torch.isfinite(v).all() for v in torch.load(good, weights_only=True)["model"].values())
    assert (tmp_path / "diverged.json").is_file()
    monkeypatch.setattr(contrastive, "infonce_loss", real)
    assert train_teacher(infonce(tiny_llama, steps=4, head_epochs=0, lr=1e-4), tmp_path, dataset=ds)["steps"] == 4
    latest = torch.load(Checkpoints(tmp_path / "checkpoints", prefix="round").latest(), weights_only=True)
    assert latest["optimizer"]["lora"]["param_groups"][0]["lr"] == 1e-4  # the lowered rate, not the checkpoint's


def test_the_time_budget_covers_the_head_warm_up(tiny_llama, ds, tmp_path):
    """A spent budget (here: none at all) ends the head warm-up too, and the LoRA steps."""
    spent = train_teacher(infonce(tiny_llama, steps=4, head_epochs=5, max_minutes=0), tmp_path / "a", dataset=ds)
    assert spent["head_warmup"] is None and spent["steps"] == 0 and spent["rounds_run"] == 0


def test_early_stopping_keeps_the_best_round(tiny_llama, ds, tmp_path, monkeypatch):
    falling = iter([0.5, 0.4, 0.3, 0.2])  # stands in for a validation MRR that falls after the first LoRA round
    real = rounds.TeacherRounds.validate
    monkeypatch.setattr(rounds.TeacherRounds, "validate", lambda self, state: real(self, state) * 0 + next(falling))
    m = train_teacher(cfg_for(tiny_llama, steps=8, checkpoint_every=2, patience=2), tmp_path, dataset=ds)
    assert m["rounds_run"] == 3 and m["steps"] == 6 and m["best_round"] == 1 and m["best_round_step"] == 2
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert not (tmp_path / "checkpoints" / "round_0001.pt").is_file()  # rotated out (two kept): best.pt holds it
    assert torch.equal(saved_teacher(tmp_path)["head.weight"], best["head.weight"])


def test_progress_lines_carry_rate_and_eta(tiny_llama, ds, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="distkg"):
        train_teacher(infonce(tiny_llama, steps=2, max_minutes=5), tmp_path, dataset=ds)
    lines = [r.getMessage() for r in caplog.records if "ETA <=" in r.getMessage()]
    assert any(line.startswith("head round 1/3") and "queries/s" in line for line in lines), lines
    assert any(line.startswith("lora round 3/3") and "texts/s" in line for line in lines), lines


def test_bad_patience_is_a_config_error(tiny_llama):
    with pytest.raises(ConfigError, match=r"llm\.patience: 0 is out of range"):
        cfg_for(tiny_llama, patience=0)


def test_the_llm_rounds_reach_tensorboard(tiny_llama, ds, tmp_path):
    """``train.log_with`` from the LLM loop too: one scalar per round, the config as hyperparameters."""
    import dataclasses

    from tests.training.test_tracking import scalars

    cfg = infonce(tiny_llama, steps=2)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, log_with="tensorboard"))
    train_teacher(cfg, tmp_path, dataset=ds)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    got = scalars(tmp_path / "tracking" / "llm")
    assert got["loss"] == pytest.approx({r["epoch"]: r["loss"] for r in rows})
    assert got["valid_mrr"] == pytest.approx({r["epoch"]: r["valid_mrr"] for r in rows})
