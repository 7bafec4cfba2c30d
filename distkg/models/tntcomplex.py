"""TNTComplEx (Lacroix et al. 2020): temporal ComplEx with N3 and temporal smoothness.

score = Re(<e_s, r * tau_t + r_nt, conj(e_o)>), which in the [real | imaginary] layout is a plain
dot product of the query vector e_s * (r * tau_t + r_nt) with the candidate rows. ``dim`` counts real numbers, so dim 400 is rank
200 (real and imaginary halves), the same parameter budget per entity as the other backbones.
"""

from __future__ import annotations

import torch

from distkg.data import TKGDataset
from distkg.models.base import DotProductModel, embedding
from distkg.models.registry import MODELS


def cmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Complex product of [.., 2k] tensors laid out as [real | imaginary]."""
    k = a.shape[-1] // 2
    ar, ai, br, bi = a[..., :k], a[..., k:], b[..., :k], b[..., k:]
    return torch.cat([ar * br - ai * bi, ar * bi + ai * br], -1)


def cabs(a: torch.Tensor) -> torch.Tensor:
    k = a.shape[-1] // 2
    return (a[..., :k].pow(2) + a[..., k:].pow(2)).sqrt()


@MODELS.register("tntcomplex")
class TNTComplEx(DotProductModel):
    dim_step = 2  # real + imaginary halves

    def __init__(self, dataset: TKGDataset, dim: int = 400, init_std: float = 1e-2, reg: float = 1e-2,
                 time_reg: float = 1e-2) -> None:
        if dim % 2:
            raise ValueError(f"tntcomplex needs an even dim (real + imaginary halves), got {dim}")
        super().__init__(dataset, dim)
        nrel = 2 * self.num_relations
        self.ent = embedding(self.num_entities, dim, init_std)
        self.rel = embedding(nrel, dim, init_std)
        self.rel_nt = embedding(nrel, dim, init_std)
        self.time = embedding(self.num_times, dim, init_std)
        # the time ids whose neighbours are smoothed: ordered times only, not the 'unknown' id
        self.num_ordered_times = dataset.unknown_time if dataset.unknown_time is not None else dataset.num_times
        self.reg, self.time_reg = reg, time_reg

    def _factors(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tau = 0.5 * (self.time(queries[:, 2]) + self.time(queries[:, 3]))
        full_rel = cmul(self.rel(queries[:, 1]), tau) + self.rel_nt(queries[:, 1])
        return self.ent(queries[:, 0]), full_rel

    def query_repr(self, queries: torch.Tensor) -> torch.Tensor:
        lhs, full_rel = self._factors(queries)
        return cmul(lhs, full_rel)

    def regularizer(self, queries: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        lhs, full_rel = self._factors(queries)
        n3 = sum(cabs(f).pow(3).sum() for f in (lhs, full_rel, self.ent(answers))) / len(queries)
        t = self.time.weight[: self.num_ordered_times]
        smooth = cabs(t[1:] - t[:-1]).pow(3).sum() / max(len(t) - 1, 1) if len(t) > 1 else n3 * 0
        return self.reg * n3 + self.time_reg * smooth
