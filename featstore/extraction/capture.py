"""Run one right-padded batch through the bridge and keep only the last real token's attention rows
and residual stream, gathered inside forward hooks so no full [T, T] pattern outlives its layer."""

from __future__ import annotations

from typing import Callable

import numpy as np
import numpy.typing as npt
import torch

from featstore.errors import FeatstoreError
from featstore.extraction.models import LoadedModel

OUT_DTYPES = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32}


def capture_last_token(
    model: LoadedModel, input_ids: np.ndarray, lengths: np.ndarray, out_dtype: npt.DTypeLike = np.float16
) -> tuple[np.ndarray, np.ndarray]:
    """Run one right-padded batch [B, T] (lengths[i] real tokens each, the rest pad) and return
    attn [B, n_layers, n_heads, T] (each example's attention row at query position lengths[i]-1, over all T keys;
    keys >= lengths[i] are exactly 0) and resid [B, n_layers, d_model] (hook_resid_post at position lengths[i]-1
    for every layer)."""
    input_ids, lengths = np.asarray(input_ids), np.asarray(lengths)
    torch_dtype = _check_inputs(model, input_ids, lengths, out_dtype)
    batch_size, seq_len = input_ids.shape
    n_layers, n_heads, d_model, device = model.n_layers, model.n_heads, model.d_model, model.device
    with torch.inference_mode():
        tokens = torch.as_tensor(input_ids, dtype=torch.long, device=device)
        real_lengths = torch.as_tensor(lengths, dtype=torch.long, device=device)
        attention_mask = (torch.arange(seq_len, device=device) < real_lengths[:, None]).long()
        rows = torch.arange(batch_size, device=device)
        last = real_lengths - 1
        n_attn = batch_size * n_layers * n_heads * seq_len
        # One buffer for both outputs, so the batch crosses to the host in one copy.
        buffer = torch.empty(n_attn + batch_size * n_layers * d_model, dtype=torch_dtype, device=device)
        attn = buffer[:n_attn].view(batch_size, n_layers, n_heads, seq_len)
        resid = buffer[n_attn:].view(batch_size, n_layers, d_model)
        fired = np.zeros((2, n_layers), dtype=bool)

        def keep_pattern_row(layer: int) -> Callable:
            def store_row(pattern: torch.Tensor, hook: object) -> None:
                attn[:, layer] = pattern[rows, :, last]  # advanced indexing: a [B, H, T] copy
                fired[0, layer] = True

            return store_row

        def keep_resid(layer: int) -> Callable:
            def store_position(residual: torch.Tensor, hook: object) -> None:
                resid[:, layer] = residual[rows, last]  # advanced indexing: a [B, D] copy
                fired[1, layer] = True

            return store_position

        fwd_hooks = [(f"blocks.{layer}.attn.hook_pattern", keep_pattern_row(layer)) for layer in range(n_layers)]
        fwd_hooks += [(f"blocks.{layer}.hook_resid_post", keep_resid(layer)) for layer in range(n_layers)]
        model.bridge.run_with_hooks(
            tokens, fwd_hooks=fwd_hooks, return_type=None, attention_mask=attention_mask, logits_to_keep=1
        )
        if not fired.all():
            missing = [f"layer {layer}" for layer in range(n_layers) if not fired[:, layer].all()]
            raise FeatstoreError(
                f"model {model.key!r}: hook_pattern/hook_resid_post did not fire for {', '.join(missing)}"
            )
        host = buffer.cpu().numpy()
    return host[:n_attn].reshape(attn.shape), host[n_attn:].reshape(resid.shape)


def _check_inputs(
    model: LoadedModel, input_ids: np.ndarray, lengths: np.ndarray, out_dtype: npt.DTypeLike
) -> torch.dtype:
    """Refuse a batch the capture cannot run faithfully, with a one-line reason; return the output torch dtype."""
    if np.dtype(out_dtype) not in OUT_DTYPES:
        raise FeatstoreError(f"out_dtype must be float16 or float32, got {np.dtype(out_dtype)}")
    if input_ids.ndim != 2 or 0 in input_ids.shape:
        raise FeatstoreError(f"input_ids must be a non-empty [batch, tokens] array, got shape {input_ids.shape}")
    if not np.issubdtype(input_ids.dtype, np.integer):
        raise FeatstoreError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    batch_size, seq_len = input_ids.shape
    if lengths.shape != (batch_size,):
        raise FeatstoreError(
            f"lengths must have shape ({batch_size},) to match input_ids {input_ids.shape}, got {lengths.shape}"
        )
    if not np.issubdtype(lengths.dtype, np.integer):
        raise FeatstoreError(f"lengths must be integers, got dtype {lengths.dtype}")
    if lengths.min() < 1 or lengths.max() > seq_len:
        raise FeatstoreError(
            f"lengths must lie in 1..{seq_len} (the padded width), got {lengths.min()}..{lengths.max()}"
        )
    if seq_len > model.n_ctx:
        raise FeatstoreError(
            f"batch is {seq_len} tokens wide but model {model.key!r} takes at most n_ctx={model.n_ctx}"
        )
    d_vocab = int(model.identity["d_vocab"])
    if input_ids.min() < 0 or input_ids.max() >= d_vocab:
        raise FeatstoreError(
            f"token ids must lie in 0..{d_vocab - 1} for model {model.key!r}, "
            f"got {input_ids.min()}..{input_ids.max()}"
        )
    return OUT_DTYPES[np.dtype(out_dtype)]
