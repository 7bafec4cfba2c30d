"""The ZeRO-3 partitioned load (distkg.llm.loading.load_partitioned), in 2 processes of a gloo group
on 127.0.0.1 (what Ray Train sets up for `distkg llm train`): each process holds about half of the
LM's bytes from the load on, and the partitions, gathered, are the plain load's weights bit for bit,
with the model cut to ``llm.layers`` before it is built. Then, under the engine, texts encoded for
evaluation (inside ``torch.inference_mode``, as distkg.evaluation ranks) leave weights a LoRA step
can train through."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import torch

# DeepSpeed's default persistence threshold keeps these tiny layers whole once the engine starts: the
# case in which evaluation-mode encoding used to leave them unfit for the LoRA step
ZERO3 = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}


def _load_in_group(rank: int, world: int, port: int, folder: str, out) -> None:
    import deepspeed
    import torch.distributed as dist

    from distkg.llm.loading import load_lm
    from distkg.llm.rounds import lm_bytes

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        lm = load_lm(folder, "none", "cpu", layers=1, zero3=ZERO3)
        held = {"held": lm_bytes(lm.model), "whole": lm_bytes(lm.model, whole=True),
                "layers": lm.model.config.num_hidden_layers}
        with deepspeed.zero.GatheredParameters(list(lm.model.parameters())):
            weights = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
        from peft import LoraConfig, get_peft_model

        from distkg.llm.encoder import TextEncoder, transformer_body

        lm.model = get_peft_model(lm.model, LoraConfig(r=2, lora_dropout=0.05, target_modules=["q_proj", "v_proj"]))
        engine, *_ = deepspeed.initialize(model=transformer_body(lm.model), config=ZERO3, dist_init_required=False,
                                          optimizer=torch.optim.AdamW([p for p in lm.model.parameters() if p.requires_grad]))
        encoder = TextEncoder(lm, exact_lengths=False)
        with torch.inference_mode():
            for _ in range(2):
                encoder.encode(["an entity", "another one"])
                encoder.clear()
        loss = encoder.encode(["an entity", "a relation"], grad=True).square().mean()
        engine.backward(loss)
        engine.step()
        from distkg.device import release_shm_buffer

        release_shm_buffer()
        torch.save({"bytes": held, "weights": weights, "loss": loss.item()}, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_each_process_loads_only_its_partition_of_the_same_weights(tiny_llama, tmp_path):
    import torch.multiprocessing as mp

    from distkg.llm.loading import load_lm
    from distkg.runtime.cluster import free_port

    port = free_port()
    mp.spawn(_load_in_group, args=(2, port, tiny_llama, tmp_path), nprocs=2, join=True)
    # DeepSpeed's shared-memory all-reduce buffers are not left in /dev/shm (distkg.device.release_shm_buffer)
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_127.0.0.1_{port}_*"))
    plain = dict(load_lm(tiny_llama, "none", "cpu", layers=1).model.named_parameters())
    for rank in (0, 1):
        saved = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        sizes = saved["bytes"]
        assert sizes["layers"] == 1 and sizes["whole"] == sum(p.numel() * p.element_size() for p in plain.values())
        assert sizes["held"] <= 0.55 * sizes["whole"], sizes
        assert saved["weights"].keys() == plain.keys() and saved["loss"] > 0
        for name, value in saved["weights"].items():
            assert torch.equal(value, plain[name]), name
