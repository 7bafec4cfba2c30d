"""Soft targets in a few numbers per query, without Ray: top-k with draws from the teacher's tail
(runtime.tail_samples; the shards' answers merged into a sampled row whose expectation is the
teacher's whole row) and low-rank rows (runtime.soft_targets: lowrank)."""

from __future__ import annotations

import torch

from distkg.distill.losses import DistillBatch, combine, fused_terms
from distkg.runtime.pool import low_rank_basis, merge_topk_sampled, shard_bounds, shard_topk


def sampled(scores: torch.Tensor, k: int, m: int, T: float, seed: int, shards: int = 3):
    parts = [shard_topk(scores[:, lo:hi], lo, k, T, m, seed * shards + i)
             for i, (lo, hi) in enumerate(shard_bounds(scores.shape[1], shards))]
    return merge_topk_sampled(parts, k, T, torch.Generator().manual_seed(seed))


def test_the_sampled_row_is_the_teachers_row_in_expectation():
    scores = 2 * torch.randn(4, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    T, k, m, draws = 2.0, 5, 16, 3000
    p = torch.softmax(scores / T, dim=1)
    mean = torch.zeros_like(p)
    for seed in range(draws):
        top = sampled(scores, k, m, T, seed)
        row = top.sampled_row(40, torch.float64)
        torch.testing.assert_close(row.sum(1), torch.ones(4, dtype=torch.float64))
        assert not (top.tail_ids.unsqueeze(2) == top.ids.unsqueeze(1)).any()  # no draw inside the top k
        mean += row / draws
    torch.testing.assert_close(top.plogp, torch.xlogy(p, p).sum(1))
    torch.testing.assert_close(top.log_probs, p.log().gather(1, scores.topk(k, 1).indices))
    # each tail entry is an average of 3000 x 16 draws: within a few standard errors of p
    err = (mean - p).abs().max().item()
    assert err < 4 * (p.max().item() / (draws * m)) ** 0.5, err
    # the shards' share of the mass decides where a slot's draw comes from: one shard gives the same law
    one = torch.zeros_like(p)
    for seed in range(draws):
        one += sampled(scores, k, m, T, seed, shards=1).sampled_row(40, torch.float64) / draws
    assert (one - p).abs().max().item() < 4 * (p.max().item() / (draws * m)) ** 0.5


def test_kd_on_sampled_targets_fuses_and_equals_its_unfused_form():
    g = torch.Generator().manual_seed(1)
    scores = 3 * torch.randn(5, 30, generator=g, dtype=torch.float64)
    top = sampled(scores, 4, 8, 7.0, seed=0)
    s = torch.randn(5, 30, generator=g, dtype=torch.float64, requires_grad=True)
    a = torch.randint(30, (5,), generator=g)
    spec = {"kd": {"temperature": 7.0}, "ce": {}}
    b = DistillBatch(s, a, teacher_topk=top)
    assert fused_terms(spec, b) is not None
    fused_value = combine(spec, b)[0]
    (g_fused,) = torch.autograd.grad(fused_value, s)
    from distkg.distill.losses import LOSSES

    ref = LOSSES.get("kd")(b, temperature=7.0) + LOSSES.get("ce")(b)
    (g_ref,) = torch.autograd.grad(ref, s)
    torch.testing.assert_close(fused_value, ref)
    torch.testing.assert_close(g_fused, g_ref)
    assert top.to("cpu").tail_ids.shape == (5, 8)


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
