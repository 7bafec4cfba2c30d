"""distkg's per-user cache folder, one rule for every cache (LLM models and features, compiled kernels)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$DISTKG_CACHE, else $XDG_CACHE_HOME/distkg, else ~/.cache/distkg."""
    base = os.environ.get("DISTKG_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache"), "distkg")
    return Path(base)
