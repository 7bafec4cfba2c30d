"""The 1-vs-all cross-entropy every KG model trains with (the trainer), in float32 under any autocast,
and the sampled softmax's candidates. The formula and its fast path are distkg.training.softmax's,
which distillation's ``ce`` term reads too."""

from __future__ import annotations

import torch

from distkg.training import softmax


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


def cross_entropy(s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """F.cross_entropy(s, a) in float32 under any autocast, by the softmax losses' fast path
    (distkg.training.softmax.weighted)."""
    with float32_losses(s.device):
        return softmax.weighted(at_least_float32(s), a, [softmax.CE(1.0)])[0]


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

