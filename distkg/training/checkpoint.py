"""Per-epoch checkpoints (weights, optimiser, loop state, RNG) and the best weights, written atomically.

Why atomic: a run killed while writing must still resume from a complete file. The newest
``keep`` epoch checkpoints are kept (a 400-d teacher with Adam state is ~60 MB each), plus
best.pt, which holds only the weights of the best validation epoch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

_EPOCH = re.compile(r"^epoch_(\d+)\.pt$")


def atomic_save(obj: object, path: Path) -> None:
    """torch.save to a temporary name, then rename: readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Checkpoints:
    def __init__(self, folder: Path, keep: int = 2, write: bool = True) -> None:
        """``write`` False: a reader only (ranks other than 0 of a multi-process run)."""
        self.folder = folder
        self.keep = max(keep, 1)
        self.write = write

    def epochs(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _EPOCH.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        paths = self.epochs()
        return paths[-1] if paths else None

    def save(self, epoch: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict,
             aux: torch.nn.Module | None = None) -> Path:
        """``aux``: extra trainable modules (a FitNet regressor); best.pt holds only ``model``."""
        path = self.folder / f"epoch_{epoch:04d}.pt"
        if not self.write:
            return path
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
                      "aux": aux.state_dict() if aux is not None else {}, "torch_rng": torch.get_rng_state()}, path)
        for old in self.epochs()[: -self.keep]:
            old.unlink()
        return path

    def load(self, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             aux: torch.nn.Module | None = None) -> dict:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        if aux is not None:
            aux.load_state_dict(ckpt.get("aux", {}))
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"])
        return ckpt["state"]

    def save_best(self, model: torch.nn.Module) -> None:
        if not self.write:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_save(model.state_dict(), self.folder / "best.pt")

    def load_best(self, model: torch.nn.Module) -> None:
        path = self.folder / "best.pt"
        if not path.is_file():
            from distkg.errors import DistkgError

            raise DistkgError(f"{path} not found: the run has no evaluated epoch yet")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
