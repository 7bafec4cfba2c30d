"""TTransE (Leblay & Chekol 2018): score = -||e_s + r + tau_t - e_o||_2."""

from __future__ import annotations

import torch

from distkg.data import TKGDataset
from distkg.models.base import TKGModel, embedding
from distkg.models.registry import MODELS


def neg_l2(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """-||q - c|| for all pairs through one matmul; clamped so the sqrt has a finite gradient at 0."""
    sq = q.pow(2).sum(1, keepdim=True) - 2 * q @ c.T + c.pow(2).sum(1)
    return -sq.clamp_min(1e-9).sqrt()


@MODELS.register("ttranse")
class TTransE(TKGModel):
    def __init__(self, dataset: TKGDataset, dim: int = 400, init_std: float = 0.05, reg: float = 0.0) -> None:
        super().__init__(dataset, dim)
        self.ent = embedding(self.num_entities, dim, init_std)
        self.rel = embedding(2 * self.num_relations, dim, init_std)
        self.time = embedding(self.num_times, dim, init_std)
        self.reg = reg

    def query_repr(self, queries: torch.Tensor) -> torch.Tensor:
        tau = 0.5 * (self.time(queries[:, 2]) + self.time(queries[:, 3]))
        return self.ent(queries[:, 0]) + self.rel(queries[:, 1]) + tau

    def candidate_table(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return self.ent.weight[start:stop]

    def match(self, q: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return neg_l2(q, candidates)

    def match_pairs(self, q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return -(q - c).pow(2).sum(1).clamp_min(1e-9).sqrt()

    def regularizer(self, queries: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        """L2 on the embeddings used by the batch (translational models drift in norm without it)."""
        if not self.reg:
            return super().regularizer(queries, answers)
        used = [self.ent(queries[:, 0]), self.ent(answers), self.rel(queries[:, 1]), self.time(queries[:, 2])]
        return self.reg * sum(u.pow(2).sum() for u in used) / len(queries)
