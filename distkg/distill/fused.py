"""The softmax-based distillation terms of one stage in ONE pass over the [B, E] student scores.

BKD (kd + ce) and Ours' stage 2 (kd + llm_huber + llm_supervised) each read the student's scores
through two or three softmaxes, and autograd's form of their weighted sum makes some fifteen
passes over [B, E] matrices of 40-50 MB, each from main memory. Here the rows go a block at a
time (a block of about 1 MB stays in cache): each block's max, its exponentials at every
temperature the terms use, every term's value and the gradient of the weighted sum, written out,
before the next block is read. Main memory then sees one read of the scores, of the teacher's
rows and P_LLM's rows (gathered a block at a time from the full matrices: no [B, E] copy), and
one write of the gradient (each torch call still reads the block again, from cache: some 10
calls a block for BKD, 17 for Ours' stage 2). The gradient is computed in the forward pass (the
loss is a scalar and the targets are fixed) and kept until backward.

Per temperature T, with q = softmax(s / T), m the row max and lse_T = log sum exp(s / T) = m / T - log max q
(p: a teacher row, summing to 1):
  kd   w T^2 / B * (sum p log p - sum p s / T + sum_rows lse_T)                  dL/ds = w T (q - p) / B
  ce   w / B * sum_rows (lse_1 - s_a)                                             dL/ds = w (q - onehot) / B
  llm_huber / llm_supervised: terms of q with dL/dq = u; through the softmax dL/ds = q (u - <q, u>) / T.
The registered losses in distkg.distill.losses are the same terms one at a time; combine picks
this form when every term of a stage is one of these (tested equal, in float64, values and gradients).

On float32 CPU tensors the whole pass is one compiled loop over rows (distkg.kernels, _compiled:
each row's max, exponentials, values and gradient in cache, some 17 torch calls a block fewer);
elsewhere, or with the kernels off, the torch calls below run (_torch_pass).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distkg import kernels

# rows per block: about this many bytes of one [rows, E] block (several blocks live at once, and
# the whole working set should stay in the core's L2 / the shared L3; scripts/bench_fused.py)
BLOCK_BYTES = 1 << 20


@dataclass
class Rows:
    """Rows ``idx`` of a fixed [N, E] matrix (a teacher's soft targets, P_LLM of every training
    query), read a block at a time by the fused terms instead of gathered into a [B, E] copy."""

    matrix: torch.Tensor
    idx: torch.Tensor

    def __len__(self) -> int:
        return len(self.idx)

    def dense(self) -> torch.Tensor:
        """The [B, E] rows themselves (what an unfused loss reads)."""
        return self.matrix.index_select(0, self.idx)

    def block(self, lo: int, hi: int, out: torch.Tensor) -> torch.Tensor:
        return torch.index_select(self.matrix, 0, self.idx[lo:hi], out=out)


def dense(x: torch.Tensor | Rows) -> torch.Tensor:
    return x.dense() if isinstance(x, Rows) else x




@dataclass
class KD:
    """T^2 KL(p || softmax(s / T)), batch mean; ``probs`` the teacher's softmax(t / T), ``plogp`` its rows' sum p log p."""

    weight: float
    temperature: float
    probs: torch.Tensor | Rows
    plogp: torch.Tensor


@dataclass
class CE:
    """Cross-entropy of the true answers, batch mean."""

    weight: float


@dataclass
class Huber:
    """sum Huber_delta(softmax(s / T) - target), batch mean."""

    weight: float
    delta: float
    temperature: float
    target: torch.Tensor | Rows


@dataclass
class Supervised:
    """sum (softmax(s) - (1 - mix) target - mix onehot(answer))^2, batch mean."""

    weight: float
    mix: float
    target: torch.Tensor | Rows


Term = KD | CE | Huber | Supervised


def _temperature(term: Term) -> float:
    return 1.0 if isinstance(term, CE | Supervised) else float(term.temperature)


def block_rows(entities: int, itemsize: int, device: torch.device) -> int:
    """Rows per block; on an accelerator the whole batch is one block (its memory is not a CPU cache)."""
    if device.type != "cpu":
        return 1 << 62
    return max(1, BLOCK_BYTES // max(1, entities * itemsize))


def _sources(t: Term) -> list[torch.Tensor | Rows]:
    return [t.probs] if isinstance(t, KD) else [] if isinstance(t, CE) else [t.target]


def _softmax_coef(terms: tuple, B: int) -> dict[float, float]:
    """Per temperature T, the coefficient c_T of dL/ds += c_T q_T (kd and ce; both passes use it)."""
    coef = dict.fromkeys(sorted({_temperature(t) for t in terms}), 0.0)
    for t in terms:
        if isinstance(t, KD):
            coef[t.temperature] += t.weight * t.temperature / B
        elif isinstance(t, CE):
            coef[1.0] += t.weight / B
    return coef


def _compiled(s: torch.Tensor, answers: torch.Tensor | None, terms: tuple) -> tuple[torch.Tensor, list] | None:
    """(dL/ds, [each term's value]) from the compiled row loop (distkg.kernels), or None when the
    torch path must run: not float32 contiguous CPU tensors, no kernel library, or two terms of one kind."""
    kinds = [type(t) for t in terms]
    if len(set(kinds)) != len(kinds):
        return None
    mats = [x.matrix if isinstance(x, Rows) else x for t in terms for x in _sources(t)]
    lib = kernels.usable("fused distillation losses", s, *mats)
    if lib is None:
        return None
    B = len(s)
    coef = _softmax_coef(terms, B)
    temps = list(coef)
    k = {T: i for i, T in enumerate(temps)}
    given: dict[str, kernels.Target] = {}
    for t in terms:
        src = next(iter(_sources(t)), None)
        m, idx = (src.matrix, src.idx) if isinstance(src, Rows) else (src, None)
        T = _temperature(t)
        if isinstance(t, KD):
            given["kd"] = kernels.Target(k[T], m, idx, t.weight * T / B)
        elif isinstance(t, CE):
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
    return grad, [v.to(s.dtype) for v in values]


def _torch_pass(s: torch.Tensor, answers: torch.Tensor | None, terms: tuple, rows: int) -> tuple[torch.Tensor, list]:
    """(dL/ds, [each term's value]) through torch calls, a block of rows at a time (any device, any dtype)."""
    B, E = s.shape
    grad = torch.empty_like(s)
    coef = _softmax_coef(terms, B)  # dL/ds += coef[T] * q_T (kd and ce)
    temps = list(coef)
    blocks = range(0, B, rows)
    # per-row and per-block numbers land in whole-batch tensors: the sums are taken once at the end
    # (each torch call costs microseconds; a block's work should be its few [rows, E] passes)
    top = s.new_empty(B, 1)  # row max of s
    # row max of softmax(s / T), where a value needs log sum exp(s / T) (kd's T, ce's 1)
    qmax = {_temperature(t): s.new_empty(B, 1) for t in terms if isinstance(t, KD | CE)}
    dots = s.new_zeros(len(terms), len(blocks))  # per block: sum p s (kd), the llm terms' sums
    u_terms = {T: [(i, t) for i, t in enumerate(terms) if isinstance(t, Huber | Supervised) and _temperature(t) == T]
               for T in temps}
    order = sorted(temps, key=lambda T: bool(u_terms[T]))  # plain temperatures write the block first
    scratch: dict = {}  # reused block buffers

    def buf(name):
        if name not in scratch:
            scratch[name] = s.new_empty(min(rows, B), E)
        return scratch[name][:n]

    for j, lo in enumerate(blocks):
        hi = min(B, lo + rows)
        n = hi - lo
        sb, gb = s[lo:hi], grad[lo:hi]
        torch.amax(sb, 1, keepdim=True, out=top[lo:hi])  # (max with indices is several times slower)
        q, got = {}, {}

        def block_of(x):
            """Rows lo..hi of a target, gathered once per block (P_LLM is read by two terms)."""
            if id(x) not in got:
                got[id(x)] = x.block(lo, hi, buf(f"src{id(x)}")) if isinstance(x, Rows) else x[lo:hi]
            return got[id(x)]

        for T in temps:  # torch's softmax is one fused row kernel
            q[T] = torch.softmax(sb if T == 1 else torch.mul(sb, 1.0 / T, out=buf("x")), 1)
            if T in qmax:
                torch.amax(q[T], 1, keepdim=True, out=qmax[T][lo:hi])
        first = True
        for T in order:
            if u_terms[T]:  # dL/dq = sum scale * du, through the softmax: q (u - <q, u>) scale / T
                v, v_scale = None, 0.0
                a = answers[lo:hi].unsqueeze(1) if answers is not None else None
                for i, t in u_terms[T]:
                    y = block_of(t.target)
                    if isinstance(t, Huber):
                        dots[i, j] = F.huber_loss(q[T], y, reduction="sum", delta=t.delta)  # one read of each
                        du = torch.sub(q[T], y, out=buf(f"h{i}")).clamp_(-t.delta, t.delta)
                        scale = t.weight / B
                    else:
                        du = torch.sub(q[T], y, alpha=1 - t.mix, out=buf(f"h{i}"))
                        du.scatter_add_(1, a, du.new_full(a.shape, -t.mix))
                        flat = du.reshape(-1)
                        dots[i, j] = torch.dot(flat, flat)
                        scale = 2 * t.weight / B
                    if scale == 0:
                        continue
                    if v is None:
                        v, v_scale = du, scale
                    else:
                        v.add_(du, alpha=scale / v_scale)
                if v is not None:
                    rho = torch.linalg.vecdot(q[T], v).unsqueeze(1)
                    v.sub_(rho - coef[T] * T / v_scale)
                    if first:
                        torch.mul(q[T], v, out=gb).mul_(v_scale / T)
                    else:
                        gb.addcmul_(q[T], v, value=v_scale / T)
                    first = False
                    continue
            if first:
                torch.mul(q[T], coef[T], out=gb)
            else:
                gb.add_(q[T], alpha=coef[T])
            first = False
        for i, t in enumerate(terms):
            if isinstance(t, KD):
                p = block_of(t.probs)
                dots[i, j] = torch.dot(p.reshape(-1), sb.reshape(-1))
                gb.sub_(p, alpha=t.weight * t.temperature / B)
    # lse_T = log sum exp(s / T) = max s / T - log max q_T, per row
    lse = {T: (top / T).sub_(qmax[T].log()).sum() for T in qmax}
    values = []
    for i, t in enumerate(terms):
        if isinstance(t, KD):  # rows of p sum to 1 (a softmax, or a sampled row): sum p log q = sum p s / T - lse
            T = t.temperature
            values.append(T * T / B * (t.plogp.sum() - dots[i].sum() / T + lse[T]))
        elif isinstance(t, CE):
            values.append((lse[1.0] - s.gather(1, answers.unsqueeze(1)).sum()) / B)
            grad.scatter_add_(1, answers.unsqueeze(1), grad.new_full((B, 1), -t.weight / B))
        else:
            values.append(dots[i].sum() / B)
    return grad, values


class _Fused(torch.autograd.Function):
    """sum_k w_k term_k(s), with the parts' unweighted values as a second, non-differentiable output."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, answers: torch.Tensor | None, terms: tuple, rows: int):
        out = _compiled(s, answers, terms)
        grad, values = out if out is not None else _torch_pass(s, answers, terms, rows)
        values = torch.stack(values)
        weights = torch.tensor([t.weight for t in terms], dtype=s.dtype, device=s.device)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(values)
        return torch.dot(weights, values), values

    @staticmethod
    def backward(ctx, g_total: torch.Tensor, _g_values):
        (grad,) = ctx.saved_tensors
        if g_total.device.type == "cpu" and float(g_total) == 1.0:
            return grad, None, None, None  # the usual case: no pass to scale it (autograd never writes into it)
        return grad * g_total, None, None, None


def fused(s: torch.Tensor, answers: torch.Tensor, terms: list[Term],
          rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_k w_k term_k, [each term's unweighted value]) with the gradient of the sum written out."""
    if rows is None:
        rows = block_rows(s.shape[1], s.element_size(), s.device)
    return _Fused.apply(s, answers, tuple(terms), int(rows))
