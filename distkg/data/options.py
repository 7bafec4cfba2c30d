"""The data section of a run config (``data:`` in YAML)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class DataConfig:
    """Which dataset, where it lives, and the documented rules for reading it."""

    dataset: str = "yago11k"  # yago11k, wikidata12k, icews14, icews18, or a graph of `distkg data synth`
    # Folder holding one sub-folder per dataset. None: --data-root, else $DISTKG_DATA, else the cache.
    root: str | None = None
    # HyTE-style year buckets for interval data (docs/PROTOCOL.md); recorded next to every result.
    min_bucket_size: int = 300
    # Interval data: years above this are source errors (YAGO11k has 2600, 2844) and become unknown.
    max_year: int = 2020
    # A line that cannot be read: "error" (stop, naming file:line) or "skip" (count and report).
    on_bad_line: Literal["error", "skip"] = "error"
    # Wikidata12k: also use the CC BY-NC 4.0 YAGO-alignment entity labels (non-commercial use only).
    noncommercial_labels: bool = False
