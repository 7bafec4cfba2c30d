"""The softmax losses over a [B, E] matrix of scores, each written once as a plain torch formula, and
the one fast path that computes a weighted sum of them.

Plain training's cross-entropy and distillation's kd, ce, llm_kd, llm_huber and llm_supervised (which
distkg.distill.losses registers by name) all read the student's scores through softmaxes:
  kd          T^2 / B * sum p (log p - log softmax(s / T))      p: a teacher's row at T (or P_LLM)
  kd_topk     the same over k + 1 buckets: the teacher's top k and the mass outside them
  ce          cross-entropy of the answers, batch mean
  huber       sum Huber_delta(softmax(s / T) - y) / B            y: P_LLM
  supervised  sum (softmax(s) - (1 - mix) y - mix onehot(a))^2 / B

``weighted(s, a, terms)`` is a weighted sum of kd, ce, huber and supervised terms, by one of three
paths (``path_for`` is the rule, and says once which runs and why):
  kernel    float32 contiguous CPU tensors with distkg.kernels built: one compiled C loop over rows
            (distkg/kernels/fused.c) writes every value and the gradient in one pass, kept for
            backward (the targets are fixed and the loss is a scalar); faster per step than
            torch.compile of the same formula on our CPUs (docs/RESULTS.md, "The fast path").
  compiled  on an accelerator: ``torch.compile`` of the formula (fused kernels forward and backward);
            a compile that fails falls back to the plain formula, said once.
  plain     otherwise (float64: the gradient tests; no kernels built): the formula as written.
The paths are tested equal (tests/training/test_softmax.py): kernel and compiled against plain in
float64, with float64 gradient checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distkg import kernels


@dataclass
class Rows:
    """Rows ``idx`` of a fixed [N, E] matrix (a teacher's soft targets, P_LLM of every training
    query), read in place by the kernel instead of gathered into a [B, E] copy each step."""

    matrix: torch.Tensor
    idx: torch.Tensor

    def __len__(self) -> int:
        return len(self.idx)

    def dense(self) -> torch.Tensor:
        """The [B, E] rows themselves (what the formulas read)."""
        return self.matrix.index_select(0, self.idx)


def dense(x: torch.Tensor | Rows) -> torch.Tensor:
    return x.dense() if isinstance(x, Rows) else x


# ---- the formulas -------------------------------------------------------------------------------

def _kl(p: torch.Tensor, log_q: torch.Tensor, temperature: float, plogp: torch.Tensor | None) -> torch.Tensor:
    """T^2 / B * sum p (log p - log q), 0 log 0 = 0 (a teacher may be -inf outside its top k)."""
    entropy = torch.xlogy(p, p).sum() if plogp is None else plogp.sum()
    return temperature * temperature * (entropy - (p * log_q).sum()) / len(p)


def kd(s: torch.Tensor, p: torch.Tensor, temperature: float, plogp: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 KL(p || softmax(s / T)), batch mean (Hinton); ``plogp``: p's rows' sum p log p when known."""
    return _kl(p, torch.log_softmax(s / temperature, dim=1), temperature, plogp)


def kd_topk(s: torch.Tensor, ids: torch.Tensor, log_p: torch.Tensor, temperature: float) -> torch.Tensor:
    """kd over k + 1 buckets: the teacher's top-k probabilities (log_p, over its whole row) and its
    rest mass, against the student's probabilities of the same k entities and its mass outside them
    (DistillKit's missing-mass KL)."""
    q = torch.softmax(s / temperature, dim=1)
    p_k = log_p.exp()
    rest_p = (1 - p_k.sum(1, keepdim=True)).clamp_min(0)
    # summed outside the k, not 1 - sum(q_k): that cancels to 0 when the student is sure, and r / 0 explodes
    rest_q = q.scatter(1, ids, 0).sum(1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny)
    return _kl(torch.cat([p_k, rest_p], 1), torch.cat([q.gather(1, ids), rest_q], 1).log(), temperature, None)


def ce(s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the answers ``a``, batch mean."""
    return F.cross_entropy(s, a)


def huber(s: torch.Tensor, y: torch.Tensor, delta: float, temperature: float = 1.0) -> torch.Tensor:
    """sum Huber_delta(softmax(s / T) - y) / B: Huber bounds the pull of entities where the two disagree a lot."""
    return F.huber_loss(torch.softmax(s / temperature, dim=1), y, delta=delta, reduction="sum") / len(s)


def supervised(s: torch.Tensor, y: torch.Tensor, a: torch.Tensor, mix: float) -> torch.Tensor:
    """sum (softmax(s) - target)^2 / B, target = (1 - mix) y + mix onehot(a)."""
    target = (1 - mix) * y
    target[torch.arange(len(a), device=a.device), a] += mix
    return (torch.softmax(s, dim=1) - target).pow(2).sum() / len(s)


# ---- terms of a weighted sum --------------------------------------------------------------------

@dataclass
class KD:
    """kd: ``probs`` a teacher's softmax(t / T) (or P_LLM), ``plogp`` its rows' sum p log p."""

    weight: float
    temperature: float
    probs: torch.Tensor | Rows
    plogp: torch.Tensor


@dataclass
class CE:
    weight: float


@dataclass
class Huber:
    weight: float
    delta: float
    temperature: float
    target: torch.Tensor | Rows


@dataclass
class Supervised:
    weight: float
    mix: float
    target: torch.Tensor | Rows


Term = KD | CE | Huber | Supervised


def _flat(terms: list[Term]) -> tuple[tuple, list[torch.Tensor]]:
    """(each term's kind and numbers, the target tensors in order): what the formula reads, flat, so
    torch.compile guards on the numbers once and takes the tensors as inputs."""
    spec, tensors = [], []
    for t in terms:
        if isinstance(t, KD):
            spec.append(("kd", t.temperature, 0.0))
            tensors += [dense(t.probs), t.plogp]
        elif isinstance(t, CE):
            spec.append(("ce", 1.0, 0.0))
        elif isinstance(t, Huber):
            spec.append(("huber", t.temperature, t.delta))
            tensors.append(dense(t.target))
        else:
            spec.append(("supervised", 1.0, t.mix))
            tensors.append(dense(t.target))
    return tuple(spec), tensors


def formula(spec: tuple, s: torch.Tensor, a: torch.Tensor | None, *tensors: torch.Tensor) -> torch.Tensor:
    """[each term's value] by the formulas above, for ``_flat``'s spec and tensors."""
    it, values = iter(tensors), []
    for kind, temperature, x in spec:
        if kind == "kd":
            values.append(kd(s, next(it), temperature, next(it)))
        elif kind == "ce":
            values.append(ce(s, a))
        elif kind == "huber":
            values.append(huber(s, next(it), x, temperature))
        else:
            values.append(supervised(s, next(it), a, x))
    return torch.stack(values)


class _Kernel(torch.autograd.Function):
    """sum_k w_k term_k(s) by the C loop, with the terms' unweighted values as a second,
    non-differentiable output; the gradient is computed forward and kept for backward."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, answers: torch.Tensor | None, terms: tuple, lib):
        grad, values = _kernel_pass(lib, s, answers, terms)
        weights = torch.tensor([t.weight for t in terms], dtype=s.dtype)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(values)
        return torch.dot(weights, values), values

    @staticmethod
    def backward(ctx, g_total: torch.Tensor, _g_values):
        (grad,) = ctx.saved_tensors
        if float(g_total) == 1.0:
            return grad, None, None, None  # the usual case: no pass to scale it (autograd never writes into it)
        return grad * g_total, None, None, None


def _temperature(t: Term) -> float:
    return float(t.temperature) if isinstance(t, KD | Huber) else 1.0


def _kernel_pass(lib, s: torch.Tensor, answers: torch.Tensor | None, terms: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/ds, [each term's value]) from distkg.kernels.fused_rows (at most one term of each kind)."""
    B = len(s)
    temps = sorted({_temperature(t) for t in terms})
    k = {T: i for i, T in enumerate(temps)}
    coef = dict.fromkeys(temps, 0.0)  # dL/ds += coef[T] * softmax(s / T): kd's and ce's share
    given: dict[str, kernels.Target] = {}
    for t in terms:
        T = _temperature(t)
        src = t.probs if isinstance(t, KD) else None if isinstance(t, CE) else t.target
        m, idx = (src.matrix, src.idx) if isinstance(src, Rows) else (src, None)
        if isinstance(t, KD):
            coef[T] += t.weight * T / B
            given["kd"] = kernels.Target(k[T], m, idx, t.weight * T / B)
        elif isinstance(t, CE):
            coef[T] += t.weight / B
            given["ce"] = kernels.Target(k[T], a=t.weight / B)
        elif isinstance(t, Huber):
            given["huber"] = kernels.Target(k[T], m, idx, t.delta, t.weight / B)
        else:
            given["sup"] = kernels.Target(k[T], m, idx, t.mix, 2 * t.weight / B)
    grad, rows = kernels.fused_rows(lib, s, answers, [1 / T for T in temps], list(coef.values()), **given)
    sums = rows.sum(0)  # float64: kd's sum of (lse_T - p.s / T), ce's of (lse_1 - s_a), huber's, supervised's
    values = []
    for t in terms:
        if isinstance(t, KD):
            values.append(t.temperature ** 2 / B * (t.plogp.double().sum() + sums[0]))
        else:
            values.append(sums[1 if isinstance(t, CE) else 2 if isinstance(t, Huber) else 3] / B)
    return grad, torch.stack(values).to(s.dtype)


_compiled_formula = None  # torch.compile of formula once built; False when it could not be had


def path_for(s: torch.Tensor, terms: list[Term]):
    """("kernel", lib) | ("compiled", None) | ("plain", None): the rule of the module docstring."""
    kinds = [type(t) for t in terms]
    if len(set(kinds)) == len(kinds):  # the kernel takes one term of each kind
        mats = [x.matrix if isinstance(x, Rows) else x for t in terms
                for x in ([t.probs] if isinstance(t, KD) else [t.target] if isinstance(t, Huber | Supervised) else [])]
        lib = kernels.usable("softmax losses", s, *mats)
        if lib is not None:
            return "kernel", lib
    if s.device.type not in ("cpu", "meta") and _compiled_formula is not False:
        return "compiled", None
    return "plain", None


def compiled_formula():
    """torch.compile of ``formula`` (built once; False when it could not be had)."""
    global _compiled_formula
    if _compiled_formula is None:
        _compiled_formula = torch.compile(formula, dynamic=None)
    return _compiled_formula


def weighted(s: torch.Tensor, a: torch.Tensor | None, terms: list[Term],
             path: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_k w_k term_k(s), [each term's unweighted value], not differentiable) by ``path``
    (None: ``path_for``'s choice; "kernel", "compiled" or "plain" to force one, as the tests do)."""
    global _compiled_formula
    path, lib = path_for(s, terms) if path is None else (path, None)
    if path == "kernel":
        if lib is None:
            lib = kernels.library()
        return _Kernel.apply(s, a, tuple(terms), lib)
    spec, tensors = _flat(terms)
    weights = torch.tensor([t.weight for t in terms], dtype=s.dtype, device=s.device)
    if path == "compiled":
        try:
            values = compiled_formula()(spec, s, a, *tensors)
            kernels.say_once(f"softmax losses: compiled formula ({s.device.type})")
        except Exception as e:  # no compiler backend for this device: the formula as written
            _compiled_formula = False
            kernels.say_once(f"softmax losses: torch.compile failed ({type(e).__name__}: {str(e)[:200]}); the plain formula runs")
            values = formula(spec, s, a, *tensors)
    else:
        values = formula(spec, s, a, *tensors)
    return torch.dot(weights, values), values.detach()
