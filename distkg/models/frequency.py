"""A baseline that needs no training: how often the answer was seen with the query in train.

Why: it is the "given model" the pipeline evaluates before any neural model exists, and a floor
every learned model must clear (on ICEWS-style data, repeated events make it strong). Score of
candidate c for query (e, r') is ``log1p(n(e, r', c)) + prior * log1p(n(r', c))`` where n counts
training facts in both directions (head queries use reciprocal relations r + R, as everywhere).
Time is ignored on purpose: it is the static reference point for the temporal models.
"""

from __future__ import annotations

import numpy as np
import torch

from distkg.data import O, R, S, TKGDataset
from distkg.models.registry import MODELS


@MODELS.register("frequency")
class FrequencyBaseline:
    def __init__(self, dataset: TKGDataset, prior: float = 0.01) -> None:
        self.num_entities = dataset.num_entities
        self.num_relations = dataset.num_relations
        self.prior = prior
        train = dataset.splits["train"]
        n, nr = self.num_entities, self.num_relations
        known = np.concatenate([train[:, S], train[:, O]])
        rel = np.concatenate([train[:, R], train[:, R] + nr])
        ans = np.concatenate([train[:, O], train[:, S]])
        codes = (known * (2 * nr) + rel) * n + ans
        uniq, counts = np.unique(codes, return_counts=True)
        self._rows = uniq // n  # (e, r') row code, sorted
        self._cols = torch.from_numpy(uniq % n)
        self._vals = torch.from_numpy(np.log1p(counts).astype(np.float32))
        popularity = np.zeros((2 * nr, n), dtype=np.float32)
        np.add.at(popularity, (rel, ans), 1.0)
        self._prior = torch.from_numpy(prior * np.log1p(popularity))

    def score_candidates(self, queries: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        q = queries.cpu().numpy()
        rows = q[:, 0] * (2 * self.num_relations) + q[:, 1]
        lo, hi = np.searchsorted(self._rows, rows, "left"), np.searchsorted(self._rows, rows, "right")
        scores = self._prior[torch.from_numpy(q[:, 1])].clone()
        lengths = hi - lo
        idx = torch.from_numpy(np.repeat(np.arange(len(q)), lengths))
        flat = torch.from_numpy(np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]) if len(q) else np.zeros(0, np.int64))
        scores[idx, self._cols[flat]] += self._vals[flat]
        return scores[:, start:stop]
