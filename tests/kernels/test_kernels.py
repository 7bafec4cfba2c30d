"""distkg.kernels: the compiled row loops equal the plain formulas (float64 references) and the losses
one at a time; the dispatch rule; the build cache key; a broken compiler falls back with a clear message."""

from __future__ import annotations

import logging
import time

import pytest
import torch

from distkg import kernels
from distkg.distill.losses import DistillBatch, Rows, TemperedTargets, combine, softmax_terms, temper
from distkg.kernels import build
from distkg.models.ttranse import EPS, neg_l2, neg_l2_reference
from distkg.training import softmax as sm
from tests.training.test_softmax import SPECS, make, unfused


KERNEL_SPECS = {**SPECS, "three temperatures, a zero weight": {
    "kd": {"weight": 0.5, "temperature": 7.0}, "ce": {"weight": 0.0},
    "llm_huber": {"weight": 1.5, "delta": 0.01, "temperature": 2.0}, "llm_supervised": {"weight": 0.7, "mix": 0.5}}}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The kernels built once into a temporary cache root (never the user's)."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("distkg-cache")
    mp.setenv("DISTKG_CACHE", str(root))
    mp.delenv("DISTKG_KERNELS", raising=False)
    mp.setattr(kernels, "_lib", None)
    lib = kernels.library()
    assert lib is not None, "the kernels did not build here (is there a C compiler?)"
    yield root
    mp.undo()


@pytest.fixture
def counted(monkeypatch):
    """Counts the compiled fused calls (the real kernel runs; only the count is added)."""
    calls = []
    real = kernels.fused_rows

    def counting(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(kernels, "fused_rows", counting)
    return calls


@pytest.mark.parametrize("method", list(KERNEL_SPECS))
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("lazy", [True, False])
def test_kernel_equals_the_losses_one_at_a_time(cache, counted, method, threads, lazy, monkeypatch):
    spec = KERNEL_SPECS[method]
    s64, t, llm, idx, a = make(B=7, E=37)
    T = spec["kd"]["temperature"]
    p_all, plogp_all = temper(t, T)
    f32 = torch.float32
    s = s64.detach().to(f32).requires_grad_()
    if lazy:  # the cached matrices read by index
        targets = TemperedTargets(T, Rows(p_all.to(f32), idx), plogp_all[idx].to(f32))
        probs = Rows(llm.to(f32), idx)
    else:  # rows already gathered (a pool's, or top-k's sampled rows)
        targets = TemperedTargets(T, p_all[idx].to(f32), plogp_all[idx].to(f32))
        probs = llm[idx].to(f32)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)  # rows split over 3 threads of 7 rows
    ours, parts = combine(spec, DistillBatch(s, a, teacher_targets=targets, llm_probs=probs))
    assert counted, "the compiled kernel did not run"
    s2 = s.detach().double().requires_grad_()
    ref, ref_parts = unfused(spec, DistillBatch(s2, a, teacher_scores=t[idx], llm_probs=llm[idx]))
    assert ours.dtype == f32
    torch.testing.assert_close(ours.double(), ref.detach(), rtol=2e-6, atol=1e-6)
    assert parts == pytest.approx(ref_parts, rel=2e-6, abs=1e-7)
    (2.5 * ours).backward()
    (2.5 * ref).backward()
    torch.testing.assert_close(s.grad.double(), s2.grad, rtol=1e-5, atol=1e-7)


def test_kernel_on_yago_sized_rows_equals_the_plain_formula(cache, counted):
    """A few full rows of a real width (10,623: the vector loops' tails and sums over many lanes)
    against the plain formula in float64."""
    g = torch.Generator().manual_seed(3)
    B, E = 3, 10623
    s = 3 * torch.randn(B, E, generator=g)
    p, plogp = temper(4 * torch.randn(5, E, generator=g), 7.0)
    llm = torch.softmax(2 * torch.randn(5, E, generator=g), 1)
    idx, a = torch.tensor([4, 0, 2]), torch.randint(E, (B,), generator=g)
    spec = SPECS["ours-2"]
    batch = DistillBatch(s, a, teacher_targets=TemperedTargets(7.0, Rows(p, idx), plogp[idx]), llm_probs=Rows(llm, idx))
    grad, values = sm._kernel_pass(kernels.library(), s, a, tuple(softmax_terms(spec, batch)[1]))
    assert counted
    s64 = s.double().requires_grad_()
    batch64 = DistillBatch(s64, a, teacher_targets=TemperedTargets(7.0, Rows(p.double(), idx), plogp[idx].double()),
                           llm_probs=Rows(llm.double(), idx))
    total, ref_values = sm.weighted(s64, a, softmax_terms(spec, batch64)[1], path="plain")
    torch.testing.assert_close(values.double(), ref_values, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(grad.double(), torch.autograd.grad(total, s64)[0], rtol=1e-4, atol=1e-9)


def test_ttranse_distance_and_gradient_equal_autograd(cache):
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-8, 8, (5, 6), generator=g) / 4  # exact in float32: a distance of 0 is 0
    c = torch.randint(-8, 8, (37, 6), generator=g) / 4
    q[2] = c[4]  # a distance of 0: the clamp holds there and passes no gradient
    q32, c32 = q.clone().requires_grad_(), c.clone().requires_grad_()
    q64, c64 = q.double().requires_grad_(), c.double().requires_grad_()
    seen = []
    real = kernels.neg_sqrt_
    try:
        kernels.neg_sqrt_ = lambda *a: seen.append(1) or real(*a)
        s = neg_l2(q32, c32)
    finally:
        kernels.neg_sqrt_ = real
    assert seen, "the compiled pass did not run"
    ref = neg_l2_reference(q64, c64)
    torch.testing.assert_close(s.double(), ref, rtol=1e-5, atol=2e-5)
    assert s[2, 4] == -torch.tensor(EPS).sqrt()
    w = torch.randn(5, 37, generator=g)
    s.backward(w)
    ref.backward(w.double())
    torch.testing.assert_close(q32.grad.double(), q64.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(c32.grad.double(), c64.grad, rtol=1e-4, atol=1e-5)


def test_the_kernels_are_operators_torch_can_trace(cache):
    """Schema, fake and real implementations agree (torch.library.opcheck), and torch.compile runs a
    training loss through them without a graph break."""
    lib = kernels.library()
    g = torch.Generator().manual_seed(0)
    s, p = torch.randn(5, 11, generator=g), torch.softmax(torch.randn(7, 11, generator=g), 1)
    idx, a = torch.tensor([0, 6, 2, 2, 4]), torch.tensor([1, 0, 10, 3, 3])
    torch.library.opcheck(lib.fused_rows, (s, a, [1.0, 0.5], [0.2, 0.1], 1, 0.3, p, idx, 0, 0.2, -1, 0.0, 0.0, None, None,
                                           -1, 0.0, 0.0, None, None))
    torch.library.opcheck(lib.negl2_weights, (torch.randn(4, 6, generator=g), -torch.rand(4, 6, generator=g) - 0.1, EPS))
    torch.library.opcheck(lib.neg_sqrt_, (torch.rand(4, 6, generator=g), EPS))
    from distkg.training.objective import cross_entropy

    compiled = torch.compile(lambda s, a: cross_entropy(s, a), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(s, a), cross_entropy(s, a))


def test_dispatch_rule():
    x = torch.zeros(2, 3)
    assert kernels.why_not(x) is None
    assert kernels.why_not(torch.zeros(2, 3, device="meta")) == "a meta tensor"  # a CUDA tensor says "a cuda tensor"
    assert kernels.why_not(x, x.double()) == "dtype torch.float64, not float32"
    assert kernels.why_not(x.T) == "a non-contiguous tensor"


def test_dispatch_rule_switch_and_fallback_log(monkeypatch, caplog):
    monkeypatch.setattr(kernels, "_said", set())
    monkeypatch.setenv("DISTKG_KERNELS", "0")
    assert kernels.why_not(torch.zeros(2)) == "DISTKG_KERNELS=0"
    with caplog.at_level(logging.INFO, logger="distkg"):
        for _ in range(3):
            assert kernels.usable("fused distillation losses", torch.zeros(2)) is None
    said = [r.getMessage() for r in caplog.records]
    assert said == ["fused distillation losses: torch path (DISTKG_KERNELS=0)"]  # once, not every step


def test_cache_key_names_source_compiler_flags_and_cpu(tmp_path, monkeypatch):
    base = ("src".encode(), "gcc 12.2.0", build.FLAGS, "x86_64|EPYC|avx2 fma")
    key = build.cache_key(*base)
    assert len({key, build.cache_key(b"src2", *base[1:]), build.cache_key(base[0], "gcc 13.1.0", *base[2:]),
                build.cache_key(*base[:2], ("-O2",), base[3]), build.cache_key(*base[:3], "x86_64|EPYC|avx2")}) == 5
    assert build.cache_key(*base) == key
    monkeypatch.setenv("DISTKG_CACHE", str(tmp_path))
    path = build.library_path()
    assert path.parent == tmp_path / "kernels" and path.suffix == ".so"
    assert build.cpu_signature().startswith(__import__("platform").machine())


def test_a_cached_library_is_found_not_rebuilt(cache, record_property):
    path, seconds = build.build()
    assert seconds is None and path.parent == cache / "kernels"  # built by the fixture, found in the cache
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind
    t = time.perf_counter()
    build.library_path()
    build.load(path)
    record_property("cached_load_seconds", time.perf_counter() - t)  # a number to read, not a pass/fail bound


def test_a_broken_compiler_falls_back_to_torch_with_a_clear_message(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DISTKG_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "/bin/false")
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setattr(kernels, "_said", set())
    with pytest.raises(build.BuildError, match="/bin/false --version exited 1"):
        build.build()
    s, t, llm, idx, a = make(B=4, E=9)
    s = s.detach().float().requires_grad_()
    spec = SPECS["bkd"]
    with caplog.at_level(logging.INFO, logger="distkg"):
        ours, _ = combine(spec, DistillBatch(s, a, teacher_scores=t[idx].float()))
    assert any("distkg kernels unavailable, the torch path runs instead: /bin/false --version exited 1" in r.getMessage()
               for r in caplog.records)
    ref, _ = unfused(spec, DistillBatch(s.detach().double(), a, teacher_scores=t[idx]))
    torch.testing.assert_close(ours.double(), ref, rtol=2e-6, atol=1e-6)
    assert not list(tmp_path.rglob("*.so"))


@pytest.mark.parametrize("threads", [1, 2])
def test_plain_cross_entropy_compiled_equals_torchs(cache, counted, threads, monkeypatch):
    from distkg.training.objective import cross_entropy

    g = torch.Generator().manual_seed(0)
    s = (3 * torch.randn(6, 41, generator=g)).requires_grad_()
    a = torch.tensor([0, 3, 40, 3, 1, 17])
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    ours = cross_entropy(s, a)
    assert counted and ours.dtype == torch.float32
    s64 = s.detach().double().requires_grad_()
    ref = torch.nn.functional.cross_entropy(s64, a)
    torch.testing.assert_close(ours.double(), ref.detach(), rtol=2e-6, atol=1e-6)
    (3 * ours).backward()
    (3 * ref).backward()
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=1e-5, atol=1e-8)


@pytest.mark.slow
def test_processes_compiling_at_once_each_load_one_whole_library(tmp_path):
    """A grid's workers may all start on a machine with no library yet: each builds under a temporary
    name and renames it into place, so every process loads a whole library and one file is left."""
    import subprocess
    import sys

    code = ("import torch\nfrom distkg import kernels\nlib = kernels.library()\nassert lib is not None\n"
            "from distkg.training.objective import cross_entropy\n"
            "print(float(cross_entropy(torch.zeros(2, 4), torch.tensor([0, 3]))))\n")
    env = {**__import__("os").environ, "DISTKG_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    env.pop("DISTKG_KERNELS", None)
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    assert [float(out) for out, _ in outs] == pytest.approx([1.3862944] * 2, rel=1e-6)  # log 4
    assert [p.suffix for p in (tmp_path / "kernels").iterdir()] == [".so"]


def test_a_nan_score_gives_a_nan_loss_and_minus_inf_none(cache, counted):
    """-ffast-math must not hide a diverged student: NaN in, NaN out; -inf is a score of probability 0."""
    from distkg.training.objective import cross_entropy

    s = torch.randn(3, 20, generator=torch.Generator().manual_seed(0))
    a = torch.tensor([1, 2, 3])
    bad = s.clone()
    bad[1, 5] = float("nan")
    assert torch.isnan(cross_entropy(bad, a))
    low = s.clone()
    low[1, 5] = -float("inf")
    torch.testing.assert_close(cross_entropy(low, a), torch.nn.functional.cross_entropy(low, a))
    assert len(counted) == 2
