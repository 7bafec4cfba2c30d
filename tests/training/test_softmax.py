"""The softmax losses' one formula and its fast paths (distkg.training.softmax): a stage's losses summed
in one pass equal the registered losses one at a time; the compiled formula equals the plain one in
float64, values and gradients, and passes gradcheck; the path rule. The C kernel's path is checked
against the plain formula in tests/kernels (it needs the built library)."""

from __future__ import annotations

import pytest
import torch

from distkg.distill.losses import LOSSES, DistillBatch, Rows, TemperedTargets, combine, softmax_terms, temper
from distkg.training import softmax as sm
from distkg.training.objective import cross_entropy

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
    """The weighted sum of the registered losses, each on its own."""
    total, parts = 0.0, {}
    for name, args in spec.items():
        args = dict(args)
        w = args.pop("weight", 1.0)
        value = LOSSES.get(name)(batch, **args)
        parts[name] = value.item()
        total = total + w * value
    return total, parts


def make(B: int = 7, E: int = 13, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    s = (3 * torch.randn(B, E, dtype=f64, generator=g)).requires_grad_()
    t = 4 * torch.randn(B + 5, E, dtype=f64, generator=g)  # every training query's teacher scores
    llm = torch.softmax(2 * torch.randn(B + 5, E, dtype=f64, generator=g), 1)
    idx = torch.randperm(B + 5, generator=g)[:B]
    a = torch.randint(E, (B,), generator=g)
    return s, t, llm, idx, a


def lazy_batch(spec: dict, s, t, llm, idx, a) -> DistillBatch:
    """The batch a run reads: the teacher's tempered rows and P_LLM left in their [N, E] matrices."""
    p_all, plogp_all = temper(t, spec.get("kd", {}).get("temperature", 7.0))
    T = spec.get("kd", {}).get("temperature", 7.0)
    return DistillBatch(s, a, teacher_targets=TemperedTargets(T, Rows(p_all, idx), plogp_all[idx]), llm_probs=Rows(llm, idx))


@pytest.mark.parametrize("method", list(SPECS))
def test_one_pass_equals_the_losses_one_at_a_time(method):
    spec = SPECS[method]
    s, t, llm, idx, a = make()
    ours, parts = combine(spec, lazy_batch(spec, s, t, llm, idx, a))
    s2 = s.detach().clone().requires_grad_()
    ref, ref_parts = unfused(spec, DistillBatch(s2, a, teacher_scores=t[idx], llm_probs=llm[idx]))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    assert parts == pytest.approx(ref_parts, rel=1e-10)
    (2.5 * ours).backward()
    (2.5 * ref).backward()
    torch.testing.assert_close(s.grad, s2.grad, rtol=1e-10, atol=1e-13)


def numerical_gradient(f, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Central differences of a scalar f at x, in float64."""
    g, flat = torch.zeros_like(x), x.detach().clone().reshape(-1)
    for i in range(len(flat)):
        up, down = flat.clone(), flat.clone()
        up[i] += eps
        down[i] -= eps
        g.view(-1)[i] = (f(up.view_as(x)) - f(down.view_as(x))) / (2 * eps)
    return g


def test_the_compiled_formula_equals_the_plain_one_and_the_numerical_gradient():
    """What runs on an accelerator, compiled here for the CPU in float64 (the same graph, inductor's
    C++ instead of Triton): values and gradients of every kind of term at once, and the gradient
    against central differences. (Not torch.autograd.gradcheck: it runs backward twice on one graph,
    and the compiled backward reuses its saved buffers, so a second backward reads overwritten ones;
    training runs backward once per forward, as this check does.)"""
    spec = SPECS["odd weights, shared temperature"]
    s, t, llm, idx, a = make(B=3, E=5)
    terms = softmax_terms(spec, lazy_batch(spec, s, t, llm, idx, a))[1]
    plain, plain_values = sm.weighted(s, a, terms, path="plain")
    compiled, values = sm.weighted(s, a, terms, path="compiled")
    assert sm._compiled_formula not in (None, False), "torch.compile did not run"
    torch.testing.assert_close(values, plain_values, rtol=1e-12, atol=1e-12)
    grad = torch.autograd.grad(compiled, s)[0]
    torch.testing.assert_close(grad, torch.autograd.grad(plain, s)[0], rtol=1e-10, atol=1e-13)
    with torch.no_grad():
        numerical = numerical_gradient(lambda x: sm.weighted(x, a, terms, path="compiled")[0], s)
    torch.testing.assert_close(grad, numerical, rtol=1e-6, atol=1e-8)


def test_the_path_rule(monkeypatch):
    s, t, llm, idx, a = make()
    terms = softmax_terms(SPECS["bkd"], lazy_batch(SPECS["bkd"], s, t, llm, idx, a))[1]
    assert sm.path_for(s, terms)[0] == "plain"  # float64: the formula as written
    if sm.kernels.library() is not None:
        f32 = [sm.KD(1.0, 7.0, Rows(terms[0].probs.matrix.float(), idx), terms[0].plogp.float()), sm.CE(1.0)]
        assert sm.path_for(s.detach().float(), f32)[0] == "kernel"
        assert sm.path_for(s.detach().float(), [*f32, sm.CE(0.5)])[0] == "plain"  # two terms of a kind
        monkeypatch.setenv("DISTKG_KERNELS", "0")
        assert sm.path_for(s.detach().float(), f32)[0] == "plain"


def test_softmax_terms_leave_out_what_is_not_a_softmax_term():
    from distkg.distill.losses import TopKTargets

    s, t, llm, idx, a = make()
    b = DistillBatch(s, a, teacher_scores=t[idx], llm_probs=llm[idx])
    assert softmax_terms({"kd": {}, "fitnet": {}}, b)[0] == ["kd"]
    assert [type(x) for x in softmax_terms(SPECS["bkd"], b)[1]] == [sm.KD, sm.CE]
    ids = t[idx].topk(3, 1).indices
    top = DistillBatch(s, a, teacher_topk=TopKTargets(7.0, ids, torch.log_softmax(t[idx] / 7, 1).gather(1, ids)))
    assert softmax_terms(SPECS["bkd"], top)[0] == ["ce"]  # kd on a rest bucket is its own formula
    with pytest.raises(ValueError, match="needs llm_probs"):
        combine({"kd": {}, "llm_huber": {}}, DistillBatch(s, a, teacher_scores=t[idx]))


def test_cross_entropy_equals_torchs():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 7, dtype=torch.float64, generator=g, requires_grad=True)
    a = torch.tensor([0, 3, 6, 3, 1])
    ours = cross_entropy(s, a)
    ref = torch.nn.functional.cross_entropy(s, a)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(3 * ours, s)[0], torch.autograd.grad(3 * ref, s)[0])


def test_rows_are_read_in_place():
    m = torch.arange(20.0).reshape(5, 4)
    r = Rows(m, torch.tensor([3, 0, 4]))
    torch.testing.assert_close(r.dense(), m[[3, 0, 4]])
    assert len(r) == 3
