"""Where a capture strategy puts each layer's last-token attention rows and residual: one device buffer for
the whole batch (so it crosses to the host in one copy), and a record of which layers were filled. On a GPU the
copy goes into pinned host memory on a side stream, so the next batch's forward starts before it ends."""

from __future__ import annotations

from dataclasses import dataclass

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

    def to_host(self, strategy: str) -> HostCopy:
        """The filled arrays on their way to the host (synchronously off a GPU); a one-line error if the strategy
        left a layer unfilled."""
        if not self._filled.all():
            missing = [f"layer {layer}" for layer in range(self._filled.shape[1]) if not self._filled[:, layer].all()]
            raise FeatstoreError(
                f"model {self.model_key!r}: capture {strategy!r} filled no attention row or residual for "
                f"{', '.join(missing)}"
            )
        shapes = (self.attn.shape, self.resid.shape)
        if self._buffer.device.type != "cuda":
            return HostCopy(self._buffer.cpu(), shapes)
        side = _copy_stream(self._buffer.device)
        side.wait_stream(torch.cuda.current_stream(self._buffer.device))  # the forward that filled the buffer
        with torch.cuda.stream(side):
            host = torch.empty(self._buffer.shape, dtype=self._buffer.dtype, pin_memory=True)
            host.copy_(self._buffer, non_blocking=True)
            done = torch.cuda.Event()
            done.record(side)
        self._buffer.record_stream(side)  # the allocator must not hand the buffer out before the copy ends
        return HostCopy(host, shapes, done)


@dataclass
class HostCopy:
    """A batch's rows crossing to the host: `result()` waits for the copy (if any) and returns attn and resid."""

    host: torch.Tensor
    shapes: tuple[torch.Size, torch.Size]
    done: torch.cuda.Event | None = None

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self.done is not None:
            self.done.synchronize()
        flat = self.host.numpy()
        n_attn = int(np.prod(self.shapes[0]))
        return flat[:n_attn].reshape(self.shapes[0]), flat[n_attn:].reshape(self.shapes[1])


_COPY_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def _copy_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per GPU for device-to-host copies."""
    if device not in _COPY_STREAMS:
        _COPY_STREAMS[device] = torch.cuda.Stream(device)
    return _COPY_STREAMS[device]
