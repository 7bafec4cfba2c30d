"""Per-epoch checkpoints (weights, optimiser, loop state, RNG) and the best weights, written atomically
and verified when read: a damaged newest checkpoint is reported and the newest intact one used.

Why atomic: a run killed while writing must still resume from a complete file. The newest
``keep`` epoch checkpoints are kept (a 400-d teacher with Adam state is ~60 MB each), plus
best.pt, which holds only the weights of the best validation epoch.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from distkg.errors import DistkgError, first_line
from distkg.runfolder import atomic_write

log = logging.getLogger("distkg")


def atomic_save(obj: object, path: Path) -> None:
    """torch.save, atomically (distkg.runfolder.atomic_write): a run killed while saving still resumes
    from a complete file."""
    atomic_write(path, lambda f: torch.save(obj, f))


class CheckpointError(DistkgError):
    """A checkpoint file that cannot be read (truncated, corrupt) or does not fit the model."""


def read_checkpoint(path: Path, weights_only: bool = True) -> Any:
    """torch.load, with a file that cannot be read reported as a CheckpointError naming it.
    ``weights_only=False`` only for a file the run wrote itself holding a library's objects (a
    DeepSpeed ZeRO partition: its loss scaler, stage enum and version)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # torch raises RuntimeError, EOFError, pickle errors... for a damaged file
        # a weights-only UnpicklingError's first line is a paragraph about torch 2.6's defaults
        why = "UnpicklingError: not a file torch.save wrote" if isinstance(e, pickle.UnpicklingError) else first_line(e)
        raise CheckpointError(f"{path} cannot be read ({why}); it is truncated or corrupt") from None


def load_weights(module: torch.nn.Module, weights: dict, path: Path) -> None:
    """load_state_dict, with weights of another shape reported as a CheckpointError naming the file."""
    try:
        module.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit this model ({(str(e).strip().splitlines() or [''])[-1].strip()[:300]}); it was "
                              "written by a run of another configuration") from None


class Checkpoints:
    def __init__(self, folder: Path, keep: int = 2, write: bool = True, prefix: str = "epoch") -> None:
        """``write`` False: a reader only (ranks other than 0 of a multi-process run). ``prefix``
        names the unit a checkpoint follows: ``epoch_0003.pt`` (KG training), ``round_0003.pt``
        (LLM fine-tuning: a head epoch or ``llm.checkpoint_every`` steps, distkg.training.loop)."""
        self.folder = folder
        self.keep = max(keep, 1)
        self.write = write
        self.prefix = prefix
        self._name = re.compile(rf"^{prefix}_(\d+)\.pt$")

    def epochs(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := self._name.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        paths = self.epochs()
        return paths[-1] if paths else None

    def save(self, epoch: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict,
             aux: torch.nn.Module | None = None) -> Path:
        """``aux``: extra trainable modules (a FitNet regressor); best.pt holds only ``model``."""
        path = self.folder / f"{self.prefix}_{epoch:04d}.pt"
        weights = self._weights(model)
        if not self.write:
            return path
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_save({"model": weights, "optimizer": optimizer.state_dict(), "state": state,
                      "aux": aux.state_dict() if aux is not None else {}, "torch_rng": torch.get_rng_state()}, path)
        for old in self.epochs()[: -self.keep]:
            old.unlink()
        return path

    def load(self, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             aux: torch.nn.Module | None = None) -> dict:
        ckpt = read_checkpoint(path)
        if not isinstance(ckpt, dict) or not {"model", "optimizer", "state", "torch_rng"} <= ckpt.keys():
            raise CheckpointError(f"{path} is not a checkpoint of distkg's training loop (keys model, optimizer, state, "
                                  "torch_rng)")
        load_weights(model, ckpt["model"], path)
        if aux is not None:
            load_weights(aux, ckpt.get("aux", {}), path)
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"])
        return ckpt["state"]

    def resume(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               aux: torch.nn.Module | None = None) -> tuple[Path, dict] | None:
        """Load the newest intact epoch checkpoint: one that cannot be read is reported and the one
        before it tried; None when there is none; a CheckpointError when none can be read or the
        checkpoints do not fit the model."""
        paths = self.epochs()
        for path in reversed(paths):
            try:
                return path, self.load(path, model, optimizer, aux)
            except CheckpointError as e:
                if "does not fit" in str(e):
                    raise
                log.warning("%s; trying the checkpoint before it", e)
        if paths:
            raise CheckpointError(f"no intact checkpoint in {self.folder} ({', '.join(p.name for p in paths)} cannot be "
                                  "read); pass --restart to start over")
        return None

    def _weights(self, model: torch.nn.Module) -> dict | None:
        """``model.state_dict()`` where it is written, and on every rank when it is a collective call
        (``model.collective``: ZeRO-3 gathers the weights), though only the writer writes."""
        return model.state_dict() if self.write or getattr(model, "collective", False) else None

    def save_best(self, model: torch.nn.Module) -> None:
        weights = self._weights(model)
        if not self.write:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_save(weights, self.folder / "best.pt")

    def load_best(self, model: torch.nn.Module, best_epoch: int | None = None) -> None:
        """The best weights; when best.pt is missing or cannot be read and the checkpoint of
        ``best_epoch`` (which holds the same weights) is intact, from that checkpoint, rewriting best.pt."""
        path = self.folder / "best.pt"
        epoch = self.folder / f"{self.prefix}_{best_epoch or 0:04d}.pt"
        try:
            if not path.is_file():
                raise CheckpointError(f"{path} not found")
            load_weights(model, read_checkpoint(path), path)
        except CheckpointError as e:
            if "does not fit" in str(e) or not best_epoch or not epoch.is_file():
                if not path.is_file():
                    raise DistkgError(f"{path} not found: the run has no evaluated epoch yet"
                                      + (f", and its best epoch's checkpoint {epoch.name} is gone too" if best_epoch else "")) from None
                raise
            log.warning("%s; using the weights of the best epoch's checkpoint %s", e, epoch)
            load_weights(model, read_checkpoint(epoch)["model"], epoch)
            self.save_best(model)
