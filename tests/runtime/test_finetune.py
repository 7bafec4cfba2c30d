"""`distkg llm finetune` as a Ray Train job under DeepSpeed ZeRO-2 on the 2-node loopback cluster:
two workers on the student node, each stepping on its own batch; rank 0 saves and evaluates."""

from __future__ import annotations

import json

import torch


def test_llm_finetune_runs_as_a_zero_job(cluster, tiny_runs, tmp_path):
    from safetensors.torch import load_file

    from distkg.config import load_config
    from distkg.runtime.finetune import finetune_on_ray
    from distkg.training.checkpoint import Checkpoints

    llm_cfg = load_config(tiny_runs.llm / "config.yaml", [
        "llm.head_epochs=0", "llm.steps=3", "llm.checkpoint_every=3", "runtime.backend=ray",
        f"runtime.address={cluster.address}", "runtime.workers=2", "runtime.worker_resources={CPU: 0.5, student: 1}",
        "runtime.zero_stage=2"])
    out = tmp_path / "zero"
    metrics = finetune_on_ray(llm_cfg, out)
    assert 0 < metrics["mrr"] <= 1 and metrics["steps"] == 3
    meta = json.loads((out / "teacher" / "teacher.json").read_text())
    assert meta["workers"] == 2
    lora_b = [v for k, v in load_file(out / "teacher" / "adapter_model.safetensors").items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().sum()) > 0 for v in lora_b)  # LoRA B starts at zero: the steps moved it
    # ZeRO partitions the LoRA optimiser's state across the workers: the round checkpoint holds none of it
    latest = Checkpoints(out / "checkpoints", prefix="round").latest()
    assert torch.load(latest, weights_only=True)["optimizer"]["lora"] is None
