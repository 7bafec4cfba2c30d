"""The softmax-based distillation terms of one stage in ONE pass over the [B, E] student scores.

BKD (kd + ce) and Ours' stage 2 (kd + llm_huber + llm_supervised) each read the student's scores
through two or three softmaxes, and autograd's form of their weighted sum makes some fifteen
passes over [B, E] matrices of 40-50 MB, each from main memory. Here the rows go a block at a
time (a block of a few hundred KB stays in cache): each block's max, its exponentials at every
temperature the terms use, every term's value and the gradient of the weighted sum, written out,
before the next block is read. Main memory then sees one read of the scores, of the teacher's
rows and P_LLM's rows (gathered a block at a time from the full matrices: no [B, E] copy), and
one write of the gradient. The gradient is computed in the forward pass (the loss is a scalar
and the targets are fixed) and kept until backward.

Per temperature T, with q = softmax(s / T), m the row max and Z = sum exp((s - m) / T):
  kd   w T^2 / B * (sum p log p - sum p (s - m) / T + sum_rows log Z * sum p)     dL/ds = w T (q - p) / B
  ce   w / B * sum_rows (log Z - (s_a - m))                                        dL/ds = w (q - onehot) / B
  llm_huber / llm_supervised: terms of q with dL/dq = u; through the softmax dL/ds = q (u - <q, u>) / T.
The registered losses in distkg.distill.losses are the same terms one at a time; combine picks
this form when every term of a stage is one of these (tested equal, in float64, values and gradients).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# rows per block: about this many bytes of one [rows, E] block (several blocks live at once, and
# the whole working set should stay in the core's L2 / the shared L3)
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


class _Fused(torch.autograd.Function):
    """sum_k w_k term_k(s), with the parts' unweighted values as a second, non-differentiable output."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, answers: torch.Tensor, terms: tuple, rows: int):
        B, E = s.shape
        grad = torch.empty_like(s)
        temps = sorted({_temperature(t) for t in terms})
        parts = [s.new_zeros(()) for _ in terms]
        scratch: dict = {}  # reused block buffers

        def buf(name):
            if name not in scratch:
                scratch[name] = s.new_empty(min(rows, B), E)
            return scratch[name]

        for lo in range(0, B, rows):
            hi = min(B, lo + rows)
            n = hi - lo
            sb, gb = s[lo:hi], grad[lo:hi]
            local = torch.arange(n, device=s.device)
            a = answers[lo:hi] if answers is not None else None  # kd alone reads no answers
            m = sb.amax(1, keepdim=True)  # (max with indices is several times slower)
            q, lse, u, got = {}, {}, {}, {}

            def block_of(x):
                """Rows lo..hi of a target, gathered once per block (P_LLM is read by two terms)."""
                if id(x) not in got:
                    got[id(x)] = x.block(lo, hi, buf(f"src{id(x)}")[:n]) if isinstance(x, Rows) else x[lo:hi]
                return got[id(x)]

            for T in temps:  # torch's softmax is one fused row kernel; log sum exp(s / T) = m / T - log max q
                q[T] = torch.softmax(sb if T == 1 else torch.mul(sb, 1.0 / T, out=buf("x")[:n]), 1)
                lse[T] = m / T - q[T].amax(1, keepdim=True).log_()
            coef = dict.fromkeys(temps, 0.0)  # dL/ds += coef[T] * q_T (kd and ce)
            for i, t in enumerate(terms):
                T = _temperature(t)
                if isinstance(t, KD):
                    p = block_of(t.probs)
                    cross = torch.vdot(p.reshape(-1), sb.reshape(-1)) / T - torch.vdot(p.sum(1), lse[T].reshape(-1))
                    parts[i] += t.plogp[lo:hi].sum() - cross
                    coef[T] += t.weight * T / B
                elif isinstance(t, CE):
                    parts[i] += lse[T].sum() - sb[local, a].sum()
                    coef[T] += t.weight / B
                else:  # dL/dq = scale * du: kept as (u, its scale) and summed into u
                    y = block_of(t.target)
                    if isinstance(t, Huber):
                        x = torch.sub(q[T], y, out=buf("d")[:n])
                        du = torch.clamp(x, -t.delta, t.delta, out=buf(f"h{i}")[:n])
                        hf = du.reshape(-1)
                        parts[i] += torch.vdot(hf, x.reshape(-1)) - 0.5 * torch.vdot(hf, hf)
                        scale = t.weight / B
                    else:
                        du = torch.sub(q[T], y, alpha=1 - t.mix, out=buf(f"h{i}")[:n])
                        du[local, a] -= t.mix
                        flat = du.reshape(-1)
                        parts[i] += torch.vdot(flat, flat)
                        scale = 2 * t.weight / B
                    if scale == 0:
                        continue
                    if T in u:
                        u[T][0].add_(du, alpha=scale / u[T][1])
                    else:
                        u[T] = (du, scale)
            first = True
            for T in sorted(temps, key=lambda T: T in u):  # q (coef + scale (u - <q, u>) / T), plain ones first
                if T in u:
                    v, scale = u[T]
                    rho = torch.linalg.vecdot(q[T], v).unsqueeze(1)
                    v.sub_(rho - coef[T] * T / scale)
                    if first:
                        torch.mul(q[T], v, out=gb).mul_(scale / T)
                    else:
                        gb.addcmul_(q[T], v, value=scale / T)
                elif first:
                    torch.mul(q[T], coef[T], out=gb)
                else:
                    gb.add_(q[T], alpha=coef[T])
                first = False
            for t in terms:
                if isinstance(t, KD):
                    gb.sub_(block_of(t.probs), alpha=t.weight * t.temperature / B)
                elif isinstance(t, CE):
                    gb[local, a] -= t.weight / B
        scales = [(t.temperature**2 if isinstance(t, KD) else 1.0) / B for t in terms]
        values = torch.stack(parts) * torch.tensor(scales, dtype=s.dtype, device=s.device)  # each term, unweighted
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
