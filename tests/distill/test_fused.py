"""The fused pass over a stage's softmax terms (distill.fused) against the same losses one at a time
through autograd, in float64: equal values, parts and gradients for every method that fuses."""

from __future__ import annotations

import pytest
import torch

from distkg.distill import fused as fz
from distkg.distill.losses import LOSSES, DistillBatch, Rows, TemperedTargets, combine, fused_terms, temper

SPECS = {
    "bkd": {"kd": {"weight": 1.0, "temperature": 7.0}, "ce": {"weight": 1.0}},
    "ours-2": {"kd": {"weight": 1.0, "temperature": 7.0}, "llm_huber": {"weight": 1.0, "delta": 0.05},
               "llm_supervised": {"weight": 1.0, "mix": 0.7}},
    "ours-1": {"kd": {"temperature": 7.0}},
    "odd weights, shared temperature": {"kd": {"weight": 0.3, "temperature": 2.0}, "ce": {"weight": 1.7},
                                        "llm_huber": {"weight": 2.5, "delta": 0.2, "temperature": 2.0},
                                        "llm_supervised": {"weight": 0.4, "mix": 0.3}},
}


def unfused(spec: dict, batch: DistillBatch) -> tuple[torch.Tensor, dict]:
    """The weighted sum of the registered losses, each through its own autograd form."""
    total, parts = 0.0, {}
    for name, args in spec.items():
        args = dict(args)
        w = args.pop("weight", 1.0)
        value = LOSSES.get(name)(batch, **args)
        parts[name] = value.item()
        total = total + w * value
    return total, parts


def make(B: int = 7, E: int = 13, seed: int = 0, rows_form: bool = False):
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    s = (3 * torch.randn(B, E, dtype=f64, generator=g)).requires_grad_()
    t = 4 * torch.randn(B + 5, E, dtype=f64, generator=g)  # every training query's teacher scores
    llm = torch.softmax(2 * torch.randn(B + 5, E, dtype=f64, generator=g), 1)
    idx = torch.randperm(B + 5, generator=g)[:B]
    a = torch.randint(E, (B,), generator=g)
    return s, t, llm, idx, a


@pytest.mark.parametrize("method", list(SPECS))
@pytest.mark.parametrize("rows", [1, 3, 1000])
def test_fused_equals_the_losses_one_at_a_time(method, rows, monkeypatch):
    spec = SPECS[method]
    s, t, llm, idx, a = make()
    T = spec["kd"]["temperature"]
    p_all, plogp_all = temper(t, T)
    lazy = DistillBatch(s, a, teacher_targets=TemperedTargets(T, Rows(p_all, idx), plogp_all[idx]),
                        llm_probs=Rows(llm, idx))
    monkeypatch.setattr(fz, "block_rows", lambda *_: rows)  # blocks of 1, 3 and all 7 rows
    assert fused_terms(spec, lazy) is not None
    ours, parts = combine(spec, lazy)
    s2 = s.detach().clone().requires_grad_()
    ref, ref_parts = unfused(spec, DistillBatch(s2, a, teacher_scores=t[idx], llm_probs=llm[idx]))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    assert parts == pytest.approx(ref_parts, rel=1e-10)
    (2.5 * ours).backward()  # a scaled gradient, not only the usual 1
    (2.5 * ref).backward()
    torch.testing.assert_close(s.grad, s2.grad, rtol=1e-10, atol=1e-13)
    g1 = s.grad.clone()
    s.grad = None
    combine(spec, lazy)[0].backward()
    torch.testing.assert_close(s.grad, g1 / 2.5, rtol=1e-12, atol=1e-15)


def test_fused_gradcheck_and_teacher_scores_at_another_temperature():
    s, t, llm, idx, a = make(B=3, E=5)
    spec = {"kd": {"temperature": 3.0}, "ce": {}, "llm_huber": {"delta": 0.5}}
    # teacher scores given (a pool's, or tempered targets made at another T): tempered here
    b = DistillBatch(s, a, teacher_scores=t[idx], teacher_targets=TemperedTargets(7.0, *temper(t[idx], 7.0)),
                     llm_probs=llm[idx])
    assert torch.autograd.gradcheck(lambda x: fz.fused(x, a, fused_terms(spec, b), rows=2)[0], (s,))
    ref, _ = unfused(spec, DistillBatch(s, a, teacher_scores=t[idx], llm_probs=llm[idx]))
    torch.testing.assert_close(combine(spec, b)[0], ref)


def test_only_whole_stages_of_softmax_terms_fuse():
    s, t, llm, idx, a = make()
    b = DistillBatch(s, a, teacher_scores=t[idx], llm_probs=llm[idx])
    assert fused_terms({"ce": {}}, b) is None  # plain training's own cross-entropy
    assert fused_terms({"kd": {}, "fitnet": {}}, b) is None
    assert [type(x) for x in fused_terms(SPECS["bkd"], b)] == [fz.KD, fz.CE]
    with pytest.raises(ValueError, match="needs llm_probs"):
        combine({"kd": {}, "llm_huber": {}}, DistillBatch(s, a, teacher_scores=t[idx]))


def test_rows_are_read_in_blocks_without_a_batch_copy():
    m = torch.arange(20.0).reshape(5, 4)
    r = Rows(m, torch.tensor([3, 0, 4]))
    torch.testing.assert_close(r.dense(), m[[3, 0, 4]])
    out = torch.empty(2, 4)
    assert r.block(1, 3, out).data_ptr() == out.data_ptr()
    torch.testing.assert_close(out, m[[0, 4]])
