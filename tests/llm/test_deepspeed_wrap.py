"""The DeepSpeed inference wrap of the LLM teacher and its output check.

On this CPU the wrap must reproduce the plain model's pooled outputs; a wrap that changes them (what
DeepSpeed issue 3960 reports for injected kernels on padded Llama batches) must stop the actor with an
error instead of serving wrong soft targets.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from distkg.config import RuntimeConfig
from distkg.errors import DistkgError
from distkg.llm.encoder import TextEncoder
from distkg.llm.loading import load_lm
from distkg.runtime.pool import wrap_deepspeed

PROBE = ["a", "entity 12", "a much longer entity name, padded in one batch", "x y"]


def test_the_wrap_keeps_the_outputs_on_cpu(tiny_llama):
    enc = TextEncoder(load_lm(tiny_llama, "none", "cpu"))
    info = wrap_deepspeed(enc, RuntimeConfig(), False, torch.device("cpu"), PROBE)
    assert info["dtype"] == "float32"
    assert info["output_check"]["texts"] == 4 and info["output_check"]["max_relative_error"] <= 1e-4
    assert enc.lm.model is info["module"]


def test_a_wrap_that_changes_outputs_is_refused(tiny_llama, monkeypatch):
    import deepspeed

    enc = TextEncoder(load_lm(tiny_llama, "none", "cpu"))

    class WrongEngine:
        """Stands in for an engine with wrong kernels: its module's weights are perturbed."""

        def __init__(self, module, **kwargs):
            self.module = copy.deepcopy(module)
            with torch.no_grad():
                for p in self.module.parameters():
                    p.add_(0.1 * torch.randn_like(p))

    monkeypatch.setattr(deepspeed, "init_inference", WrongEngine)
    with pytest.raises(DistkgError, match=r"changed the LM's outputs: relative error .* set runtime.dtype=auto"):
        wrap_deepspeed(enc, RuntimeConfig(), False, torch.device("cpu"), PROBE)
