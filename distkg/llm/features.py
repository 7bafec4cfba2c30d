"""The frozen LM's features of every text, cached on disk (``llm.feature_cache``).

Why: the head warm-up (distkg.llm.rounds, the head phase) needs the pooled hidden state of every
entity, relation and time text once; on a CPU that encoding costs minutes (entity texts with
facts are several times longer than names), while the head trains on the result in seconds an
epoch. Runs that share the LM, its adapters and the texts (another head recipe, the evaluation of a
head-only teacher) read the file instead of encoding again.

Never stale: each kind of text (entity, relation, time; query texts) has its own file, named by a
digest of everything its features depend on: the model name, quantization, kept layers, device type
(bf16 on CUDA, fp32 on CPU), the kind and its encoder's ``max_tokens``, the pooling, the LoRA adapters'
weights (``adapter_digest``: every LoRA step changes it; fresh adapters, whose lora_B is zero, add
exact zeros and share one key whatever the seed) and every text in order. A file per kind: held-out entity texts re-encode the
entity texts alone, never the thousands of query texts beside them. A file is read only under its own key, and
the key stored inside it is checked again on reading. Files live under the cache root
(distkg.cachedir.cache_root: ``$DISTKG_CACHE``, else ``~/.cache/distkg``), in ``features/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from distkg.cachedir import cache_root
from distkg.config import RunConfig
from distkg.llm.contrastive import full_cache
from distkg.llm.teacher import LLMTeacher
from distkg.training.checkpoint import atomic_save

log = logging.getLogger("distkg")

POOLING = "mean-last-layer"  # what distkg.llm.encoder.TextEncoder returns; part of the key


def adapter_digest(model: torch.nn.Module) -> str:
    """Digest of the LoRA adapters' weights by name, trainable or not (a loaded adapter is frozen,
    a training one is not: the same weights give the same digest either way). "fresh" while every
    lora_B is zero: the adapters then add exact zeros whatever their seeded A, so every seed shares those
    features; "none" for a model without LoRA (its peft wrapping aside, the base model: kept apart,
    since preparing a 4-bit model for LoRA may change its floating-point path)."""
    lora = [(name, p) for name, p in model.named_parameters() if "lora_" in name]
    if not lora:
        return "none"
    if all(not bool(p.detach().any()) for name, p in lora if "lora_B" in name):
        return "fresh"
    h = hashlib.sha1()
    for name, p in lora:
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def feature_key(teacher: LLMTeacher, cfg: RunConfig, kind: str) -> str:
    """Digest of what the frozen features of one kind of text depend on (module docstring)."""
    llm_cfg = cfg.llm
    h = hashlib.sha256(json.dumps({
        "model": llm_cfg.model, "quantization": llm_cfg.quantization, "layers": llm_cfg.layers, "device": teacher.device.type,
        "max_tokens": teacher.encoder_for(kind).max_tokens, "pooling": POOLING, "adapters": adapter_digest(teacher.lm_model),
        "kind": kind,
    }, sort_keys=True).encode())
    for text in teacher.texts[kind]:
        h.update(text.encode())
        h.update(b"\x00")
    return h.hexdigest()[:24]


def feature_path(key: str) -> Path:
    return cache_root() / "features" / f"{key}.pt"


def _read(teacher: LLMTeacher, cfg: RunConfig, kind: str) -> torch.Tensor | None:
    """The cached features of one kind under this teacher's weights, or None (no file, a damaged one, or
    one that does not hold this key); found ones also prime that kind's encoder cache."""
    key = feature_key(teacher, cfg, kind)
    path = feature_path(key)
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file is re-encoded, not trusted
        log.warning("feature cache %s cannot be read (%s); encoding again", path, type(e).__name__)
        return None
    feats = saved.get("features") if isinstance(saved, dict) else None
    if saved.get("key") != key or not isinstance(feats, torch.Tensor) or len(feats) != len(teacher.texts[kind]):
        log.warning("feature cache %s does not hold key %s; encoding again", path, key)
        return None
    teacher.encoder_for(kind).remember(teacher.texts[kind], feats)
    return feats


def load_features(teacher: LLMTeacher, cfg: RunConfig) -> dict[str, torch.Tensor] | None:
    """The cached features of every kind of this teacher's texts under its current weights (each found
    kind primes its encoder's cache), or None unless every kind was found."""
    feats = {kind: _read(teacher, cfg, kind) for kind in teacher.texts}
    if any(v is None for v in feats.values()):
        return None
    log.info("frozen LM features of %s read from %s", ", ".join(feats), cache_root() / "features")
    return feats  # type: ignore[return-value]


def frozen_features(teacher: LLMTeacher, cfg: RunConfig) -> tuple[dict[str, torch.Tensor], bool]:
    """(features of every text under the current weights, whether all came from the disk cache).

    Without ``llm.feature_cache`` this is ``contrastive.full_cache``; with it, each kind of text is read
    when its file holds its key, else encoded and written for the next run."""
    if not cfg.llm.feature_cache:
        return full_cache(teacher, clear=False), False
    feats, hit = {}, True
    teacher.mark_updated()  # the weights' version as they are now
    for kind, texts in teacher.texts.items():
        found = _read(teacher, cfg, kind)
        if found is None:
            hit = False
            found = teacher.encoder_for(kind).encode(texts).detach().float().cpu()
            key = feature_key(teacher, cfg, kind)
            atomic_save({"key": key, "features": found}, feature_path(key))
        feats[kind] = found
    if hit:
        log.info("frozen LM features read from %s", cache_root() / "features")
    return feats, hit


def held_out_features(teacher: LLMTeacher, cfg: RunConfig, entity_texts: list[list[str]],
                      own: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """``own`` with each list of ``entity_texts`` in place of the teacher's entity texts (the held-out texts
    of ``llm.text_folds``): only entity texts are encoded again (each set cached under its own key,
    since the key covers every text). The teacher's texts are restored."""
    keep, out = teacher.texts["entity"], []
    try:
        for texts in entity_texts:
            teacher.texts["entity"] = texts
            found = _read(teacher, cfg, "entity") if cfg.llm.feature_cache else None
            if found is None:
                found = teacher.encoder.encode(texts).detach().float().cpu()
                if cfg.llm.feature_cache:
                    key = feature_key(teacher, cfg, "entity")
                    atomic_save({"key": key, "features": found}, feature_path(key))
            out.append({**own, "entity": found})
    finally:
        teacher.texts["entity"] = keep
    return out
