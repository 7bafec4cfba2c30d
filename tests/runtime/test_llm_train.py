"""`distkg llm train` as a Ray Train job under DeepSpeed ZeRO-2 on the 2-node loopback cluster:
two workers on the student node, each stepping on its own batch; rank 0 saves and evaluates."""

from __future__ import annotations

import json

import pytest
import torch


def zero_config(cluster, tiny_runs, steps: int, stage: int = 2, head_epochs: int = 0):
    from distkg.config import load_config

    return load_config(tiny_runs.llm / "config.yaml", [
        f"llm.head_epochs={head_epochs}", f"llm.steps={steps}", "llm.checkpoint_every=2", "runtime.backend=ray",
        f"runtime.address={cluster.address}", "runtime.workers=2", "runtime.worker_resources={CPU: 0.5, student: 1}",
        f"runtime.zero_stage={stage}"])


@pytest.fixture(scope="module")
def straight(cluster, tiny_runs, tmp_path_factory):
    """4 ZeRO steps in one go: what the resumed jobs below must end as."""
    from distkg.runtime.llm_train import train_teacher_on_ray

    out = tmp_path_factory.mktemp("straight")
    return out, train_teacher_on_ray(zero_config(cluster, tiny_runs, 4), out)


def round_losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def test_llm_train_runs_as_a_zero_job_and_resumes_its_moments(cluster, tiny_runs, straight, tmp_path):
    """4 steps straight, against 2 steps and then the budget raised to 4 in the same folder: the
    resumed run reads each worker's ZeRO partition (Adam's moments, checkpoints/zero) and its last
    round's loss is the straight run's (it was not, before: the moments restarted at zero)."""
    from safetensors.torch import load_file

    from distkg.runtime.llm_train import train_teacher_on_ray
    from distkg.training.checkpoint import Checkpoints

    straight_out, straight = straight
    out = tmp_path / "zero"
    metrics = train_teacher_on_ray(zero_config(cluster, tiny_runs, 2), out)
    assert 0 < metrics["mrr"] <= 1 and metrics["steps"] == 2
    meta = json.loads((out / "teacher" / "teacher.json").read_text())
    assert meta["workers"] == 2
    lora_b = [v for k, v in load_file(out / "teacher" / "adapter_model.safetensors").items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().sum()) > 0 for v in lora_b)  # LoRA B starts at zero: the steps moved it
    # ZeRO partitions the LoRA optimiser's state across the workers: each keeps its own partition
    latest = Checkpoints(out / "checkpoints", prefix="round").latest()
    assert torch.load(latest, weights_only=True)["optimizer"]["lora"] is None
    assert sorted(p.name for p in (out / "checkpoints" / "zero").iterdir()) == [f"round_0001.rank{k}-of-2.pt" for k in (0, 1)]
    resumed = train_teacher_on_ray(zero_config(cluster, tiny_runs, 4), out)
    assert resumed["steps"] == straight["steps"] == 4
    assert round_losses(out) == round_losses(straight_out)  # round 1 before the resume, 2 after
    assert resumed["mrr"] == straight["mrr"]


def test_a_job_whose_out_lost_its_checkpoints_resumes_from_ray_train_storage(cluster, tiny_runs, straight, tmp_path):
    """OUT as if node-local: after 2 steps the folder's checkpoints (rank 0's round and each worker's ZeRO
    partition) are removed, as on a node that never held them; raised to 4 steps, the job copies what its
    workers reported to runtime.storage_path back and ends as the straight 4-step run does."""
    import shutil

    from distkg.runtime.llm_train import train_teacher_on_ray

    storage = f"runtime.storage_path={tmp_path / 'storage'}"
    straight_out, straight = straight
    out = tmp_path / "node-local"
    train_teacher_on_ray(load_with(zero_config(cluster, tiny_runs, 2), storage), out)
    shutil.rmtree(out / "checkpoints")
    resumed = train_teacher_on_ray(load_with(zero_config(cluster, tiny_runs, 4), storage), out)
    assert resumed["steps"] == straight["steps"] == 4
    assert json.loads((out / "runtime" / "restored.json").read_text())["round"] == 1  # not started over
    assert round_losses(out) == round_losses(straight_out)  # round 1 restored from storage, 2 run
    assert resumed["mrr"] == straight["mrr"]
    assert sorted(p.name for p in (out / "checkpoints" / "zero").iterdir())[-2:] == [
        f"round_0002.rank{k}-of-2.pt" for k in (0, 1)]


def load_with(cfg, *sets: str):
    """``cfg`` with ``sets`` applied, as --set would."""
    from distkg.config import build_overridden, to_dict

    return build_overridden(type(cfg), to_dict(cfg), "", list(sets))


def test_zero3_shards_the_base_weights_from_the_load_on_and_resumes(cluster, tiny_runs, tmp_path):
    """ZeRO-3 over 2 workers on the tiny unquantized LM: each worker loads only its partition of the LM
    (frozen base included: no process ever holds it whole; goal <= 0.55x) and holds about half after
    the engine starts; the head warm-up's features, validation and the final scoring run on the
    partitions, every rank in step; the adapters are saved gathered whole, and 2 steps then 4 in one
    folder give the straight run's curve."""
    from distkg.runtime.llm_train import train_teacher_on_ray

    straight = train_teacher_on_ray(zero_config(cluster, tiny_runs, 4, stage=3, head_epochs=1), tmp_path / "straight")
    zero = straight["zero"]
    assert zero["stage"] == 3 and zero["loaded_share"] <= 0.55 and zero["share"] <= 0.55, zero
    assert 0 < straight["mrr"] <= 1 and straight["steps"] == 4 and straight["head_warmup"]["epochs"] == 1
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "straight" / "teacher" / "adapter_model.safetensors")
    lora_b = [v for k, v in saved.items() if "lora_B" in k]
    assert lora_b and all(v.numel() > 0 for v in lora_b) and any(float(v.abs().sum()) > 0 for v in lora_b)  # gathered whole
    tables = torch.load(tmp_path / "straight" / "teacher" / "tables.pt", weights_only=True)
    assert tables["entity"].shape[0] > 0 and torch.isfinite(tables["entity"]).all()
    out = tmp_path / "resumed"
    train_teacher_on_ray(zero_config(cluster, tiny_runs, 2, stage=3, head_epochs=1), out)
    resumed = train_teacher_on_ray(zero_config(cluster, tiny_runs, 4, stage=3, head_epochs=1), out)
    assert round_losses(out) == round_losses(tmp_path / "straight")
    assert resumed["mrr"] == straight["mrr"]


def test_zero3_refuses_a_4bit_base_before_ray_starts(tiny_runs, tmp_path):
    from distkg.config import load_config
    from distkg.errors import ConfigError
    from distkg.runtime.llm_train import train_teacher_on_ray

    cfg = load_config(tiny_runs.llm / "config.yaml", ["llm.quantization=nf4", "runtime.backend=ray", "runtime.workers=2",
                                                      "runtime.zero_stage=3", "runtime.address=127.0.0.1:1"])
    with pytest.raises(ConfigError, match="zero_stage=3 shards the base LM's weights.*quantization='nf4'"):
        train_teacher_on_ray(cfg, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_infonce_on_several_workers_is_refused_before_ray_starts(tiny_runs, tmp_path):
    """The shipped recipes' objective on runtime.workers=2: one line, rc 2 from the CLI, before Ray (it
    failed after about a minute with a traceback from inside Ray Train)."""
    from distkg.config import load_config
    from distkg.errors import ConfigError
    from distkg.runtime.llm_train import train_teacher_on_ray

    cfg = load_config(tiny_runs.llm / "config.yaml", ["llm.objective=infonce", "runtime.backend=ray", "runtime.workers=2",
                                                      "runtime.address=127.0.0.1:1"])
    with pytest.raises(ConfigError, match="llm.objective=infonce runs in one process.*2 workers"):
        train_teacher_on_ray(cfg, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_a_failure_inside_the_workers_is_one_line_naming_its_cause(cluster, tiny_runs, tmp_path):
    """An error raised in every Ray Train worker (a model the workers cannot load) ends the command
    with the workers' own message in one line, and Ray's whole report in OUT/ray (it was a traceback
    of Ray Train's, tens of lines, issue 33 item 3)."""
    from distkg.errors import DistkgError
    from distkg.runtime.llm_train import train_teacher_on_ray

    cfg = zero_config(cluster, tiny_runs, 2)
    cfg.llm.model = str(tmp_path / "no-such-model")
    cfg.runtime.max_failures = 0
    with pytest.raises(DistkgError) as raised:
        train_teacher_on_ray(cfg, tmp_path / "run")
    message = str(raised.value)
    assert "\n" not in message and "ConfigError: llm.model=" in message and "cannot be loaded" in message, message
    assert (tmp_path / "run" / "ray" / "llm-train-error.log").is_file()
