"""The one training loop of distkg: the KG trainer's epochs (distkg.training.trainer) and the LLM
teacher's head warm-up and LoRA steps (distkg.llm.train) both run here.

Why one loop: what a run guarantees (exact resume, a NaN guard that keeps the last good
checkpoint, progress lines with rate and ETA, the curve, early stopping on validation MRR, a time
budget) is written once, so every trainer has all of it.

A run is a list of phases (a KG stage, the LLM head warm-up, the LLM LoRA steps). A phase is a
number of rounds; a round is what its ``run`` does between two checkpoints (a KG epoch, a head
epoch, ``llm.checkpoint_every`` LoRA steps) and must be reproducible from the state it was started
in (its batches come from generators seeded by the state). After every round the loop checks the
weights, validates (every ``validate_every`` rounds and at a phase's last), keeps the best
weights, writes a checkpoint (``Checkpoints``: weights, optimisers, loop state, RNG) and a log
line. A phase ends when its rounds are spent, when validation MRR has not risen for ``patience``
validations, or when its ``over`` says so (a time budget); the next phase starts from the best
weights so far with a fresh patience counter. At the end the best weights are loaded.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch

from distkg.errors import DistkgError
from distkg.runfolder import mark_diverged
from distkg.training.checkpoint import CheckpointError, Checkpoints

log = logging.getLogger("distkg")


_round_hooks: list[Callable[[int, dict], None]] = []


@contextmanager
def on_rounds(hook: Callable[[int, dict], None]) -> Iterator[None]:
    """Call ``hook(round, row)`` on every process after each round's checkpoint is written, for the
    block: how a runtime carries checkpoints elsewhere (distkg.runtime.raytrain reports them to Ray
    Train) without this loop knowing of it."""
    _round_hooks.append(hook)
    try:
        yield
    finally:
        _round_hooks.remove(hook)


class TrainingDiverged(DistkgError):
    """The loss or the weights became NaN/inf."""


class Stateful(Protocol):
    """What a checkpoint holds of a trainer: a module, a set of trainable weights, optimisers."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


class Optimizers:
    """Several optimisers checkpointed as one (the LLM teacher's head warm-up and LoRA steps).

    ``unsaved``: names whose state is not written here: DeepSpeed ZeRO partitions it across workers,
    and each worker keeps its own partition (distkg.llm.rounds.save_zero_state).
    """

    def __init__(self, unsaved: tuple[str, ...] = (), **optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers
        self.unsaved = unsaved

    def __getitem__(self, name: str) -> torch.optim.Optimizer:
        return self.optimizers[name]

    def state_dict(self) -> dict[str, Any]:
        return {k: None if k in self.unsaved else o.state_dict() for k, o in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, opt in self.optimizers.items():
            if state.get(name) is None:
                log.info("optimiser %r: its state is not in this checkpoint (under ZeRO each worker keeps its "
                         "partition, checkpoints/zero)", name)
            else:
                opt.load_state_dict(state[name])


class Clock:
    """Seconds of training across resumes; ``excluded`` blocks (a measurement) are left out."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.start = time.perf_counter() - seconds

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    @contextmanager
    def excluded(self) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.start += time.perf_counter() - t


@dataclass
class Phase:
    """Up to ``rounds`` rounds of ``run(state) -> row``: one round of training from the loop's state
    (its keys ``epoch`` = rounds done in the run, ``stage_epoch`` = in this phase, plus the trainer's
    own), returning the round's log row (``loss``, ``seconds``, ``rate_key``, anything else)."""

    name: str
    rounds: int
    run: Callable[[dict], dict]
    rate_key: str = "facts_per_second"
    validate_every: int = 1
    over: Callable[[dict], bool] | None = None  # True: end the phase now (a spent time budget)


@dataclass
class Loop:
    """What the loop keeps and how it reports, for one run folder."""

    out: Path
    ckpts: Checkpoints
    weights: Stateful  # saved every round and, when validation MRR rises, as best.pt
    optimizer: Stateful
    validate: Callable[[], float]  # validation MRR of the weights as they are
    patience: int
    digest: str  # config_digest: a checkpoint of another configuration is refused
    aux: torch.nn.Module | None = None  # trainable modules saved with the weights but not in best.pt
    main: bool = True  # writes checkpoints, the log and diverged.json
    barrier: Callable[[], None] = lambda: None  # all processes of a multi-process run meet here
    what: str = "training"  # "training stopped: ..." in the NaN message
    hint: str = "lower train.lr or raise the regularisation, then run again to resume from it"
    unit: str = "epoch"
    budget_s: float | None = None  # bounds the ETA
    clock: Clock = field(default_factory=Clock)
    validation_counts: bool = True  # False: validation time is left out of the clock (and the budget)
    # train.log_with: called with the rounds done to start the trackers (distkg.training.tracking)
    tracking: Callable[[int], Any] | None = None
    tracker: Any = None

    def resume(self, resume: bool = True) -> dict:
        """The state of the newest intact checkpoint (weights, optimiser and RNG loaded), or a new one."""
        state = {"epoch": 0, "stage": 0, "stage_epoch": 0, "best_mrr": -1.0, "best_epoch": 0,
                 "evals_without_gain": 0, "seconds": 0.0, "history": []}
        if resume and (found := self.ckpts.resume(self.weights, self.optimizer, self.aux)) is not None:
            latest, state = found
            if state.get("config_digest") != self.digest:
                raise CheckpointError(f"{latest} was written by a run of another configuration than "
                                      f"{self.out / 'config.yaml'} (a checkpoint copied in, config.yaml edited, or a "
                                      "run of a distkg before each kind of run had its own config); pass --restart "
                                      "to start over")
            state.setdefault("stage", 0)  # checkpoints written before stages existed
            state.setdefault("stage_epoch", state["epoch"])
            log.info("resumed from %s (%s %d done)", latest, self.unit, state["epoch"])
        if self.main:  # the log holds exactly the rounds of the state resumed from: none repeated, none from a later crash
            write_log(self.out / "log.jsonl", state["history"])
            if self.tracking is not None:
                self.tracker = self.tracking(state["epoch"])
        self.clock = Clock(state["seconds"])
        return state

    def diverged(self, what: str, value: float, where: str) -> TrainingDiverged:
        """The error to raise for a non-finite loss or weight, recorded in OUT so that a resume may
        lower the rates (distkg.runfolder); it names the last good checkpoint, never overwritten."""
        last = self.ckpts.latest()
        keep = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        message = f"{self.what} stopped: the {what} became {value} at {where}; {keep} ({self.hint})"
        if self.main:
            mark_diverged(self.out, message)
        return TrainingDiverged(message)

    def run(self, phases: list[Phase], state: dict) -> dict:
        """Run ``phases`` from ``state`` (from ``resume``) to the end; the best weights are loaded. The
        trackers are finished however the run ends (an exception too), so what they were given is on disk."""
        try:
            return self._run(phases, state)
        finally:
            if self.tracker is not None:
                self.tracker.finish()
                self.tracker = None

    def _run(self, phases: list[Phase], state: dict) -> dict:
        total = sum(p.rounds for p in phases)
        while state["stage"] < len(phases):
            phase = phases[state["stage"]]
            stalled = state["evals_without_gain"] >= self.patience
            cut = not stalled and state["stage_epoch"] < phase.rounds and phase.over is not None and phase.over(state)
            if stalled or cut:
                log.info("%s stopped after %d %ss: %s", phase.name, state["stage_epoch"], self.unit,
                         f"no better validation MRR in {self.patience} validations" if stalled else "its budget is spent")
            if stalled or cut or state["stage_epoch"] >= phase.rounds:
                state.update(stage=state["stage"] + 1, stage_epoch=0, evals_without_gain=0)
                if state["stage"] < len(phases) and state["best_epoch"] > 0:
                    self.barrier()
                    self.ckpts.load_best(self.weights, state["best_epoch"])  # the next phase starts from the best so far
                    log.info("%s done; %s starts from the best %s (%d)", phase.name, phases[state["stage"]].name,
                             self.unit, state["best_epoch"])
                continue
            self._round(phase, state, total)
        if state["best_epoch"] > 0:
            self.ckpts.load_best(self.weights, state["best_epoch"])
        return state

    def _round(self, phase: Phase, state: dict, total: int) -> None:
        epoch = state["epoch"]
        row = {"epoch": epoch + 1, "stage": phase.name, **phase.run(state)}
        if not all(torch.isfinite(v).all() for v in self.weights.state_dict().values()
                   if torch.is_tensor(v) and v.is_floating_point()):
            raise self.diverged("weights", float("nan"), f"{self.unit} {epoch + 1} (its end)")
        ended = phase.over is not None and phase.over(state)
        if ((state["stage_epoch"] + 1) % phase.validate_every == 0 or state["stage_epoch"] + 1 == phase.rounds
                or ended):
            if self.validation_counts:
                mrr = self.validate()
            else:
                with self.clock.excluded():
                    mrr = self.validate()
            row["valid_mrr"] = mrr
            if mrr > state["best_mrr"]:
                state.update(best_mrr=mrr, best_epoch=epoch + 1, evals_without_gain=0)
                self.ckpts.save_best(self.weights)
            else:
                state["evals_without_gain"] += 1
        state["epoch"] = epoch + 1
        state["stage_epoch"] += 1
        state["config_digest"] = self.digest
        state["seconds"] = self.clock.seconds()
        state["history"].append(row)
        self.ckpts.save(epoch + 1, self.weights, self.optimizer, state, self.aux)
        if self.main:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            if self.tracker is not None:
                self.tracker.log(row, epoch + 1)
        self.barrier()
        for hook in _round_hooks:
            hook(epoch + 1, row)
        eta = state["seconds"] / state["epoch"] * (total - state["epoch"])
        if self.budget_s is not None:
            eta = min(eta, max(0.0, self.budget_s - state["seconds"]))
        rate = row.get(phase.rate_key)
        log.info("%s %s %d/%d loss %.4f valid MRR %s  %.1fs (%s %s), ETA <= %.0fs", phase.name, self.unit, epoch + 1,
                 total, row["loss"], f"{row['valid_mrr']:.4f}" if "valid_mrr" in row else "-", row["seconds"],
                 f"{rate:.1f}" if rate is not None else "-", phase.rate_key.replace("_per_second", "/s"), eta)


def write_log(path: Path, rows: list[dict]) -> None:
    """OUT/log.jsonl, one line per round run, written whole (temporary name, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tmp.replace(path)
