"""Distillation losses, registered by name and combined as weighted sums from config (torchdistill style).

Every loss reads what it needs from one ``DistillBatch`` (student and teacher scores over the
candidate entities, P_LLM, the true answers, and intermediate representations), so a method or
a stage is only a mapping ``{loss name: {weight, params...}}`` in YAML, never a new code path.

The paper (docs/METHOD.md) leaves several choices open; ours, written down:
  kd              L1 / BKD soft part: T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean (Hinton).
  ce              hard-label cross-entropy on the student's scores.
  llm_huber       L2: Huber(delta) between P_LLM and the student's softmax(s/T), summed over
                  entities, batch mean. Huber bounds the pull of entities where the two disagree
                  a lot (outlier LLM scores).
  llm_supervised  L3: MSE between the student's softmax(s) and a target softened by the LLM,
                  y = mix * onehot(answer) + (1 - mix) * P_LLM, summed over entities, batch mean.
  llm_kd          the second teacher as a plain second BKD target: T^2 * KL(P_LLM || softmax(s/T)),
                  P_LLM taken at distill.llm_temperature = T (the runner checks it): what L2 and L3
                  are measured against in the strength sweep (docs/RESULTS.md).
  fitnet          hint: MSE between a learned linear regressor of the student's query
                  representation and the teacher's (FitNet, Romero et al. 2015).
  rkd_distance    RKD distance-wise: smooth-L1 between mean-normalised pairwise distances of
                  student and teacher embeddings in the batch (Park et al. 2019).
  rkd_angle       RKD angle-wise: smooth-L1 between the cosines of the angles formed by every
                  triple of embeddings in the batch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from distkg.distill import fused as fz
from distkg.distill.fused import Rows, dense
from distkg.registry import Registry
from distkg.training.objective import at_least_float32, cross_entropy, float32_losses

LOSSES: Registry = Registry("loss")
INPUTS: dict[str, tuple[str, ...]] = {}  # loss name -> the DistillBatch fields it reads


def loss(name: str, *inputs: str):
    """Register a loss under ``name`` and record which batch fields it reads, so a runner computes
    only those (teacher scores, P_LLM, representations) for the losses a stage uses."""

    def deco(fn):
        INPUTS[name] = inputs
        return LOSSES.register(name)(fn)

    return deco


@dataclass
class DistillBatch:
    """What the losses of one step may read; fields a method does not use may stay None."""

    student_scores: torch.Tensor  # [B, C]
    answers: torch.Tensor  # [B] indices into the C candidates
    teacher_scores: torch.Tensor | None = None  # [B, C] 400-d KG teacher
    teacher_targets: TemperedTargets | None = None  # the same at one temperature, precomputed (kd reads it first)
    teacher_topk: TopKTargets | None = None  # the teacher's top k and the mass outside them (a pool's top-k)
    llm_probs: torch.Tensor | Rows | None = None  # [B, C] P_LLM
    student_repr: torch.Tensor | None = None  # [B, d_s] query representations (FitNet)
    teacher_repr: torch.Tensor | None = None  # [B, d_t]
    student_emb: torch.Tensor | None = None  # [K, d_s] entity embeddings (RKD)
    teacher_emb: torch.Tensor | None = None  # [K, d_t]
    regressor: torch.nn.Module | None = None  # FitNet's learned d_s -> d_t map
    _probs: dict = field(default_factory=dict, repr=False)

    def student_probs(self, temperature: float = 1.0) -> torch.Tensor:
        """softmax(student_scores / T), computed once per batch and temperature: the LLM terms of
        Ours' stage 2 share it (and its one softmax backward) instead of each making their own."""
        if temperature not in self._probs:
            s = self.student_scores
            self._probs[temperature] = torch.softmax(s if temperature == 1 else s / temperature, dim=1)
        return self._probs[temperature]


def _need(batch: DistillBatch, name: str) -> list:
    missing = [n for n in INPUTS[name] if getattr(batch, n) is None]
    if missing:
        raise ValueError(f"loss {name!r} needs {', '.join(missing)} in the batch")
    return [getattr(batch, n) for n in INPUTS[name]]


@dataclass
class TemperedTargets:
    """A fixed teacher's softmax(t / T) and each row's sum of p log p, computed once per run instead
    of every step (the teacher does not change; distill.teachers.KGTeacher.temper)."""

    temperature: float
    probs: torch.Tensor | Rows  # [B, C]
    plogp: torch.Tensor  # [B]


@dataclass
class TopKTargets:
    """A teacher row at temperature T kept as its top k entities' probabilities plus one "rest"
    bucket, 1 - their sum: the mass a renormalised top k would drop (runtime.soft_targets: topk)."""

    temperature: float
    ids: torch.Tensor  # [B, k] entity ids
    log_probs: torch.Tensor  # [B, k] log softmax(t / T) of those entities over the whole row

    def to(self, device: torch.device | str) -> TopKTargets:
        return TopKTargets(self.temperature, self.ids.to(device), self.log_probs.to(device))


class _TopKKL(torch.autograd.Function):
    """T^2 * KL over k + 1 buckets, batch mean: the teacher's top-k probabilities and its rest mass
    against the student's probabilities of the same k entities and its mass outside them (the form
    of DistillKit's missing-mass KL). Gradient, with q = softmax(s / T): T (q - p) / B on the k
    entities and T q (1 - r / q_rest) / B elsewhere, r the teacher's rest, q_rest the student's."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, ids: torch.Tensor, log_p: torch.Tensor, temperature: float) -> torch.Tensor:
        q = torch.softmax(s / temperature, dim=1)
        q_k = q.gather(1, ids)
        p_k = log_p.exp()
        rest_p = (1 - p_k.sum(1)).clamp_min(0)
        # summed outside the k, not 1 - sum(q_k): that cancels to 0 when the student is sure, and r / 0 explodes
        rest_q = q.scatter(1, ids, 0).sum(1).clamp_min(torch.finfo(q.dtype).tiny)
        kl = (torch.xlogy(p_k, p_k) - p_k * q_k.log()).sum() + (torch.xlogy(rest_p, rest_p) - torch.xlogy(rest_p, rest_q)).sum()
        ctx.save_for_backward(q, ids, p_k, rest_p / rest_q)
        ctx.temperature = temperature
        return kl * (temperature**2 / len(s))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q, ids, p_k, ratio = ctx.saved_tensors
        g = q * (1 - ratio).unsqueeze(1)
        g.scatter_(1, ids, q.gather(1, ids) - p_k)
        return g.mul_(grad * (ctx.temperature / len(q))), None, None, None


def temper(t: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(t / T) and its rows' sum p log p (0 log 0 = 0: a teacher may say -inf, as top-k targets do)."""
    p = torch.softmax(t / temperature, dim=1)
    return p, torch.xlogy(p, p).sum(dim=1)


class _SoftKL(torch.autograd.Function):
    """T^2 * KL(p || softmax(s/T)), batch mean, from p and its rows' sum p log p, with the gradient
    T * (q - p) / B written out: fewer passes over the [B, E] matrices than log_softmax + softmax +
    kl_div, which were half of a BKD step (the teacher gets no gradient)."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, p: torch.Tensor, plogp: torch.Tensor, temperature: float) -> torch.Tensor:
        log_q = torch.log_softmax(s / temperature, dim=1)
        cross = torch.dot(p.reshape(-1), log_q.reshape(-1))  # sum p log q
        ctx.save_for_backward(log_q.exp_(), p)
        ctx.temperature = temperature
        return (plogp.sum() - cross) * (temperature**2 / len(s))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q, p = ctx.saved_tensors
        return q.sub_(p).mul_(grad * (ctx.temperature / len(q))), None, None, None


@loss("kd", "student_scores", "teacher_scores")
def kd(batch: DistillBatch, temperature: float = 7.0) -> torch.Tensor:
    top = batch.teacher_topk
    if top is not None:
        if top.temperature != temperature:
            raise ValueError(f"kd at T={temperature} was given top-k targets made at T={top.temperature}")
        return _TopKKL.apply(batch.student_scores, top.ids, top.log_probs.to(batch.student_scores.dtype),
                             float(temperature))
    pre = batch.teacher_targets
    if pre is not None and pre.temperature == temperature:
        return _SoftKL.apply(batch.student_scores, dense(pre.probs), pre.plogp, float(temperature))
    s, t = _need(batch, "kd")
    return _SoftKL.apply(s, *temper(t.detach().to(s.dtype), float(temperature)), float(temperature))


@loss("ce", "student_scores", "answers")
def ce(batch: DistillBatch) -> torch.Tensor:
    s, a = _need(batch, "ce")
    return cross_entropy(s, a)


class _Huber(torch.autograd.Function):
    """sum Huber_delta(p - y) / B with the gradient clamp(p - y, -delta, delta) / B written out:
    with h = clamp(x), Huber(x) = h * (x - h / 2) elementwise, so the loss is two dot products."""

    @staticmethod
    def forward(ctx, p: torch.Tensor, y: torch.Tensor, delta: float) -> torch.Tensor:
        x = p - y
        h = x.clamp(-delta, delta)
        ctx.save_for_backward(h)
        flat_h = h.reshape(-1)
        return (torch.dot(flat_h, x.reshape(-1)) - 0.5 * torch.dot(flat_h, flat_h)) / len(p)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (h,) = ctx.saved_tensors
        return h * (grad / len(h)), None, None


class _SquaredToTarget(torch.autograd.Function):
    """sum (p - y)^2 / B for y = (1 - mix) * P_LLM + mix * onehot(answer), without building y:
    the difference once (the answers' column corrected in place), the gradient 2 (p - y) / B."""

    @staticmethod
    def forward(ctx, p: torch.Tensor, p_llm: torch.Tensor, a: torch.Tensor, mix: float) -> torch.Tensor:
        d = torch.sub(p, p_llm, alpha=1 - mix)
        d[torch.arange(len(a), device=a.device), a] -= mix
        ctx.save_for_backward(d)
        flat = d.reshape(-1)
        return torch.dot(flat, flat) / len(p)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (d,) = ctx.saved_tensors
        return d * (2 * grad / len(d)), None, None, None


@loss("llm_huber", "student_scores", "llm_probs")
def llm_huber(batch: DistillBatch, delta: float = 0.05, temperature: float = 1.0) -> torch.Tensor:
    _, p_llm = _need(batch, "llm_huber")
    return _Huber.apply(batch.student_probs(float(temperature)), dense(p_llm).detach(), float(delta))


@loss("llm_supervised", "student_scores", "llm_probs", "answers")
def llm_supervised(batch: DistillBatch, mix: float = 0.7) -> torch.Tensor:
    _, p_llm, a = _need(batch, "llm_supervised")
    return _SquaredToTarget.apply(batch.student_probs(), dense(p_llm).detach().to(batch.student_scores.dtype), a, float(mix))


def llm_huber_reference(batch: DistillBatch, delta: float = 0.05, temperature: float = 1.0) -> torch.Tensor:
    """llm_huber through autograd's elementwise ops (what the fused form is tested against)."""
    p_s = F.softmax(batch.student_scores / temperature, dim=1)
    return F.huber_loss(p_s, batch.llm_probs, delta=delta, reduction="sum") / len(p_s)


def llm_supervised_reference(batch: DistillBatch, mix: float = 0.7) -> torch.Tensor:
    """llm_supervised through autograd's elementwise ops (what the fused form is tested against)."""
    s, p_llm, a = batch.student_scores, batch.llm_probs, batch.answers
    rows = torch.arange(len(a), device=a.device)
    target = ((1 - mix) * p_llm).index_put((rows, a), torch.full_like(a, mix, dtype=s.dtype), accumulate=True)
    return (F.softmax(s, dim=1) - target).pow(2).sum() / len(s)


@loss("llm_kd", "student_scores", "llm_probs")
def llm_kd(batch: DistillBatch, temperature: float = 7.0) -> torch.Tensor:
    s, p_llm = _need(batch, "llm_kd")
    p = dense(p_llm).detach().to(s.dtype)
    return _SoftKL.apply(s, p, torch.xlogy(p, p).sum(dim=1), float(temperature))


@loss("fitnet", "student_repr", "teacher_repr", "regressor")
def fitnet(batch: DistillBatch) -> torch.Tensor:
    s, t, reg = _need(batch, "fitnet")
    return F.mse_loss(reg(s), t)


def _normalised_distances(x: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(x, x)
    off = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
    return d / d[off].mean().clamp_min(1e-12)


@loss("rkd_distance", "student_emb", "teacher_emb")
def rkd_distance(batch: DistillBatch) -> torch.Tensor:
    s, t = _need(batch, "rkd_distance")
    with torch.no_grad():
        dt = _normalised_distances(t)
    return F.smooth_l1_loss(_normalised_distances(s), dt)


def _angles(x: torch.Tensor) -> torch.Tensor:
    """cos of angle (x_i - x_j, x_k - x_j) for every anchor j and pair (i, k): [K, K, K] flattened."""
    diff = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)  # [j, i, d]
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


@loss("rkd_angle", "student_emb", "teacher_emb")
def rkd_angle(batch: DistillBatch) -> torch.Tensor:
    s, t = _need(batch, "rkd_angle")
    with torch.no_grad():
        at = _angles(t)
    return F.smooth_l1_loss(_angles(s), at)


FUSABLE = {"kd", "ce", "llm_huber", "llm_supervised", "llm_kd"}  # the softmax-based terms distill.fused computes in one pass


def _params(name: str, args: dict) -> dict:
    """A loss's arguments with its signature's defaults filled in (one source for the defaults)."""
    sig = inspect.signature(LOSSES.get(name)).parameters
    return {k: args.get(k, p.default) for k, p in sig.items() if k != "batch"}


def _like(x: torch.Tensor | Rows, s: torch.Tensor) -> torch.Tensor | Rows:
    """Targets in the student's dtype and device (Rows stay unread when they already are)."""
    if isinstance(x, Rows) and x.matrix.dtype == s.dtype and x.matrix.device == s.device:
        return x
    return dense(x).detach().to(device=s.device, dtype=s.dtype)


def fused_terms(spec: dict[str, dict], batch: DistillBatch) -> list[fz.Term] | None:
    """The stage's losses as distill.fused terms when every one of them is fusable (not ce alone,
    which is plain training's own form, nor kd on top-k targets with a rest bucket); None otherwise."""
    names, top = set(spec), batch.teacher_topk
    if not names <= FUSABLE or names == {"ce"} or ("kd" in names and top is not None):
        return None
    s, terms = batch.student_scores, []
    for name, args in spec.items():
        w, kw = float(args.get("weight", 1.0)), _params(name, args)
        if name == "kd":
            T, pre = float(kw["temperature"]), batch.teacher_targets
            if pre is not None and pre.temperature == T:
                probs, plogp = _like(pre.probs, s), pre.plogp.to(device=s.device, dtype=s.dtype)
            else:
                _, t = _need(batch, name)
                probs, plogp = temper(t.detach().to(s.dtype), T)
            terms.append(fz.KD(w, T, probs, plogp))
        elif name == "ce":
            _need(batch, name)
            terms.append(fz.CE(w))
        elif name == "llm_kd":
            _need(batch, name)
            probs = _like(batch.llm_probs, s)
            p = dense(probs)
            terms.append(fz.KD(w, float(kw["temperature"]), probs, torch.xlogy(p, p).sum(dim=1)))
        elif name == "llm_huber":
            _need(batch, name)
            terms.append(fz.Huber(w, float(kw["delta"]), float(kw["temperature"]), _like(batch.llm_probs, s)))
        else:
            _need(batch, name)
            terms.append(fz.Supervised(w, float(kw["mix"]), _like(batch.llm_probs, s)))
    return terms


FLOAT_FIELDS = ("student_scores", "teacher_scores", "llm_probs", "student_repr", "teacher_repr", "student_emb",
                "teacher_emb")  # what a batch's losses read in float32 at least (targets follow the scores' dtype)


def combine(spec: dict[str, dict], batch: DistillBatch, where: str = "losses") -> tuple[torch.Tensor, dict[str, float]]:
    """sum_k weight_k * loss_k(batch, **params_k) for a spec {name: {weight: w, param: value}}; in
    one fused pass (distill.fused) when every loss of the spec is a fusable softmax term. In float32
    under any autocast (distkg.training.objective.at_least_float32): the gradient reaches a bf16
    model through the cast, rounded to bf16 only there."""
    for name, args in spec.items():
        LOSSES.get(name)
        LOSSES.check(name, {k: v for k, v in args.items() if k != "weight"}, f"{where}.{name}", runtime=("batch",))
    with float32_losses(batch.student_scores.device):
        return _combine(spec, replace(batch, _probs={}, **{f: at_least_float32(getattr(batch, f)) for f in FLOAT_FIELDS}))


def _combine(spec: dict[str, dict], batch: DistillBatch) -> tuple[torch.Tensor, dict[str, float]]:
    terms = fused_terms(spec, batch)
    if terms is not None:
        total, values = fz.fused(batch.student_scores, batch.answers, terms)
        return total, dict(zip(spec, values.tolist()))
    total = batch.student_scores.new_zeros(())
    parts: dict[str, float] = {}
    for name, args in spec.items():
        args = dict(args)
        weight = float(args.pop("weight", 1.0))
        value = LOSSES.get(name)(batch, **args)
        parts[name] = float(value.detach())
        total = total + weight * value
    return total, parts
