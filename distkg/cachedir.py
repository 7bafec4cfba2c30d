"""distkg's per-user cache folder, one rule for every cache (LLM models and features, compiled kernels,
what students derive from their teachers' runs)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# the files of a finished run that students derive caches from: a KG run's best weights, an LLM run's
# exported tables, an ensemble's spec (distkg.distill.teachers, distkg.distill.second)
DERIVED_SOURCES = ("checkpoints/best.pt", "teacher/tables.pt", "ensemble.json")


def cache_root() -> Path:
    """$DISTKG_CACHE, else $XDG_CACHE_HOME/distkg, else ~/.cache/distkg."""
    base = os.environ.get("DISTKG_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache"), "distkg")
    return Path(base)


def file_sha1(path: Path) -> str:
    """The SHA-1 of a file's bytes (a retrained teacher differs there even where size and mtime agree)."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def derived_folder(sha1: str) -> Path:
    """The caches derived from the file whose digest is ``sha1`` (a teacher's soft targets, P_LLM, an
    ensemble's mixture): CACHE_ROOT/derived/SHA1, not the teacher's folder, which belongs to the run
    that made it. Shared by every student of that teacher; deleted by the ``--restart`` of the run that
    made the file (distkg.runfolder.clear); rebuilt when missing."""
    return cache_root() / "derived" / sha1


def derived_folders(run: Path) -> list[Path]:
    """The derived folders of a run's DERIVED_SOURCES that exist."""
    folders = [derived_folder(file_sha1(run / name)) for name in DERIVED_SOURCES if (run / name).is_file()]
    return [f for f in folders if f.is_dir()]
