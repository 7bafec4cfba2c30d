"""Reading the TKG benchmarks: one dataset type (TKGDataset), readers per layout, data root lookup."""

from __future__ import annotations

import os
from pathlib import Path

from distkg.cachedir import cache_root
from distkg.data.dataset import KEY, O, R, S, SPLITS, T0, T1, TKGDataset
from distkg.data.options import DataConfig
from distkg.data.readers import READERS
from distkg.errors import DataError

__all__ = ["DataConfig", "TKGDataset", "load_dataset", "resolve_data_root", "S", "R", "O", "T0", "T1", "KEY", "SPLITS"]


def default_cache_root() -> Path:
    """The default data root: the cache's data/ folder (distkg.cachedir.cache_root: $DISTKG_CACHE, else
    $XDG_CACHE_HOME/distkg, else ~/.cache/distkg), so that DISTKG_CACHE moves it with every other cache."""
    return cache_root() / "data"


def resolve_data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The data root: the explicit value (--data-root, else data.root), else $DISTKG_DATA, else the cache's data/."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("DISTKG_DATA"):
        return Path(os.environ["DISTKG_DATA"]).expanduser()
    return default_cache_root()


def load_dataset(cfg: DataConfig | str, root: str | os.PathLike | None = None) -> TKGDataset:
    """Read a dataset by name from the data root (see resolve_data_root)."""
    if isinstance(cfg, str):
        cfg = DataConfig(dataset=cfg)
    from distkg.data.synth import synth_reader

    name = cfg.dataset.lower()
    folder = resolve_data_root(root or cfg.root) / name
    reader = name if name in READERS else synth_reader(folder)  # a synthetic graph (distkg data synth)
    if reader is None:
        raise DataError(f"unknown dataset {cfg.dataset!r}: not a benchmark ({', '.join(sorted(READERS))}) and no "
                        f"graph of `distkg data synth` at {folder}")
    if not folder.is_dir():
        raise DataError(
            f"dataset folder {folder} not found; run `distkg data download {name}` "
            "or point --data-root / $DISTKG_DATA at a folder that holds it"
        )
    return READERS[reader](folder, cfg)
