"""Turning a split's facts into ranking queries, both directions.

Order is fixed and documented because per-query ranks are returned positionally: rows
0..n-1 are the tail queries of the split's facts in file order, rows n..2n-1 the head queries
of the same facts in the same order (head queries use reciprocal relation r + R, see scorer.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distkg.data import KEY, O, R, S, T0, T1


@dataclass(frozen=True)
class QuerySet:
    """Queries [Q, 4] (entity, relation', t0, t1), their answers [Q] and filter time keys [Q]."""

    queries: np.ndarray
    answers: np.ndarray
    keys: np.ndarray
    num_tail: int  # rows [0, num_tail) are tail queries, the rest head queries

    def __len__(self) -> int:
        return int(self.answers.shape[0])


def build_queries(facts: np.ndarray, num_relations: int) -> QuerySet:
    """Tail queries (s, r, t) -> o, then head queries (o, r + R, t) -> s, for facts [n, 6]."""
    facts = np.asarray(facts, dtype=np.int64)
    tail = np.stack([facts[:, S], facts[:, R], facts[:, T0], facts[:, T1]], axis=1)
    head = np.stack([facts[:, O], facts[:, R] + num_relations, facts[:, T0], facts[:, T1]], axis=1)
    return QuerySet(
        queries=np.ascontiguousarray(np.concatenate([tail, head]), dtype=np.int64),
        answers=np.concatenate([facts[:, O], facts[:, S]]).astype(np.int64),
        keys=np.concatenate([facts[:, KEY], facts[:, KEY]]).astype(np.int64),
        num_tail=int(facts.shape[0]),
    )
