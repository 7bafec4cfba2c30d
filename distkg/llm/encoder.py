"""Texts -> pooled LLM hidden states, doing as little LLM work as possible.

On CPU the LLM runs at the matmul limit (docs/RESULTS.md, "LLM speed"), so speed comes from doing
less: each distinct text is encoded once per weights version (a cache keyed by model name, a digest
of the trainable weights and the text), texts are batched by token length so no position is padding, and the
LM's vocabulary head is skipped (only the transformer body runs).

On a GPU the LLM is latency-bound instead (a forward call costs about the same for 30 texts as
for 3,000, and bitsandbytes dequantizes every 4-bit weight on every call), so there the texts are
sorted by length and cut into ``batch_size`` batches, each padded (on the right, to a multiple of
8) to its own longest text: one or a few calls instead of one per token length. Right padding
under a causal mask leaves every real token's hidden state unchanged, and pooling skips padding.

Pooling: the mean of the last layer's hidden states over the text's real tokens (not padding).
A causal LM's last token alone sees the whole text too, but the mean is steadier for the short
names we encode (2-10 tokens) and does not depend on where padding goes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from distkg.llm.loading import LoadedLM, partitioned

PROGRESS_TEXTS = 2048  # encodings of at least this many texts show a progress bar


# Texts per LLM forward call under ``llm.texts_per_forward: auto``. CPU: 64 (the value before ``auto``
# existed; the CPU path batches by exact token length, so batch size matters little). CUDA: thousands of entity names (<= llm.max_tokens tokens each) per call,
# so bitsandbytes dequantizes each weight once per call for many texts, not for a few dozen;
# SmolLM2-135M's activations for 4096 x 32 tokens are ~150 MB a layer.
ENCODE_BATCH = {"cpu": 64, "cuda": 4096}


def texts_per_forward(value: int | str, device: torch.device) -> int:
    """``llm.texts_per_forward`` on ``device``: the value given, or ENCODE_BATCH of the device type."""
    return ENCODE_BATCH.get(device.type, ENCODE_BATCH["cpu"]) if value == "auto" else int(value)


@dataclass
class EncoderStats:
    texts_encoded: int = 0
    cache_hits: int = 0
    tokens: int = 0  # real tokens run through the LM
    padded_tokens: int = 0  # real + padding positions run through the LM
    forward_calls: int = 0

    @property
    def padding_share(self) -> float:
        return 1 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0


def length_batches(texts: list[str], lengths: list[int], batch_size: int) -> list[list[str]]:
    """Batches of texts with the same token length (no padding at all), at most batch_size each.
    Entity names are 1-15 tokens, so even sorted batches of mixed lengths waste a third on padding."""
    by_length: dict[int, list[str]] = {}
    for text, n in zip(texts, lengths):
        by_length.setdefault(n, []).append(text)
    return [group[b : b + batch_size] for n in sorted(by_length) for group in [by_length[n]]
            for b in range(0, len(group), batch_size)]


def sorted_batches(texts: list[str], lengths: list[int], batch_size: int) -> list[list[str]]:
    """Texts sorted by token length, cut into batches of at most batch_size (the GPU path: few calls,
    each padded only to its own longest text)."""
    ordered = [t for _, t in sorted(zip(lengths, texts), key=lambda pair: pair[0])]
    return [ordered[b : b + batch_size] for b in range(0, len(ordered), batch_size)]


def transformer_body(model: torch.nn.Module) -> torch.nn.Module:
    """The model without its vocabulary head (works for plain and peft-wrapped causal LMs)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.base_model


@dataclass
class TextEncoder:
    lm: LoadedLM
    max_tokens: int = 32
    batch_size: int = 64
    stats: EncoderStats = field(default_factory=EncoderStats)
    exact_lengths: bool | None = None  # one length per call (CPU); None: so on every device but CUDA
    progress: bool = False  # a bar (rate, ETA) while encoding thousands of texts (llm.progress)
    _cache: dict = field(default_factory=dict, repr=False)
    _version: str | None = field(default=None, repr=False)
    _updates: int = field(default=0, repr=False)

    def weights_version(self) -> str:
        """Digest of the trainable weights (LoRA adapters), computed once per ``mark_updated``."""
        if self._version is None:
            self._version = self._digest()
        return self._version

    def mark_updated(self) -> None:
        """Call after the LM's weights change (an optimiser step, loading an adapter)."""
        self._version = None
        self._updates += 1

    def _digest(self) -> str:
        """The trainable weights' digest; under ZeRO-3 the count of updates instead: each rank holds
        only a partition, and a digest of it could stay put on one rank while it moves on another,
        which would send the ranks' forward calls (collectives there) out of step."""
        if partitioned(self.lm.model.parameters()):
            return f"update-{self._updates}"
        trainable = [(name, p) for name, p in self.lm.model.named_parameters() if p.requires_grad]
        h = hashlib.sha1(self.lm.name.encode())
        for name, p in trainable:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def __post_init__(self) -> None:
        if self.exact_lengths is None:
            self.exact_lengths = self.lm.device.type != "cuda"

    def _batches(self, texts: list[str], batch_size: int) -> list[list[str]]:
        """Forward-call batches: one token length each (CPU), or length-sorted and padded (GPU)."""
        cut = length_batches if self.exact_lengths else sorted_batches
        return cut(texts, self._lengths(texts), max(batch_size, 1))

    def _run(self, texts: list[str]) -> torch.Tensor:
        """One padded batch through the transformer body; mean-pooled [n, hidden] (fp32)."""
        batch = self.lm.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt",
                                  pad_to_multiple_of=None if self.exact_lengths else 8, padding_side="right")
        batch = {k: v.to(self.lm.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        out = transformer_body(self.lm.model)(**batch)
        hidden = out.last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        self.stats.forward_calls += 1
        self.stats.tokens += int(batch["attention_mask"].sum())
        self.stats.padded_tokens += int(batch["attention_mask"].numel())
        self.stats.texts_encoded += len(texts)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def encode_padded(self, texts: list[str]) -> torch.Tensor:
        """All ``texts`` in ONE padded forward call, with gradients: a training step pays the
        per-call overhead (4-bit weights dequantized per call) once instead of once per length."""
        return self._run(texts)

    def _lengths(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.lm.tokenizer(texts, truncation=True, max_length=self.max_tokens)["input_ids"]]

    def encode(self, texts: list[str], grad: bool = False) -> torch.Tensor:
        """Pooled hidden states of ``texts`` (in order).

        With grad (fine-tuning): no cache. On CPU still one forward per token length, because one
        padded batch of names (mostly 3-6 tokens, a few up to ``max_tokens``) is ~85% padding and
        the backward pass pays for padding again; on a GPU one length-sorted padded call.
        """
        if grad:
            distinct = sorted(set(texts))
            out: dict[str, torch.Tensor] = {}
            for chunk in self._batches(distinct, len(distinct)):
                out.update(zip(chunk, self._run(chunk)))
            return torch.stack([out[t] for t in texts])
        version = self.weights_version()
        missing = sorted({t for t in texts if (version, t) not in self._cache})
        self.stats.cache_hits += len(texts) - len(missing)
        if missing:
            bar = tqdm(total=len(missing), desc="LLM encoding", unit="text", mininterval=5, leave=False,
                       disable=not self.progress or len(missing) < PROGRESS_TEXTS)
            # not in inference mode under ZeRO-3, also when the caller is: DeepSpeed sets the weights'
            # data inside the forward call, and data made in inference mode cannot be saved for a
            # later training step's backward (RuntimeError "Inference tensors cannot be saved")
            with torch.inference_mode(not partitioned(self.lm.model.parameters())), torch.no_grad():
                for chunk in self._batches(missing, self.batch_size):
                    for text, vec in zip(chunk, self._run(chunk).cpu()):
                        self._cache[(version, text)] = vec
                    bar.update(len(chunk))
            bar.close()
        return torch.stack([self._cache[(version, t)] for t in texts]).to(self.lm.device)

    def remember(self, texts: list[str], vecs: torch.Tensor) -> None:
        """Take pooled states computed elsewhere (distkg.llm.features' disk cache) as this weights
        version's encodings of ``texts``."""
        version = self.weights_version()
        for text, vec in zip(texts, vecs.float().cpu()):
            self._cache[(version, text)] = vec

    def clear(self) -> None:
        self._cache.clear()
