"""Capture through the TransformerLens bridge: its eager attention computes every [T, T] pattern and a
`hook_pattern` hook gathers the last row inside the forward, so no full pattern outlives its layer."""

from __future__ import annotations

from collections.abc import Callable

import torch

from featstore.extraction.capture_sink import LastTokenSink
from featstore.extraction.models import LoadedModel


def run(model: LoadedModel, tokens: torch.Tensor, sink: LastTokenSink) -> None:
    """One bridge forward with a row-gathering hook on every layer's pattern and residual output."""

    def keep_rows(layer: int) -> Callable:
        def store(pattern: torch.Tensor, hook: object) -> None:
            sink.store_rows(layer, pattern[sink.rows, :, sink.last])  # advanced indexing: a [B, H, T] copy

        return store

    def keep_resid(layer: int) -> Callable:
        return lambda residual, hook: sink.store_resid(layer, residual)

    fwd_hooks = [(f"blocks.{layer}.attn.hook_pattern", keep_rows(layer)) for layer in range(model.n_layers)]
    fwd_hooks += [(f"blocks.{layer}.hook_resid_post", keep_resid(layer)) for layer in range(model.n_layers)]
    model.bridge.run_with_hooks(
        tokens, fwd_hooks=fwd_hooks, return_type=None, attention_mask=sink.attention_mask, logits_to_keep=1
    )
