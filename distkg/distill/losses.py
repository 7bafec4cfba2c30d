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
The softmax losses (kd, ce, llm_*) are written once, as formulas, in distkg.training.softmax; a
stage's softmax losses run there in one fast pass (``combine``), the others one at a time.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from distkg.registry import Registry
from distkg.training import softmax as sm
from distkg.training.objective import at_least_float32, float32_losses
from distkg.training.softmax import Rows, dense

__all__ = ["LOSSES", "INPUTS", "DistillBatch", "TemperedTargets", "TopKTargets", "Rows", "combine", "temper"]

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


def temper(t: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(t / T) and its rows' sum p log p (0 log 0 = 0: a teacher may say -inf, as top-k targets do)."""
    p = torch.softmax(t / temperature, dim=1)
    return p, torch.xlogy(p, p).sum(dim=1)


def _teacher_probs(batch: DistillBatch, temperature: float) -> tuple[torch.Tensor | Rows, torch.Tensor]:
    """The KG teacher's softmax(t / T) and its rows' sum p log p: the precomputed ones when they are at
    this T (distkg.distill.teachers.KGTeacher.temper), else from the teacher's scores."""
    pre, s = batch.teacher_targets, batch.student_scores
    if pre is not None and pre.temperature == temperature:
        return _like(pre.probs, s), pre.plogp.to(device=s.device, dtype=s.dtype)
    _, t = _need(batch, "kd")
    return temper(t.detach().to(s.dtype), temperature)


def _llm_probs(batch: DistillBatch, name: str) -> torch.Tensor | Rows:
    """P_LLM in the student's dtype and device (Rows left unread: the kernel reads them in place)."""
    _need(batch, name)
    return _like(batch.llm_probs, batch.student_scores)


def _llm_kd_targets(batch: DistillBatch) -> tuple[torch.Tensor | Rows, torch.Tensor]:
    """P_LLM and its rows' sum p log p, which only llm_kd reads (a pass over [B, E] the other LLM terms skip)."""
    probs = _llm_probs(batch, "llm_kd")
    p = dense(probs)
    return probs, torch.xlogy(p, p).sum(dim=1)


@loss("kd", "student_scores", "teacher_scores")
def kd(batch: DistillBatch, temperature: float = 7.0) -> torch.Tensor:
    top, s = batch.teacher_topk, batch.student_scores
    if top is not None:
        if top.temperature != temperature:
            raise ValueError(f"kd at T={temperature} was given top-k targets made at T={top.temperature}")
        return sm.kd_topk(s, top.ids, top.log_probs.to(s.dtype), float(temperature))
    probs, plogp = _teacher_probs(batch, float(temperature))
    return sm.kd(s, dense(probs), float(temperature), plogp)


@loss("ce", "student_scores", "answers")
def ce(batch: DistillBatch) -> torch.Tensor:
    s, a = _need(batch, "ce")
    return sm.ce(s, a)


@loss("llm_huber", "student_scores", "llm_probs")
def llm_huber(batch: DistillBatch, delta: float = 0.05, temperature: float = 1.0) -> torch.Tensor:
    return sm.huber(batch.student_scores, dense(_llm_probs(batch, "llm_huber")), float(delta), float(temperature))


@loss("llm_supervised", "student_scores", "llm_probs", "answers")
def llm_supervised(batch: DistillBatch, mix: float = 0.7) -> torch.Tensor:
    return sm.supervised(batch.student_scores, dense(_llm_probs(batch, "llm_supervised")), batch.answers, float(mix))


@loss("llm_kd", "student_scores", "llm_probs")
def llm_kd(batch: DistillBatch, temperature: float = 7.0) -> torch.Tensor:
    probs, plogp = _llm_kd_targets(batch)
    return sm.kd(batch.student_scores, dense(probs), float(temperature), plogp)


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


SOFTMAX = {"kd", "ce", "llm_huber", "llm_supervised", "llm_kd"}  # terms distkg.training.softmax.weighted sums in one pass


def _params(name: str, args: dict) -> dict:
    """A loss's arguments with its signature's defaults filled in (one source for the defaults)."""
    sig = inspect.signature(LOSSES.get(name)).parameters
    return {k: args.get(k, p.default) for k, p in sig.items() if k != "batch"}


def _like(x: torch.Tensor | Rows, s: torch.Tensor) -> torch.Tensor | Rows:
    """Targets in the student's dtype and device (Rows stay unread when they already are)."""
    if isinstance(x, Rows) and x.matrix.dtype == s.dtype and x.matrix.device == s.device:
        return x
    return dense(x).detach().to(device=s.device, dtype=s.dtype)


def softmax_terms(spec: dict[str, dict], batch: DistillBatch) -> tuple[list[str], list[sm.Term]]:
    """The stage's softmax losses as distkg.training.softmax terms (names, terms), for one fast pass;
    kd on top-k targets (a rest bucket) stays out: its formula runs as the other losses do."""
    names, terms = [], []
    for name, args in spec.items():
        if name not in SOFTMAX or (name == "kd" and batch.teacher_topk is not None):
            continue
        w, kw = float(args.get("weight", 1.0)), _params(name, args)
        if name == "kd":
            terms.append(sm.KD(w, float(kw["temperature"]), *_teacher_probs(batch, float(kw["temperature"]))))
        elif name == "ce":
            _need(batch, name)
            terms.append(sm.CE(w))
        elif name == "llm_kd":
            terms.append(sm.KD(w, float(kw["temperature"]), *_llm_kd_targets(batch)))
        elif name == "llm_huber":
            terms.append(sm.Huber(w, float(kw["delta"]), float(kw["temperature"]), _llm_probs(batch, name)))
        else:
            terms.append(sm.Supervised(w, float(kw["mix"]), _llm_probs(batch, name)))
        names.append(name)
    return names, terms


FLOAT_FIELDS = ("student_scores", "teacher_scores", "llm_probs", "student_repr", "teacher_repr", "student_emb",
                "teacher_emb")  # what a batch's losses read in float32 at least (targets follow the scores' dtype)


def combine(spec: dict[str, dict], batch: DistillBatch, where: str = "losses") -> tuple[torch.Tensor, dict[str, float]]:
    """sum_k weight_k * loss_k(batch, **params_k) for a spec {name: {weight: w, param: value}}: the
    softmax losses in one pass (distkg.training.softmax.weighted: the C loop on float32 CPU, the
    compiled formula on an accelerator), the others one at a time. In float32 under any autocast
    (distkg.training.objective.at_least_float32): the gradient reaches a bf16 model through the
    cast, rounded to bf16 only there."""
    for name, args in spec.items():
        LOSSES.get(name)
        LOSSES.check(name, {k: v for k, v in args.items() if k != "weight"}, f"{where}.{name}", runtime=("batch",))
    with float32_losses(batch.student_scores.device):
        return _combine(spec, replace(batch, **{f: at_least_float32(getattr(batch, f)) for f in FLOAT_FIELDS}))


def _combine(spec: dict[str, dict], batch: DistillBatch) -> tuple[torch.Tensor, dict[str, float]]:
    names, terms = softmax_terms(spec, batch)
    parts: dict[str, float] = {}
    if terms:
        total, values = sm.weighted(batch.student_scores, batch.answers, terms)
        parts.update(zip(names, values.tolist()))
    else:
        total = batch.student_scores.new_zeros(())
    for name, args in spec.items():
        if name in parts:
            continue
        args = dict(args)
        weight = float(args.pop("weight", 1.0))
        value = LOSSES.get(name)(batch, **args)
        parts[name] = float(value.detach())
        total = total + weight * value
    return total, {name: parts[name] for name in spec}
