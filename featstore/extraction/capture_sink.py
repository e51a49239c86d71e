"""Where a capture strategy puts each layer's last-token attention rows and residual: one device buffer for
the whole batch (so it crosses to the host in one copy), and a record of which layers were filled."""

from __future__ import annotations

import numpy as np
import torch

from featstore.errors import FeatstoreError
from featstore.extraction.models import LoadedModel


class LastTokenSink:
    """attn [B, n_layers, n_heads, T] and resid [B, n_layers, d_model] for a batch whose example i ends at
    position lengths[i] - 1 (`last`), filled by `store_rows` and `store_resid` once per layer."""

    def __init__(self, model: LoadedModel, lengths: torch.Tensor, seq_len: int, dtype: torch.dtype):
        batch_size, n_layers = len(lengths), model.n_layers
        self.model_key = model.key
        self.rows = torch.arange(batch_size, device=lengths.device)
        self.last = lengths - 1
        self.past_end = torch.arange(seq_len, device=lengths.device)[None, :] >= lengths[:, None]  # [B, T] pad keys
        self.attention_mask = (~self.past_end).long()  # what the model is given: 1 on real tokens
        n_attn = batch_size * n_layers * model.n_heads * seq_len
        self._buffer = torch.empty(n_attn + batch_size * n_layers * model.d_model, dtype=dtype, device=lengths.device)
        self.attn = self._buffer[:n_attn].view(batch_size, n_layers, model.n_heads, seq_len)
        self.resid = self._buffer[n_attn:].view(batch_size, n_layers, model.d_model)
        self._filled = np.zeros((2, n_layers), dtype=bool)

    def store_rows(self, layer: int, rows: torch.Tensor) -> None:
        """Keep layer `layer`'s last-token attention rows [B, n_heads, T]."""
        self.attn[:, layer] = rows
        self._filled[0, layer] = True

    def store_resid(self, layer: int, residual: torch.Tensor) -> None:
        """Keep the last real position of layer `layer`'s residual stream output [B, T, d_model]."""
        self.resid[:, layer] = residual[self.rows, self.last]  # advanced indexing: a [B, D] copy
        self._filled[1, layer] = True

    def to_host(self, strategy: str) -> tuple[np.ndarray, np.ndarray]:
        """The filled arrays as numpy; a one-line error if the strategy left a layer unfilled."""
        if not self._filled.all():
            missing = [f"layer {layer}" for layer in range(self._filled.shape[1]) if not self._filled[:, layer].all()]
            raise FeatstoreError(
                f"model {self.model_key!r}: capture {strategy!r} filled no attention row or residual for "
                f"{', '.join(missing)}"
            )
        host = self._buffer.cpu().numpy()
        n_attn = self.attn.numel()
        return host[:n_attn].reshape(self.attn.shape), host[n_attn:].reshape(self.resid.shape)
