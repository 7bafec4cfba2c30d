"""The device owner (distkg.device): its rules, and that every path takes its resolved device.

No GPU here, so the paths are checked by resolving to a device the CPU can still compute on but
that compares unequal to the default (``cpu:0`` vs ``cpu``): every evaluation must receive it.
Before the owner existed, training, the pipeline and LLM fine-tuning evaluated with the default
(chunks left on the CPU: the cuda:0 "index is on cpu" failure on a GPU) and without the memory budget.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from distkg import device as owner
from distkg.config import load_config
from distkg.device import Placement, placement, resolve_device
from distkg.errors import ConfigError
from distkg.evaluation import ranking
from tests.helpers import tiny_dataset
from tests.llm.conftest import make_tiny_llama

SENTINEL = torch.device("cpu", 0)  # computes like the CPU, compares unequal to the default "cpu"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_owner():
    owner._resolve.cache_clear()
    owner.cuda_available.cache_clear()
    yield
    owner._resolve.cache_clear()
    owner.cuda_available.cache_clear()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only rules; a GPU machine resolves auto to CUDA")
def test_rules_on_a_machine_without_cuda():
    where = placement(load_config(None))
    assert where == Placement(torch.device("cpu"), "no", torch.device("cpu"), torch.float32)
    with pytest.raises(ConfigError, match=r"train.device=cuda, but torch sees no CUDA device"):
        placement(load_config(None, ["train.device=cuda"]))
    with pytest.raises(ConfigError, match=r"llm.device=cuda"):
        resolve_device("cuda", "llm.device")


def test_rules_on_a_machine_with_cuda(monkeypatch):
    # stands in for a GPU machine: torch reports CUDA and two devices (nothing is allocated on them)
    monkeypatch.setattr(owner, "cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("ACCELERATE_TORCH_DEVICE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    where = placement(load_config(None))
    assert (where.device, where.mixed_precision, where.llm_device, where.llm_dtype) == (
        torch.device("cuda", 0), "bf16", torch.device("cuda", 0), torch.bfloat16)
    assert placement(load_config(None, ["train.mixed_precision=fp16", "llm.device=cpu"])).llm_dtype == torch.float32
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun's second process
    assert resolve_device("auto", "train.device") == torch.device("cuda", 1)
    monkeypatch.setenv("ACCELERATE_TORCH_DEVICE", "cuda:0")  # Ray Train names the worker's GPU
    assert resolve_device("cuda", "train.device") == torch.device("cuda", 0)


def test_only_the_owner_decides_the_device():
    """No module but distkg/device.py asks torch about CUDA, reads a device off weights or picks bf16 by device."""
    rules = [r"cuda\.is_available\(", r"parameters\(\)\)\.device", r"weight\.device", r"bfloat16 if"]
    offenders = [f"{p.relative_to(REPO)}:{i}: {line.strip()}"
                 for p in sorted((REPO / "distkg").rglob("*.py")) if p.name != "device.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if any(re.search(r, line) for r in rules)]
    assert not offenders, "\n".join(offenders)


@pytest.fixture
def on_sentinel(monkeypatch):
    """The owner resolves every device to SENTINEL; returns the (device, memory budget) of every rank()."""
    monkeypatch.setattr(owner, "_resolve", lambda *a: Placement(SENTINEL, "no", SENTINEL, torch.float32))
    calls: list[tuple] = []
    real = ranking.rank

    def spy(scorer, qs, index=None, query_chunk=None, cand_chunk=None, progress=True, desc="", device="cpu", **kw):
        calls.append((torch.device(device), kw.get("budget")))
        return real(scorer, qs, index, query_chunk, cand_chunk, progress, desc, device, **kw)

    monkeypatch.setattr(ranking, "rank", spy)
    return calls


def test_training_and_its_evaluations_use_the_resolved_device_and_options(on_sentinel, tmp_path):
    from distkg.training.trainer import train

    cfg = load_config(None, ["model.name=tadistmult", "model.args.dim=6", "train.epochs=2", "train.progress=false",
                             "eval.progress=false", "eval.memory_budget=4096"])
    train(cfg, tmp_path, dataset=tiny_dataset("interval", n_ent=40, n_facts=300))
    assert on_sentinel == [(SENTINEL, 4096)] * 4  # two validations, then eval.splits: valid and test


def test_pipeline_evaluates_on_the_resolved_device(on_sentinel, tmp_path):
    from distkg.models import MODELS
    from distkg.experiments.pipeline import evaluate_model

    ds = tiny_dataset("point")

    cfg = load_config(None, ["eval.progress=false", "eval.memory_budget=9000"])
    evaluate_model(cfg, ds, MODELS.create("frequency", {}, "model.args", dataset=ds), tmp_path)
    assert on_sentinel == [(SENTINEL, 9000)] * 2  # valid and test


def test_llm_training_evaluates_on_the_llm_device_with_the_memory_budget(on_sentinel, tmp_path):
    from distkg.llm.train import train_teacher

    tiny_llama = make_tiny_llama(tmp_path / "lm")

    cfg = load_config(None, [f"llm.model={tiny_llama}", "llm.quantization=none", "llm.dim=8", "llm.steps=1",
                             "llm.queries_per_step=2", "llm.negatives=4", "llm.valid_queries=0", "llm.progress=false",
                             "eval.progress=false", "eval.memory_budget=4400"])
    train_teacher(cfg, tmp_path, dataset=tiny_dataset("point", n_ent=20, n_facts=60))
    # the loop's validation of every round, then the teacher's valid and test: all on the device, one budget
    assert len(on_sentinel) >= 3 and set(on_sentinel) == {(SENTINEL, 4400)}


def test_texts_per_forward_auto_reads_back_and_follows_the_device(tmp_path):
    from distkg.config import save_config
    from distkg.llm.encoder import texts_per_forward

    cfg = load_config(None)
    save_config(cfg, tmp_path / "config.yaml")  # every run folder's config.yaml holds `texts_per_forward: auto`
    assert load_config(tmp_path / "config.yaml").llm.texts_per_forward == "auto"
    with pytest.raises(ConfigError, match="llm.texts_per_forward: 0 is out of range"):
        load_config(None, ["llm.texts_per_forward=0"])
    assert (texts_per_forward("auto", torch.device("cpu")), texts_per_forward("auto", torch.device("cuda", 0)),
            texts_per_forward(300, torch.device("cuda", 0))) == (64, 4096, 300)
