"""The 1-vs-all cross-entropy every KG model trains with (the trainer) and distillation's ``ce``
term reads (distkg.distill.losses), with its gradient written out: it is half of a plain step's
passes over the [batch x entities] scores, so it lives below both callers, in the training layer."""

from __future__ import annotations

import torch

from distkg import kernels


class _CrossEntropy(torch.autograd.Function):
    """F.cross_entropy (batch mean, optional label smoothing) with its gradient written out:
    log_softmax once forward, kept, and turned in place into softmax - target backward. Autograd's
    nll_loss + log_softmax backward makes a zero [B, C] matrix, scatters into it and reads it twice.
    On float32 CPU scores without smoothing the compiled row loop (distkg.kernels) writes the value
    and the gradient in one pass forward, kept for backward."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, a: torch.Tensor, smoothing: float) -> torch.Tensor:
        lib = None if smoothing else kernels.usable("cross-entropy", s)
        if lib is not None:  # one compiled pass: the value and the gradient (softmax - onehot) / B
            B = len(s)
            g, rows = kernels.fused_rows(lib, s, a, [1.0], [1.0 / B], ce=kernels.Target(0, a=1.0 / B))
            ctx.save_for_backward(g)
            ctx.compiled = True
            return (rows[:, 1].sum() / B).to(s.dtype)
        ctx.compiled = False
        log_p = torch.log_softmax(s, dim=1)
        rows = torch.arange(len(a), device=a.device)
        nll = -log_p[rows, a].sum()
        if smoothing:
            nll = (1 - smoothing) * nll - smoothing * log_p.sum() / s.shape[1]
        ctx.save_for_backward(log_p, a)
        ctx.smoothing = smoothing
        return nll / len(s)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.compiled:
            (g,) = ctx.saved_tensors
            if grad.device.type == "cpu" and float(grad) == 1.0:
                return g, None, None  # the usual case: no pass to scale it (autograd never writes into it)
            return g * grad, None, None
        log_p, a = ctx.saved_tensors
        g = log_p.exp()  # a new buffer (same passes as in place), so a retained graph can run backward again
        if ctx.smoothing:
            g.sub_(ctx.smoothing / g.shape[1])
        g[torch.arange(len(a), device=a.device), a] -= 1 - ctx.smoothing
        return g.mul_(grad / len(g)), None, None


LOW_PRECISION = (torch.float16, torch.bfloat16)


def at_least_float32(x):
    """``x`` in float32 when it is a 16-bit float tensor, else as it is (float64 stays: gradient tests).
    Under Accelerate's bf16 autocast (the GPU default) a model's scores come out in bf16; a loss sums
    over every entity of a row, where 8 bits of mantissa lose whole terms (a small KD rounds to 0), so
    every loss reads its inputs through this and runs with autocast off (``float32_losses``)."""
    return x.float() if isinstance(x, torch.Tensor) and x.dtype in LOW_PRECISION else x


def float32_losses(device: torch.device):
    """Autocast off on ``device``: what a loss computes stays in its inputs' float32."""
    return torch.autocast(device.type, enabled=False)


def cross_entropy(s: torch.Tensor, a: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """F.cross_entropy(s, a, label_smoothing=...) with the gradient written out (_CrossEntropy), in
    float32 under any autocast."""
    with float32_losses(s.device):
        return _CrossEntropy.apply(at_least_float32(s), a, float(label_smoothing))


def sampled_candidates(answers: torch.Tensor, num_entities: int, negatives: int,
                       gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidates of the sampled softmax (``train.loss: sampled_softmax``): the batch's answers and
    ``negatives`` entities drawn uniformly for the whole batch, each once (sorted); and each answer's
    column among them. A step then scores [B, C] with C <= B + negatives, whatever the entity count."""
    neg = torch.randint(0, num_entities, (negatives,), generator=gen).to(answers.device)
    candidates, inverse = torch.unique(torch.cat([answers, neg]), return_inverse=True)
    return candidates, inverse[: len(answers)]


def candidate_log_q(answers: torch.Tensor, num_entities: int, batch_size: int, negatives: int) -> torch.Tensor:
    """[E] log of each entity's chance to be among a batch's sampled candidates (sampled_candidates):
    an answer of one of the batch's ``batch_size`` queries (drawn as the training answers are
    distributed) or one of ``negatives`` uniform draws. Subtracted from the candidates' scores
    (``train.sampling_correction``, the logQ correction of sampled softmax), it makes a rarely drawn
    candidate stand for the many entities like it that were not drawn, so the sampled loss's
    gradient approaches the full softmax's instead of over-weighting the frequent answers."""
    f = torch.bincount(answers, minlength=num_entities).double() / max(len(answers), 1)
    missed = (1 - f).pow(batch_size) * (1 - 1 / num_entities) ** negatives
    return torch.log1p(-missed).float()


def corrected(scores: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
    """Scores over sampled candidates less each one's log chance of being drawn (``shift``, from
    candidate_log_q; None: as they are). Not cast down: bf16 scores come back in float32."""
    return scores if shift is None else scores - shift

