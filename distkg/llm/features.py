"""The frozen LM's features of every text, cached on disk (``llm.feature_cache``).

Why: the head warm-up (distkg.llm.rounds, the head phase) needs the pooled hidden state of every
entity, relation and time text once; on a CPU that encoding costs minutes (entity texts with
facts are several times longer than names), while the head trains on the result in seconds an
epoch. Runs that share the LM, its adapters and the texts (another head recipe, the evaluation of a
head-only teacher) read the file instead of encoding again.

Never stale: the file name is a digest of everything the features depend on: the model name,
quantization, kept layers, device type (bf16 on CUDA, fp32 on CPU), ``max_tokens``, the pooling,
the LoRA adapters' weights (``adapter_digest``: every LoRA step changes it; so does the seed, through
the adapters' initial weights) and every text in order. A file is read only under its own key, and
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
    a training one is not: the same weights give the same digest either way)."""
    h = hashlib.sha1()
    for name, p in model.named_parameters():
        if "lora_" in name:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def feature_key(teacher: LLMTeacher, cfg: RunConfig) -> str:
    """Digest of what the frozen features depend on (module docstring)."""
    llm_cfg = cfg.llm
    h = hashlib.sha256(json.dumps({
        "model": llm_cfg.model, "quantization": llm_cfg.quantization, "layers": llm_cfg.layers, "device": teacher.device.type,
        "max_tokens": teacher.encoder.max_tokens, "pooling": POOLING, "adapters": adapter_digest(teacher.lm_model),
    }, sort_keys=True).encode())
    for kind in sorted(teacher.texts):
        h.update(kind.encode())
        for text in teacher.texts[kind]:
            h.update(text.encode())
            h.update(b"\x00")
    return h.hexdigest()[:24]


def feature_path(key: str) -> Path:
    return cache_root() / "features" / f"{key}.pt"


def _prime(teacher: LLMTeacher, feats: dict[str, torch.Tensor]) -> None:
    """Hand the features to the encoder's in-memory cache, under the current weights version."""
    for kind, vecs in feats.items():
        teacher.encoder.remember(teacher.texts[kind], vecs)


def load_features(teacher: LLMTeacher, cfg: RunConfig) -> dict[str, torch.Tensor] | None:
    """The cached features of this teacher's texts under its current weights, or None (no file, or a
    file that does not hold this key); found ones also prime the encoder's cache."""
    key = feature_key(teacher, cfg)
    path = feature_path(key)
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file is re-encoded, not trusted
        log.warning("feature cache %s cannot be read (%s); encoding again", path, type(e).__name__)
        return None
    feats = saved.get("features") if isinstance(saved, dict) else None
    if (saved.get("key") != key or not isinstance(feats, dict) or set(feats) != set(teacher.texts)
            or any(len(feats[k]) != len(teacher.texts[k]) for k in feats)):
        log.warning("feature cache %s does not hold key %s; encoding again", path, key)
        return None
    _prime(teacher, feats)
    log.info("frozen LM features read from %s", path)
    return feats


def frozen_features(teacher: LLMTeacher, cfg: RunConfig) -> tuple[dict[str, torch.Tensor], bool]:
    """(features of every text under the current weights, whether they came from the disk cache).

    Without ``llm.feature_cache`` this is ``contrastive.full_cache``; with it, a hit is read and a miss
    is encoded and written for the next run."""
    if cfg.llm.feature_cache:
        feats = load_features(teacher, cfg)
        if feats is not None:
            return feats, True
    feats = full_cache(teacher, clear=False)
    if cfg.llm.feature_cache:
        key = feature_key(teacher, cfg)
        atomic_save({"key": key, "features": feats}, feature_path(key))
    return feats, False


def held_out_features(teacher: LLMTeacher, cfg: RunConfig, entity_texts: list[list[str]]) -> list[dict[str, torch.Tensor]]:
    """``frozen_features`` with each list of ``entity_texts`` in place of the teacher's entity texts
    (the held-out texts of ``llm.text_folds``), the relation and time texts as they are; each set is
    cached under its own key, since the key covers every text. The teacher's texts are restored."""
    own, out = teacher.texts["entity"], []
    try:
        for texts in entity_texts:
            teacher.texts["entity"] = texts
            out.append(frozen_features(teacher, cfg)[0])
    finally:
        teacher.texts["entity"] = own
    return out
