"""distkg.training.loop on its own, with a one-layer model: phases, ``over`` (a time budget), early
stopping and the best weights, several optimisers in one checkpoint, resume, the clock. The KG
trainer (test_trainer.py) and the LLM teacher (tests/llm/test_loop.py) run on it."""

from __future__ import annotations

import logging
import time

import pytest
import torch

from distkg.training.checkpoint import Checkpoints
from distkg.training.loop import Clock, Loop, Optimizers, Phase


def setup(tmp_path, mrrs: list[float], patience: int = 10):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opts = Optimizers(first=torch.optim.Adam(model.parameters(), lr=0.1), second=torch.optim.SGD(model.parameters(), lr=0.1))
    scores = iter(mrrs)
    loop = Loop(tmp_path, Checkpoints(tmp_path / "checkpoints", keep=10, prefix="round"), model, opts, lambda: next(scores),
                patience, "digest", unit="round")
    return model, opts, loop


def step(model, opt):
    def run(state: dict) -> dict:
        gen = torch.Generator().manual_seed(state["epoch"])
        loss = model(torch.randn(8, 3, generator=gen)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss.item(), "seconds": 0.01, "facts_per_second": 1.0}
    return run


def test_over_ends_a_phase_and_the_next_starts_from_the_best_weights(tmp_path):
    model, opts, loop = setup(tmp_path, [0.3, 0.2, 0.1, 0.5, 0.4])
    seen = []
    first = Phase("first", 10, step(model, opts["first"]), over=lambda state: state["stage_epoch"] >= 3)  # a budget

    def second(state: dict) -> dict:
        seen.append(model.weight.detach().clone())
        return step(model, opts["second"])(state)

    state = loop.run([first, Phase("second", 2, second)], loop.resume())
    assert [(r["epoch"], r["stage"]) for r in state["history"]] == [(1, "first"), (2, "first"), (3, "first"),
                                                                     (4, "second"), (5, "second")]
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert state["best_epoch"] == 4 and torch.equal(model.weight, best["weight"])  # the best loaded at the end
    round_1 = torch.load(tmp_path / "checkpoints" / "round_0001.pt", weights_only=True)["model"]["weight"]
    round_3 = torch.load(tmp_path / "checkpoints" / "round_0003.pt", weights_only=True)["model"]["weight"]
    assert torch.equal(seen[0], round_1) and not torch.equal(seen[0], round_3)  # the best so far (MRR 0.3), not the last


def test_patience_and_both_optimisers_round_trip_through_a_resume(tmp_path):
    model, opts, loop = setup(tmp_path, [0.5, 0.4, 0.3], patience=2)
    phases = [Phase("first", 1, step(model, opts["first"])), Phase("second", 5, step(model, opts["second"]))]
    state = loop.run(phases, loop.resume())
    assert state["epoch"] == 3 and state["best_epoch"] == 1  # round 3 was the second without gain: stopped
    saved = torch.load(Checkpoints(tmp_path / "checkpoints", prefix="round").latest(), weights_only=True)["optimizer"]
    assert saved.keys() == {"first", "second"} and saved["first"]["state"] and saved["second"]["param_groups"]
    model2, opts2, loop2 = setup(tmp_path, [])
    resumed = loop2.resume()
    assert resumed["epoch"] == 3
    a, b = opts["first"].state_dict()["state"][0], opts2["first"].state_dict()["state"][0]
    assert torch.equal(a["exp_avg"], b["exp_avg"])


def test_an_optimiser_state_not_saved_is_skipped_and_said(tmp_path, caplog):
    """Under ZeRO each worker keeps its own partition (distkg.llm.rounds.save_zero_state): the loop's
    checkpoint holds none, and says so when read."""
    model = torch.nn.Linear(2, 1)
    opts = Optimizers(unsaved=("lora",), lora=torch.optim.Adam(model.parameters()))
    assert opts.state_dict() == {"lora": None}
    with caplog.at_level(logging.INFO, logger="distkg"):
        opts.load_state_dict({"lora": None})
    assert "optimiser 'lora': its state is not in this checkpoint" in caplog.text


def test_the_clock_leaves_out_what_is_excluded():
    clock = Clock(10.0)
    with clock.excluded():
        time.sleep(0.05)
    assert 10.0 <= clock.seconds() < 10.04


def test_a_checkpoint_of_another_configuration_is_refused(tmp_path):
    model, opts, loop = setup(tmp_path, [0.1])
    loop.run([Phase("first", 1, step(model, opts["first"]))], loop.resume())
    loop.digest = "another"
    with pytest.raises(Exception, match=r"round_0001\.pt was written by a run of another configuration"):
        loop.resume()
