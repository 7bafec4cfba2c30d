"""distkg's compiled CPU kernels (distkg/kernels/fused.c) and the rule for when they run.

They run on float32, contiguous CPU tensors, when the library could be built and loaded; in every
other case (a CUDA or meta tensor, another dtype, no compiler, a failed build, DISTKG_KERNELS=0)
the caller runs its torch path, and one log line says which path and why. The results equal the
torch path's within float32 rounding (tests/kernels). Threads: rows are split over
torch.get_num_threads() threads, so a run given N threads keeps them.
"""

from __future__ import annotations

import ctypes
import logging
import os
from typing import NamedTuple

import torch

from distkg.kernels import build

log = logging.getLogger("distkg")

_lib: ctypes.CDLL | bool | None = None  # None: not tried yet; False: could not be built or loaded
_said: set[str] = set()
MAXT = 3  # distinct temperatures one fused call takes (fused.c)
_P, _I64, _F64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double


class _FusedArgs(ctypes.Structure):
    """fused.c's fused_args, field for field (all 8 bytes wide)."""

    _fields_ = [("B", _I64), ("E", _I64), ("threads", _I64), ("ntemps", _I64), ("s", _P), ("grad", _P),
                ("answers", _P), ("inv_t", _F64 * MAXT), ("coef", _F64 * MAXT), ("kd", _I64), ("kd_coef", _F64),
                ("p", _P), ("p_idx", _P), ("ce", _I64), ("ce_coef", _F64), ("hub", _I64), ("h_delta", _F64),
                ("h_scale", _F64), ("hy", _P), ("hy_idx", _P), ("sup", _I64), ("s_mix", _F64), ("s_scale", _F64),
                ("sy", _P), ("sy_idx", _P), ("vals", _P)]


def say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.info(message)


def library() -> ctypes.CDLL | None:
    """The loaded library (compiled on first use on this machine), or None when it cannot be had."""
    global _lib
    if _lib is None:
        try:
            path, seconds = build.build()
            lib = build.load(path)
            lib.distkg_fused_rows.argtypes, lib.distkg_fused_rows.restype = [ctypes.POINTER(_FusedArgs)], ctypes.c_int
            lib.distkg_neg_sqrt.argtypes = [_P, _I64, ctypes.c_float, _I64]
            lib.distkg_negl2_weights.argtypes = [_P, _P, _P, _I64, ctypes.c_float, _I64]
            lib.distkg_neg_sqrt.restype = lib.distkg_negl2_weights.restype = None
            _lib = lib
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


def usable(what: str, *tensors: torch.Tensor) -> ctypes.CDLL | None:
    """The library when ``what`` may run compiled on these tensors; else None, said once per reason."""
    reason = why_not(*tensors)
    if reason is not None:
        say_once(f"{what}: torch path ({reason})")
        return None
    return library()


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _rows_checked(matrix: torch.Tensor, idx: torch.Tensor | None, B: int, E: int, what: str) -> torch.Tensor | None:
    """The index as contiguous int64 after a bounds check (the C loop reads unchecked)."""
    if matrix.dim() != 2 or matrix.shape[1] != E:
        raise ValueError(f"{what}: a [N, {E}] matrix was expected, got {tuple(matrix.shape)}")
    if idx is None:
        if matrix.shape[0] != B:
            raise ValueError(f"{what}: {matrix.shape[0]} rows for a batch of {B}")
        return None
    idx = idx.to(torch.int64).contiguous()
    if len(idx) != B or (B and (int(idx.min()) < 0 or int(idx.max()) >= matrix.shape[0])):
        raise IndexError(f"{what}: row index out of range for a [{matrix.shape[0]}, {E}] matrix (or not {B} rows)")
    return idx


class Target(NamedTuple):
    """Rows ``idx`` of ``matrix`` (idx None: the matrix is the batch's rows) and the term's numbers."""

    temp: int  # index into the temperatures
    matrix: torch.Tensor | None = None
    idx: torch.Tensor | None = None
    a: float = 0.0  # kd: its coefficient of p; ce: of the answer; huber: delta; supervised: mix
    b: float = 0.0  # huber, supervised: the scale of dL/dq


def fused_rows(lib: ctypes.CDLL, s: torch.Tensor, answers: torch.Tensor | None, inv_t: list[float], coef: list[float],
               kd: Target | None = None, ce: Target | None = None, huber: Target | None = None,
               sup: Target | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/ds [B, E], per-row values [B, 4] in float64: kd's lse_T - sum p s / T, ce's lse_1 - s_a,
    huber's and supervised's sums) for the terms given (fused.c: distkg_fused_rows)."""
    B, E = s.shape
    if not 1 <= len(inv_t) <= MAXT:
        raise ValueError(f"the fused kernel takes 1 to {MAXT} temperatures, got {len(inv_t)}")
    needs_answers = ce is not None or sup is not None
    if needs_answers:
        answers = answers.to(torch.int64).contiguous()
        if B and (int(answers.min()) < 0 or int(answers.max()) >= E):
            raise IndexError(f"an answer is out of range for {E} entities")
    grad = torch.empty_like(s)
    vals = torch.zeros(B, 4, dtype=torch.float64)
    args = _FusedArgs(B=B, E=E, threads=torch.get_num_threads(), ntemps=len(inv_t), s=_ptr(s), grad=_ptr(grad),
                      answers=_ptr(answers) if needs_answers else None, vals=_ptr(vals), kd=-1, ce=-1, hub=-1, sup=-1)
    args.inv_t[:len(inv_t)] = inv_t
    args.coef[:len(coef)] = coef
    keep = [answers]
    if kd is not None:
        idx = _rows_checked(kd.matrix, kd.idx, B, E, "kd's soft targets")
        keep.append(idx)
        args.kd, args.kd_coef, args.p, args.p_idx = kd.temp, kd.a, _ptr(kd.matrix), _ptr(idx)
    if ce is not None:
        args.ce, args.ce_coef = ce.temp, ce.a
    if huber is not None:
        idx = _rows_checked(huber.matrix, huber.idx, B, E, "llm_huber's P_LLM")
        keep.append(idx)
        args.hub, args.h_delta, args.h_scale, args.hy, args.hy_idx = huber.temp, huber.a, huber.b, _ptr(huber.matrix), _ptr(idx)
    if sup is not None:
        idx = _rows_checked(sup.matrix, sup.idx, B, E, "llm_supervised's P_LLM")
        keep.append(idx)
        args.sup, args.s_mix, args.s_scale, args.sy, args.sy_idx = sup.temp, sup.a, sup.b, _ptr(sup.matrix), _ptr(idx)
    rc = lib.distkg_fused_rows(ctypes.byref(args))
    if rc != 0:
        raise MemoryError(f"distkg_fused_rows failed (code {rc}: 1 is a failed row-buffer allocation)")
    return grad, vals


def neg_sqrt_(lib: ctypes.CDLL, x: torch.Tensor, eps: float) -> torch.Tensor:
    """x = -sqrt(max(x, eps)) in place, one pass (fused.c: distkg_neg_sqrt)."""
    lib.distkg_neg_sqrt(x.data_ptr(), x.numel(), eps, torch.get_num_threads())
    return x


def negl2_weights(lib: ctypes.CDLL, g: torch.Tensor, s: torch.Tensor, eps: float) -> torch.Tensor:
    """g / s, 0 where s >= -sqrt(eps) (the forward's clamp held), one pass (fused.c: distkg_negl2_weights)."""
    if g.shape != s.shape:
        raise ValueError(f"gradient {tuple(g.shape)} and distances {tuple(s.shape)} differ in shape")
    w = torch.empty_like(s)
    lib.distkg_negl2_weights(g.data_ptr(), s.data_ptr(), w.data_ptr(), s.numel(), eps, torch.get_num_threads())
    return w
