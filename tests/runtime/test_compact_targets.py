"""Soft targets in a few numbers per query, without Ray: low-rank rows (runtime.soft_targets: lowrank)."""

from __future__ import annotations

import torch

from distkg.runtime.pool import low_rank_basis


def test_low_rank_rows_are_exact_at_full_rank_and_improve_with_rank():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(60, 12, generator=g, dtype=torch.float64) @ torch.diag(torch.linspace(3, 0.1, 12, dtype=torch.float64))
    query = torch.randn(5, 12, generator=g, dtype=torch.float64)
    rows = query @ table.T
    errors = []
    for rank in (2, 6, 12):
        basis = low_rank_basis(table, rank)
        assert basis.shape == (12, rank)
        errors.append(((query @ basis) @ (table @ basis).T - rows).norm().item())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-10
