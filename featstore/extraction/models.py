"""A loaded language model: its TransformerBridge, tokenizer and JSON identity, finished from what a model source
booted (`model_sources.py` parses `--model` specs and boots them). torch is imported on use, so the command line
starts without it."""

from __future__ import annotations

import gc
import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from featstore.errors import FeatstoreError

if TYPE_CHECKING:
    import torch
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedTokenizerBase

DTYPES = ("float32", "float16", "bfloat16")


class ModelLoadError(FeatstoreError):
    """A model spec that could not be turned into a loaded model, explained in one line."""


@dataclass
class LoadedModel:
    """A TransformerBridge ready for inference, its tokenizer, and a JSON identity for the store."""

    key: str
    bridge: TransformerBridge
    tokenizer: PreTrainedTokenizerBase
    identity: dict
    device: torch.device
    n_layers: int
    n_heads: int
    d_model: int
    n_ctx: int
    prepend_bos: bool
    bos_token_id: int | None

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids (int32) of each text, BOS prepended per the model's policy, no truncation, no padding."""
        if isinstance(texts, str):
            raise FeatstoreError("encode expects a sequence of texts, got a single string")
        encoded = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        prefix = [self.bos_token_id] if self.prepend_bos else []
        return [np.asarray(prefix + ids, dtype=np.int32) for ids in encoded]


@dataclass
class Booted:
    """What a model source boots: the bridge and what identifies its weights."""

    bridge: TransformerBridge
    name: str
    source: dict
    tokenizer_name: str


def release_model(model: LoadedModel) -> None:
    """Drop the model's references to its weights and free the memory they held."""
    import torch

    model.bridge = None  # type: ignore[assignment]
    model.tokenizer = None  # type: ignore[assignment]
    gc.collect()
    if model.device.type == "cuda":
        torch.cuda.empty_cache()


def resolve_device(device: str) -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` as a torch device that exists here, else a one-line error."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ModelLoadError(f"unknown device {device!r}: use auto, cpu or cuda") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ModelLoadError(f"unsupported device {device!r}: use auto, cpu or cuda")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available here: use cpu or auto")
    return resolved


def resolve_dtype(dtype: str) -> torch.dtype:
    """One of `DTYPES` as a torch dtype, else a one-line error."""
    import torch

    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def finish_loading(key: str, booted: Booted, device: torch.device, dtype: str) -> LoadedModel:
    """Put the bridge in eval mode and describe it. Its weights keep requires_grad=True: captures run under
    torch.inference_mode (no graph either way), and with requires_grad=False whole forwards ran 25-30% slower on
    CPU (smollm2-135m and gpt2-medium, bridge and plain model alike, torch 2.13; the cause is not pinned down)."""
    import torch
    import transformers

    bridge = booted.bridge.eval()
    tokenizer = bridge.tokenizer
    cfg = bridge.cfg
    bos_token_id = tokenizer.bos_token_id
    prepend_bos = bool(getattr(cfg, "default_prepend_bos", True)) and bos_token_id is not None
    identity = {
        "key": key,
        "name": booted.name,
        **booted.source,
        "architecture": cfg.architecture,
        "n_layers": int(cfg.n_layers),
        "n_heads": int(cfg.n_heads),
        "n_key_value_heads": int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads),
        "d_model": int(cfg.d_model),
        "n_ctx": int(cfg.n_ctx),
        "d_vocab": int(cfg.d_vocab),
        "dtype": dtype,
        "tokenizer": {
            "name": booted.tokenizer_name,
            "class": type(tokenizer).__name__,
            "vocab_size": len(tokenizer),
        },
        "prepend_bos": prepend_bos,
        "bos_token_id": bos_token_id,
        "numerics": "raw",
        "transformer_lens": importlib.metadata.version("transformer-lens"),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    return LoadedModel(
        key=key,
        bridge=bridge,
        tokenizer=tokenizer,
        identity=identity,
        device=device,
        n_layers=identity["n_layers"],
        n_heads=identity["n_heads"],
        d_model=identity["d_model"],
        n_ctx=identity["n_ctx"],
        prepend_bos=prepend_bos,
        bos_token_id=bos_token_id,
    )
