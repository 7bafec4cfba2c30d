"""distkg's compiled CPU kernels (distkg/kernels/fused.c) as torch operators, and the rule for when they run.

The C loops are registered as ``torch.ops.distkg.fused_rows``, ``neg_sqrt_`` and ``negl2_weights``
(ops.cpp) with fake implementations here, so torch.compile and the exporters trace through them
instead of stopping at an opaque call. They run on float32, contiguous CPU tensors, when the library
could be built and loaded; in every other case (a CUDA or meta tensor, another dtype, no compiler, a
failed build, DISTKG_KERNELS=0) the caller runs its torch path, and one log line says which path and
why. The results equal the torch path's within float32 rounding (tests/kernels). Threads: rows are
split over torch.get_num_threads() threads, so a run given N threads keeps them.
"""

from __future__ import annotations

import logging
import os
from typing import NamedTuple

import torch

from distkg.kernels import build

log = logging.getLogger("distkg")

_lib: object | bool | None = None  # torch.ops.distkg once loaded; None: not tried yet; False: could not be had
_said: set[str] = set()
MAXT = 3  # distinct temperatures one fused call takes (fused.h)
NVALS = 4  # per-row values fused_rows returns (fused.h)


def _register_fakes() -> None:
    """Shapes and dtypes of the operators' results, for tracing (torch.compile, export) without running them."""
    if getattr(_register_fakes, "done", False):
        return

    @torch.library.register_fake("distkg::fused_rows")
    def _(s, answers, inv_t, coef, kd, kd_coef, p, p_idx, ce, ce_coef, hub, h_delta, h_scale, hy, hy_idx, sup, s_mix,
          s_scale, sy, sy_idx):
        return torch.empty_like(s), s.new_empty((s.shape[0], NVALS), dtype=torch.float64)

    @torch.library.register_fake("distkg::neg_sqrt_")
    def _(x, eps):
        return None

    @torch.library.register_fake("distkg::negl2_weights")
    def _(g, s, eps):
        return torch.empty_like(s)

    _register_fakes.done = True


def say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.info(message)


def library():
    """The kernels' operators (``torch.ops.distkg``, built on first use on this machine), or None when
    they cannot be had."""
    global _lib
    if _lib is None:
        try:
            path, seconds = build.build()
            build.load(path)
            _register_fakes()
            _lib = torch.ops.distkg
            if seconds is not None:
                log.info("compiled distkg kernels in %.1f s -> %s", seconds, path)
        except build.BuildError as e:
            _lib = False
            say_once(f"distkg kernels unavailable, the torch path runs instead: {e}")
    return _lib or None


def why_not(*tensors: torch.Tensor) -> str | None:
    """None when the kernels may run on these tensors, else why the torch path runs (the dispatch rule)."""
    if os.environ.get("DISTKG_KERNELS", "1") == "0":
        return "DISTKG_KERNELS=0"
    for t in tensors:
        if t.device.type != "cpu":
            return f"a {t.device.type} tensor"
        if t.dtype != torch.float32:
            return f"dtype {t.dtype}, not float32"
        if not t.is_contiguous():
            return "a non-contiguous tensor"
    return None


def usable(what: str, *tensors: torch.Tensor):
    """The library when ``what`` may run compiled on these tensors; else None, said once per reason."""
    reason = why_not(*tensors)
    if reason is not None:
        say_once(f"{what}: torch path ({reason})")
        return None
    return library()


class Target(NamedTuple):
    """Rows ``idx`` of ``matrix`` (idx None: the matrix is the batch's rows) and the term's numbers."""

    temp: int  # index into the temperatures
    matrix: torch.Tensor | None = None
    idx: torch.Tensor | None = None
    a: float = 0.0  # kd: its coefficient of p; ce: of the answer; huber: delta; supervised: mix
    b: float = 0.0  # huber, supervised: the scale of dL/dq


def fused_rows(lib, s: torch.Tensor, answers: torch.Tensor | None, inv_t: list[float], coef: list[float],
               kd: Target | None = None, ce: Target | None = None, huber: Target | None = None,
               sup: Target | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/ds [B, E], per-row values [B, 4] in float64: kd's lse_T - sum p s / T, ce's lse_1 - s_a,
    huber's and supervised's sums) for the terms given (fused.c: distkg_fused_rows; bounds checked in ops.cpp)."""
    if not 1 <= len(inv_t) <= MAXT:
        raise ValueError(f"the fused kernel takes 1 to {MAXT} temperatures, got {len(inv_t)}")
    needs_answers = ce is not None or sup is not None
    index = lambda t: None if t is None or t.idx is None else t.idx.to(torch.int64).contiguous()  # noqa: E731
    try:
        return lib.fused_rows(
            s, answers.to(torch.int64).contiguous() if needs_answers else None, list(inv_t), list(coef),
            kd.temp if kd else -1, kd.a if kd else 0.0, kd.matrix if kd else None, index(kd),
            ce.temp if ce else -1, ce.a if ce else 0.0,
            huber.temp if huber else -1, huber.a if huber else 0.0, huber.b if huber else 0.0,
            huber.matrix if huber else None, index(huber),
            sup.temp if sup else -1, sup.a if sup else 0.0, sup.b if sup else 0.0, sup.matrix if sup else None, index(sup))
    except RuntimeError as e:  # the operator's checks (ops.cpp): shapes and indices, said as the caller's error
        message = str(e).splitlines()[0]
        raise (IndexError if "out of range" in message else ValueError)(message) from None


def neg_sqrt_(lib, x: torch.Tensor, eps: float) -> torch.Tensor:
    """x = -sqrt(max(x, eps)) in place, one pass (fused.c: distkg_neg_sqrt)."""
    lib.neg_sqrt_(x, eps)
    return x


def negl2_weights(lib, g: torch.Tensor, s: torch.Tensor, eps: float) -> torch.Tensor:
    """g / s, 0 where s >= -sqrt(eps) (the forward's clamp held), one pass (fused.c: distkg_negl2_weights)."""
    if g.shape != s.shape:
        raise ValueError(f"gradient {tuple(g.shape)} and distances {tuple(s.shape)} differ in shape")
    return lib.negl2_weights(g, s, eps)
