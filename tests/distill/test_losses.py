"""Each distillation loss against a value computed by hand on a tiny example, or against its textbook form."""

from __future__ import annotations

import math

import pytest
import torch

from distkg.distill.losses import DistillBatch, combine
from distkg.errors import ConfigError

LN3 = math.log(3)


def batch(**kw) -> DistillBatch:
    kw.setdefault("student_scores", torch.tensor([[0.0, 0.0]]))
    kw.setdefault("answers", torch.tensor([0]))
    return DistillBatch(**kw)


def one(name: str, b: DistillBatch, **params) -> float:
    return combine({name: {"weight": 1.0, **params}}, b)[0].item()


def test_kd_is_t_squared_kl():
    # p_t = softmax([ln3, 0]) = [.75, .25], p_s = [.5, .5]: KL = .75 ln 1.5 + .25 ln .5 = 0.130812
    assert one("kd", batch(teacher_scores=torch.tensor([[LN3, 0.0]])), temperature=1.0) == pytest.approx(0.130812, abs=1e-5)
    assert one("kd", batch(teacher_scores=torch.tensor([[2 * LN3, 0.0]])), temperature=2.0) == pytest.approx(4 * 0.130812, abs=1e-4)


def test_kd_gradient_and_masked_teacher_match_torch_kl_div():
    # the written-out gradient against autograd through F.kl_div (the textbook form), on random
    # scores and on a teacher that is -inf outside its top 3 (0 log 0 = 0, as kl_div has it)
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    t = torch.randn(4, 9, generator=g, dtype=torch.float64)
    topk = torch.full_like(t, float("-inf")).scatter(1, t.topk(3, dim=1).indices, t.topk(3, dim=1).values)
    for teacher in (t, topk):
        s1 = torch.randn(4, 9, generator=g, dtype=torch.float64, requires_grad=True)
        s2 = s1.detach().clone().requires_grad_(True)
        ours = combine({"kd": {"temperature": 3.0}}, batch(student_scores=s1, teacher_scores=teacher))[0]
        ref = 9.0 * F.kl_div(F.log_softmax(s2 / 3, 1), F.softmax(teacher / 3, 1), reduction="batchmean")
        (2 * ours).backward()
        (2 * ref).backward()
        assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
        assert torch.allclose(s1.grad, s2.grad, rtol=1e-10, atol=1e-12)
    nan = combine({"kd": {}}, batch(student_scores=torch.tensor([[float("nan"), 0.0]]), teacher_scores=t[:1, :2]))[0]
    assert nan.isnan()  # a NaN student is not hidden by the 0 log 0 rule: the NaN guard must see it


def test_ce():
    assert one("ce", batch(student_scores=torch.tensor([[LN3, 0.0]]))) == pytest.approx(-math.log(0.75), abs=1e-6)


def test_llm_huber():
    b = batch(llm_probs=torch.tensor([[0.9, 0.1]]))  # p_s = [.5, .5]: |diff| = .4 on both entities
    assert one("llm_huber", b, delta=0.1) == pytest.approx(2 * 0.1 * (0.4 - 0.05), abs=1e-6)  # linear part
    assert one("llm_huber", b, delta=1.0) == pytest.approx(2 * 0.5 * 0.16, abs=1e-6)  # quadratic part


def test_llm_supervised():
    # target = .5 * [.9, .1] + .5 * onehot(1) = [.45, .55]; p_s - target = [.05, -.05]
    b = batch(llm_probs=torch.tensor([[0.9, 0.1]]), answers=torch.tensor([1]))
    assert one("llm_supervised", b, mix=0.5) == pytest.approx(0.005, abs=1e-7)


def test_fitnet_through_the_regressor():
    reg = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        reg.weight.fill_(2.0)
    b = batch(student_repr=torch.tensor([[1.0]]), teacher_repr=torch.tensor([[3.0]]), regressor=reg)
    assert one("fitnet", b) == pytest.approx(1.0)


def test_rkd_distance_by_hand_and_scale_invariant():
    s = torch.tensor([[0.0], [1.0], [2.0]])  # normalised distances 0.75, 1.5, 0.75
    t = torch.tensor([[0.0], [1.0], [3.0]])  # normalised distances 0.5, 1.5, 1.0
    # differences +-.25 on 4 off-diagonal entries: smooth-L1 .5 * .0625 each, mean over 9 entries
    assert one("rkd_distance", batch(student_emb=s, teacher_emb=t)) == pytest.approx(4 * 0.03125 / 9, abs=1e-6)
    assert one("rkd_distance", batch(student_emb=s, teacher_emb=5 * s)) == pytest.approx(0.0, abs=1e-7)


def test_rkd_angle_invariances_and_gradient_to_student_only():
    s = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    rot, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1)))
    assert one("rkd_angle", batch(student_emb=s, teacher_emb=3 * s @ rot)) == pytest.approx(0.0, abs=1e-6)
    # a right angle vs. a 45-degree one at the anchor 0: cos differ by 1/sqrt(2)
    s3 = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    t3 = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]], requires_grad=True)
    value = combine({"rkd_angle": {}}, batch(student_emb=s3, teacher_emb=t3))[0]
    assert value.item() > 0.01
    value.backward()
    assert s3.grad is not None and t3.grad is None


def test_weighted_sum_and_bad_specs():
    b = batch(student_scores=torch.tensor([[LN3, 0.0]]), teacher_scores=torch.tensor([[0.0, 0.0]]))
    total, parts = combine({"ce": {"weight": 2.0}, "kd": {"weight": 0.5, "temperature": 1.0}}, b)
    assert total.item() == pytest.approx(2 * parts["ce"] + 0.5 * parts["kd"], abs=1e-6)
    assert parts["ce"] == pytest.approx(-math.log(0.75), abs=1e-6)
    with pytest.raises(ConfigError, match="unknown loss 'kd2'"):
        combine({"kd2": {}}, b)
    with pytest.raises(ConfigError, match="losses.kd: loss 'kd' has no argument 'temp'; it takes: temperature"):
        combine({"kd": {"temp": 2}}, b)
    with pytest.raises(ValueError, match="needs llm_probs"):
        combine({"llm_huber": {}}, b)


def _bucketed_kl_reference(s, t, ids, temperature):
    """KL over the top-k buckets plus one rest bucket, written plainly with masks and autograd."""
    p, q = torch.softmax(t / temperature, 1), torch.softmax(s / temperature, 1)
    mask = torch.zeros_like(p, dtype=torch.bool).scatter_(1, ids, True)
    pb = torch.cat([p.gather(1, ids), (p * ~mask).sum(1, keepdim=True)], 1)
    qb = torch.cat([q.gather(1, ids), (q * ~mask).sum(1, keepdim=True)], 1)
    return temperature**2 * (pb * (pb.log() - qb.log())).sum() / len(s)


@pytest.mark.parametrize("k", [3, 11])
def test_topk_kd_keeps_the_rest_mass(k):
    from distkg.distill.losses import TopKTargets

    g = torch.Generator().manual_seed(0)
    s = torch.randn(4, 11, dtype=torch.float64, generator=g, requires_grad=True)
    t = 3 * torch.randn(4, 11, dtype=torch.float64, generator=g)
    ids = t.topk(k, 1).indices
    log_p = torch.log_softmax(t / 2.0, 1).gather(1, ids)
    ours = combine({"kd": {"temperature": 2.0}}, DistillBatch(s, None, teacher_topk=TopKTargets(2.0, ids, log_p)))[0]
    ref = _bucketed_kl_reference(s, t, ids, 2.0) if k < 11 else combine(
        {"kd": {"temperature": 2.0}}, DistillBatch(s, None, teacher_scores=t))[0]  # every entity kept: full kd
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours, s)[0], torch.autograd.grad(ref, s)[0])
    with pytest.raises(ValueError, match="T=2.0"):
        combine({"kd": {"temperature": 7.0}}, DistillBatch(s, None, teacher_topk=TopKTargets(2.0, ids, log_p)))
