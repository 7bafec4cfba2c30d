"""`distkg llm finetune` as a Ray Train job under DeepSpeed ZeRO-2 on the 2-node loopback cluster:
two workers on the student node, each stepping on its own batch; rank 0 saves and evaluates."""

from __future__ import annotations

import json

import torch


def zero_config(cluster, tiny_runs, steps: int):
    from distkg.config import load_config

    return load_config(tiny_runs.llm / "config.yaml", [
        "llm.head_epochs=0", f"llm.steps={steps}", "llm.checkpoint_every=2", "runtime.backend=ray",
        f"runtime.address={cluster.address}", "runtime.workers=2", "runtime.worker_resources={CPU: 0.5, student: 1}",
        "runtime.zero_stage=2"])


def round_losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def test_llm_finetune_runs_as_a_zero_job_and_resumes_its_moments(cluster, tiny_runs, tmp_path):
    """6 steps straight, against 4 steps and then the budget raised to 6 in the same folder: the
    resumed run reads each worker's ZeRO partition (Adam's moments, checkpoints/zero) and its last
    round's loss is the straight run's (it was not, before: the moments restarted at zero)."""
    from safetensors.torch import load_file

    from distkg.runtime.finetune import finetune_on_ray
    from distkg.training.checkpoint import Checkpoints

    straight = finetune_on_ray(zero_config(cluster, tiny_runs, 6), tmp_path / "straight")
    out = tmp_path / "zero"
    metrics = finetune_on_ray(zero_config(cluster, tiny_runs, 4), out)
    assert 0 < metrics["mrr"] <= 1 and metrics["steps"] == 4
    meta = json.loads((out / "teacher" / "teacher.json").read_text())
    assert meta["workers"] == 2
    lora_b = [v for k, v in load_file(out / "teacher" / "adapter_model.safetensors").items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().sum()) > 0 for v in lora_b)  # LoRA B starts at zero: the steps moved it
    # ZeRO partitions the LoRA optimiser's state across the workers: each keeps its own partition
    latest = Checkpoints(out / "checkpoints", prefix="round").latest()
    assert torch.load(latest, weights_only=True)["optimizer"]["lora"] is None
    assert sorted(p.name for p in (out / "checkpoints" / "zero").iterdir()) == [
        f"round_{r:04d}.rank{k}-of-2.pt" for r in (1, 2) for k in (0, 1)]
    resumed = finetune_on_ray(zero_config(cluster, tiny_runs, 6), out)
    assert resumed["steps"] == straight["steps"] == 6
    assert round_losses(out) == round_losses(tmp_path / "straight")  # rounds 1-2 before the resume, 3 after
    assert resumed["mrr"] == straight["mrr"]
