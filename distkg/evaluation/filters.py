"""Which candidates to drop when ranking: the other known true answers of the same query key.

Modes (docs/PROTOCOL.md): ``"time"`` (default) keys on (known entity, relation', KEY), KEY being the
time exactly as written, so interval facts only share a key if their dates were written the
same; ``"static"`` keys on (entity, relation') and ignores time, the time-unaware filter several
papers used; ``"none"`` is the raw setting.

Why sorted int64 codes and searchsorted instead of a dict of sets: ICEWS18 has ~470k facts
(~940k with both directions); one sort at build time and two vectorised binary searches per
query chunk keep the filter off the profile, with no Python object per fact.
"""

from __future__ import annotations

from typing import get_args

import numpy as np

from distkg.config import FilterMode
from distkg.data import KEY, O, R, S, TKGDataset
from distkg.evaluation.queries import QuerySet

FILTER_MODES: tuple[str, ...] = get_args(FilterMode)


class FilterIndex:
    """All known true (key -> answer) pairs, both directions, as sorted codes (see module doc)."""

    def __init__(self, facts: np.ndarray, num_relations: int, mode: FilterMode = "time") -> None:
        if mode not in ("time", "static"):
            raise ValueError(f"filter mode must be 'time' or 'static' to build an index, got {mode!r}")
        facts = np.asarray(facts, dtype=np.int64)
        self.mode = mode
        self.num_relations = num_relations
        self.num_keys = int(facts[:, KEY].max()) + 1 if len(facts) else 1
        entity = np.concatenate([facts[:, S], facts[:, O]])
        relation = np.concatenate([facts[:, R], facts[:, R] + num_relations])
        key = np.concatenate([facts[:, KEY], facts[:, KEY]])
        answer = np.concatenate([facts[:, O], facts[:, S]])
        codes = self.encode(entity, relation, key)
        # Sort by (code, answer) and drop repeated pairs: a fact listed in two splits (or twice)
        # must be subtracted once, or ranks would go below the truth.
        order = np.lexsort((answer, codes))
        codes, answer = codes[order], answer[order]
        keep = np.ones(len(codes), dtype=bool)
        keep[1:] = (codes[1:] != codes[:-1]) | (answer[1:] != answer[:-1])
        self._codes = np.ascontiguousarray(codes[keep])
        self._answers = np.ascontiguousarray(answer[keep])

    @classmethod
    def from_dataset(cls, dataset: TKGDataset, mode: FilterMode = "time") -> "FilterIndex":
        """Index over train + valid + test: the protocol's set of known true facts."""
        return cls(dataset.all_facts(), dataset.num_relations, mode)

    def __len__(self) -> int:
        return int(self._codes.shape[0])

    def encode(self, entity: np.ndarray, relation: np.ndarray, key: np.ndarray) -> np.ndarray:
        """One int64 per query key; relation is relation' in [0, 2R)."""
        code = entity.astype(np.int64) * (2 * self.num_relations) + relation
        if self.mode == "time":
            if len(key) and (key.min() < 0 or key.max() >= self.num_keys):
                # A key no known fact has: nothing to filter, but it must not alias another key.
                return np.where((key >= 0) & (key < self.num_keys), code * self.num_keys + key, -1)
            code = code * self.num_keys + key
        return code

    def pairs(self, qs: QuerySet, lo: int = 0, hi: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) of every candidate to drop for queries lo..hi-1; rows are relative to lo.

        The query's own answer is never among them, whatever splits it appears in."""
        hi = len(qs) if hi is None else hi
        q = qs.queries[lo:hi]
        answers = qs.answers[lo:hi]
        codes = self.encode(q[:, 0], q[:, 1], qs.keys[lo:hi])
        first = np.searchsorted(self._codes, codes, side="left")
        last = np.searchsorted(self._codes, codes, side="right")
        counts = last - first
        counts[codes < 0] = 0
        rows = np.repeat(np.arange(hi - lo, dtype=np.int64), counts)
        # Position j of row i's run maps to index first[i] + j of the sorted arrays.
        offsets = np.cumsum(counts) - counts
        idx = np.arange(rows.shape[0], dtype=np.int64) + np.repeat(first - offsets, counts)
        cols = self._answers[idx]
        keep = cols != answers[rows]
        return rows[keep], cols[keep]
