"""The one owner of a process's device and dtypes: everything else is handed the resolved values.

Why one owner: the device used to be decided by two config keys and re-guessed from
``torch.cuda.is_available()`` or from where some weights happened to live in half a dozen
places, with three separate "bf16 on GPU" rules; on a GPU they disagreed (queries built on the
CPU, a model on cuda:0). ``placement(cfg)`` resolves, once per process and config:

  device           where KG models train and every evaluation scores (``train.device``)
  mixed_precision  Accelerate's autocast for training: auto is bf16 on CUDA, none on CPU (bf16
                   matmuls are several times slower than fp32 on the CPUs we run on)
  llm_device       where the LLM teacher runs (``llm.device``)
  llm_dtype        the LLM's weights and 4-bit compute dtype: bf16 on CUDA, fp32 on CPU
  on_cuda and the LLM's batch sizes (distkg.llm.encoder.texts_per_forward) are derived from these, never
  from the weights.

``cuda`` resolves to the GPU this process was given: Ray Train and Accelerate name it in
ACCELERATE_TORCH_DEVICE, torchrun in LOCAL_RANK; a Ray actor sees only its own GPU (cuda:0).
Asking for ``cuda`` where torch sees none is a configuration error, not a silent CPU run.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

import torch

from distkg.config import RunConfig
from distkg.errors import ConfigError

log = logging.getLogger("distkg")

CPU = torch.device("cpu")


def process_group() -> tuple[int, int]:
    """(rank, world size) of this process: the torch process group's (Ray Train initializes it before
    the work starts), else torchrun's RANK / WORLD_SIZE (set before Accelerate initializes it), else (0, 1).
    Only rank 0 writes a run folder."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def release_shm_buffer() -> None:
    """Unlink this rank's name of DeepSpeed's CPU all-reduce buffer, once every rank of the group has
    mapped every buffer (a barrier, after DeepSpeed's communication started). DeepSpeed creates
    /dev/shm/deepspeed_allreduce_buffer_UID_ADDR_PORT_RANK (69 MB of memory) when all ranks are on one
    node (LOCAL_SIZE equals the world size) and never unlinks it: each run left its buffers behind
    (5.6 GB of this machine's memory after a day of tests). The mappings stay valid; the memory goes
    with the group's last process, also after a crash."""
    import torch.distributed as dist

    if not dist.is_initialized() or os.environ.get("LOCAL_SIZE") != str(dist.get_world_size()):
        return
    dist.barrier()
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{dist.get_rank()}")
    try:
        os.unlink(os.path.join("/dev/shm", name))
    except FileNotFoundError:
        pass


def memory_bytes(device: torch.device | str) -> int:
    """The memory a process on ``device`` can count on: a GPU's total memory, or the machine's RAM
    bounded by this container's cgroup limit (a container sees the host's RAM in /proc/meminfo)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)  # "cuda": the current device
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                limit = f.read().strip()
        except OSError:
            continue
        if limit.isdigit():
            total = min(total, int(limit))
    return total


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """Whether torch sees a CUDA device; asked once per process (the only such question in distkg)."""
    return torch.cuda.is_available()


def _cuda_index() -> int:
    named = os.environ.get("ACCELERATE_TORCH_DEVICE", "")
    if named.startswith("cuda:"):
        return int(named.split(":", 1)[1])
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    return local if local < torch.cuda.device_count() else 0


def resolve_device(choice: str, key: str) -> torch.device:
    """``auto`` / ``cpu`` / ``cuda`` (the value of config key ``key``) -> this process's device."""
    if choice == "cpu":
        return CPU
    if choice not in ("auto", "cuda"):
        raise ConfigError(f"{key}: {choice!r} is not one of 'auto', 'cpu', 'cuda'")
    if not cuda_available():
        if choice == "cuda":
            raise ConfigError(f"{key}=cuda, but torch sees no CUDA device on this machine "
                              f"(torch {torch.__version__}); set {key}=auto or cpu")
        return CPU
    return torch.device("cuda", _cuda_index())


def compute_dtype(device: torch.device) -> torch.dtype:
    """The LLM's dtype on ``device``: bf16 on CUDA, fp32 on CPU (bf16 matmuls are ~6x slower there)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def inference_dtype(choice: str, on_cuda: bool, quantized: bool) -> torch.dtype:
    """DeepSpeed inference's dtype (``runtime.dtype``); auto: bf16 for an unquantized LM on CUDA, fp32
    otherwise (a bitsandbytes 4-bit model computes in its own compute dtype, and a cast would only widen
    its norms). When the engine wraps an actor's LM: distkg.runtime.pool.deepspeed_skipped."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(choice)
    return dtype if dtype is not None else (torch.bfloat16 if on_cuda and not quantized else torch.float32)


def as_device(device: torch.device | str, key: str = "llm.device") -> torch.device:
    """A resolved device, or a config value (auto/cpu/cuda) resolved here."""
    return device if isinstance(device, torch.device) else resolve_device(device, key)


@dataclass(frozen=True)
class Placement:
    """Where and in which precision this process computes (module docstring)."""

    device: torch.device
    mixed_precision: str  # Accelerate's: "no", "bf16" or "fp16"
    llm_device: torch.device
    llm_dtype: torch.dtype

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def llm_on_cuda(self) -> bool:
        return self.llm_device.type == "cuda"


@functools.lru_cache(maxsize=None)
def _resolve(train_device: str, mixed_precision: str, llm_device: str) -> Placement:
    device = resolve_device(train_device, "train.device")
    precision = mixed_precision if mixed_precision != "auto" else ("bf16" if device.type == "cuda" else "no")
    lm = resolve_device(llm_device, "llm.device")
    resolved = Placement(device=device, mixed_precision=precision, llm_device=lm, llm_dtype=compute_dtype(lm))
    log.info("device: training and evaluation on %s (mixed precision %s), LLM on %s (%s)", device, precision, lm,
             str(resolved.llm_dtype).removeprefix("torch."))
    return resolved


def placement(cfg: RunConfig) -> Placement:
    """The device and dtypes of ``cfg`` in this process (resolved once per distinct setting)."""
    return _resolve(cfg.train.device, cfg.train.mixed_precision, cfg.llm.device)
