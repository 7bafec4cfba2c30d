"""The one in-memory dataset type every reader produces and every model, trainer and evaluator reads.

Why one type: the four benchmark layouts differ (names vs ids, days vs year intervals, CRLF maps),
but after reading they are all the same thing: integer facts, a time vocabulary, id<->name maps and
readable text for the LLM teacher. Everything downstream sees only this.

Facts are stored per split as an int64 array of shape [n, 6]:

    column  S, R, O   subject, relation, object ids
    column  T0, T1    time ids (into ``time_labels``) of the fact's start and end; equal for
                      point-in-time data (ICEWS), bucketed years for interval data (YAGO, Wikidata)
    column  KEY       the time *as written* (id into ``time_keys``); the time-aware filter compares
                      this, so two interval facts only share a query key if their dates were
                      written identically (docs/PROTOCOL.md)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from distkg.data.dates import RULES

S, R, O, T0, T1, KEY = range(6)
SPLITS = ("train", "valid", "test")
TimeKind = Literal["point", "interval"]


@dataclass
class TKGDataset:
    """A temporal KG benchmark after reading: see the module docstring for the fact layout."""

    name: str
    time_kind: TimeKind
    splits: dict[str, np.ndarray]
    entity_names: list[str]
    relation_names: list[str]
    entity_text: list[str]
    relation_text: list[str]
    time_labels: list[str]
    time_keys: list[str]
    # Lines touched by each date rule and each bad-line rule, by rule name (shown to the user).
    date_rules: dict[str, int] = field(default_factory=dict)
    bad_lines: dict[str, int] = field(default_factory=dict)
    bad_line_examples: list[str] = field(default_factory=list)  # first few "file:line: reason"
    # Interval data only: [lo, hi] years of each time bucket, in time id order (unknown excluded).
    buckets: list[tuple[int, int]] = field(default_factory=list)
    min_bucket_size: int | None = None
    # Raw dates of each time id for point data: (year, month, day); the TA-DistMult tokenizer reads it.
    time_ymd: list[tuple[int, int, int]] = field(default_factory=list)
    unknown_time: int | None = None  # time id that stands for "unknown", if the vocabulary has one

    def __post_init__(self) -> None:
        for split in SPLITS:
            facts = self.splits[split]
            if facts.ndim != 2 or facts.shape[1] != 6 or facts.dtype != np.int64:
                raise ValueError(f"{self.name}/{split}: facts must be int64 [n, 6], got {facts.dtype} {facts.shape}")

    @property
    def num_entities(self) -> int:
        return len(self.entity_names)

    @property
    def num_relations(self) -> int:
        return len(self.relation_names)

    @property
    def num_times(self) -> int:
        return len(self.time_labels)

    def all_facts(self) -> np.ndarray:
        """Train, valid and test stacked: the set of known true facts the filter removes."""
        return np.concatenate([self.splits[s] for s in SPLITS], axis=0)

    def with_queries(self, split: str, n: int, seed: int) -> TKGDataset:
        """The dataset with a deterministic sample of ``split`` holding n queries (n // 2 facts, each
        asked in both directions); n = 0 or n >= the split's queries: the dataset itself. How the LLM
        teacher's validation stays cheap (``llm.valid_queries``)."""
        facts = self.splits[split]
        if not n or n >= len(facts):
            return self
        rows = np.sort(np.random.default_rng(seed).choice(len(facts), n // 2, replace=False))
        return dataclasses.replace(self, splits={**self.splits, split: facts[rows]})

    def stats(self) -> dict:
        """The figures `distkg data stats` prints; the keys are a stable, documented interface."""
        out: dict = {
            "name": self.name,
            "time_kind": self.time_kind,
            "entities": self.num_entities,
            "relations": self.num_relations,
            **{split: int(self.splits[split].shape[0]) for split in SPLITS},
            "time_ids": self.num_times,
            "distinct_time_keys": len(self.time_keys),
        }
        if self.time_kind == "interval":
            out["buckets"] = len(self.buckets)
            out["min_bucket_size"] = self.min_bucket_size
            out["bucket_years"] = [f"{lo}..{hi}" for lo, hi in self.buckets]
        else:
            out["timestamps"] = self.num_times
            out["first_time"], out["last_time"] = self.time_labels[0], self.time_labels[-1]
        out["date_rules"] = dict(self.date_rules)
        out["bad_lines"] = dict(self.bad_lines)
        out["bad_line_examples"] = list(self.bad_line_examples)
        return out

    def describe(self) -> str:
        """A few lines a person reads before trusting any number computed on this data."""
        lines = [
            f"{self.name}: {self.num_entities} entities, {self.num_relations} relations, "
            + "/".join(str(len(self.splits[s])) for s in SPLITS)
            + f" train/valid/test facts, {self.num_times} time ids"
        ]
        if self.time_kind == "interval":
            lines.append(f"  {len(self.buckets)} year buckets (min_bucket_size={self.min_bucket_size}) + 'unknown'")
        else:
            lines.append(f"  days {self.time_labels[0]} .. {self.time_labels[-1]}")
        lines += [f"  date rule {rule}: {n} lines ({RULES[rule]})" for rule, n in sorted(self.date_rules.items())]
        lines += [f"  skipped bad lines ({reason}): {n}" for reason, n in sorted(self.bad_lines.items())]
        lines += [f"    e.g. {ex}" for ex in self.bad_line_examples]
        return "\n".join(lines)
