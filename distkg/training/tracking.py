"""Runs watched in TensorBoard, MLflow or W&B (``train.log_with``): Accelerate's trackers, fed by the
one training loop (distkg.training.loop), so the KG trainer, the students and the LLM fine-tuning all
report the same rows: each round's loss, its parts and rate, and validation MRR when it validated.

Why Accelerate's trackers and not our own writer: they are what users of Accelerate already read, and
one ``log_with`` name reaches each backend. What is tracked sits in OUT/tracking/KIND (TensorBoard;
``tensorboard --logdir OUT`` shows a pipeline's parts side by side); MLflow and W&B go where their
own settings say (MLFLOW_TRACKING_URI, WANDB_PROJECT...). The run's config slice is stored as
hyperparameters. A resumed run drops the events past its checkpoint (TensorBoard's purge_step), so
rounds run again after a crash are not plotted twice.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from distkg.errors import ConfigError

log = logging.getLogger("distkg")

TRACKERS = ("none", "tensorboard", "mlflow", "wandb")
FOLDER = "tracking"  # OUT/tracking: a run folder's entry (distkg.runfolder.RUN_ENTRIES)
_PACKAGE = {"tensorboard": "tensorboard or tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}


def check_tracker(name: str) -> None:
    """``train.log_with=NAME`` is usable here: its package is installed (checked when the config is
    read, so a pipeline does not learn it after its teacher trained)."""
    if name == "none":
        return
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "mlflow": is_mlflow_available, "wandb": is_wandb_available}
    if not available[name]():
        raise ConfigError(f"train.log_with={name!r}: the {_PACKAGE[name]} package is not installed here "
                          f"(pip install {name}), or set train.log_with=none")


def hyperparameters(values: dict, prefix: str = "") -> dict:
    """A config slice as the flat str/int/float/bool mapping trackers store (lists as their text)."""
    flat: dict = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(hyperparameters(value, f"{name}."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[name] = "None" if value is None else value
        else:
            flat[name] = str(value)
    return flat


class Tracker:
    """The trackers of one run folder, on its main process only."""

    def __init__(self, name: str, out: Path, kind: str, config: dict, done: int = 0) -> None:
        """``done``: rounds already logged by the checkpoint resumed from; later events are dropped."""
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        check_tracker(name)
        cls = LOGGER_TYPE_TO_CLASS[name]
        if name == "tensorboard":  # tensorboardX names a file by the second: a resume within it would overwrite
            # its writer thread writes every event at once but flushes the file only every flush_secs
            # (its flush() does not wait for the queue): 5 s, so a killed run loses at most that much
            self.tracker = cls(kind, out / FOLDER, filename_suffix=f".{os.getpid()}.from{done}", flush_secs=5,
                               **({"purge_step": done + 1} if done else {}))
        elif name == "mlflow":
            self.tracker = cls(experiment_name=kind, run_name=str(out))
        else:
            self.tracker = cls(kind, name=str(out))
        self.tracker.start()
        if not done:  # hyperparameters once per run
            self.tracker.store_init_configuration(hyperparameters(config))
        self.name = name
        log.info("tracking with %s%s", name, f" in {out / FOLDER / kind}" if name == "tensorboard" else "")

    def log(self, row: dict, step: int) -> None:
        """A round's numbers (its text fields, such as the phase name, left out)."""
        values = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}
        self.tracker.log(values, step=step)

    def finish(self) -> None:
        """Every logged event on disk (a run that stops on an exception calls it too: distkg.training.loop)."""
        self.tracker.finish()


def tracker_for(cfg, out: Path, kind: str):
    """What the loop calls with the rounds already done to start the run's trackers; None when
    ``train.log_with`` is none."""
    if cfg.train.log_with == "none":
        return None
    from distkg.runfolder import config_slice

    return lambda done: Tracker(cfg.train.log_with, out, kind, config_slice(cfg, kind), done)
