"""Run one right-padded batch through the model and keep only the last real token's attention rows and
residual stream: one interface, `capture_last_token`, over the strategies registered in `captures.CAPTURES`.

A strategy fills a `LastTokenSink` layer by layer. Every strategy must give what the bridge's
`hook_pattern`/`hook_resid_post` give on each example run alone (tests/test_capture.py checks each one against
that reference and against transformers).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from featstore.errors import FeatstoreError
from featstore.extraction.capture_sink import HostCopy, LastTokenSink
from featstore.extraction.captures import CAPTURES
from featstore.extraction.models import LoadedModel

OUT_DTYPES = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32}


def default_capture(model: LoadedModel) -> str:
    """The first registered strategy that supports the model (the fastest measured first)."""
    return next(name for name, strategy in CAPTURES.items() if strategy.supports(model))


def check_capture(model: LoadedModel, name: str | None) -> str:
    """`name` if it is a strategy that supports the model (None: `default_capture(model)`), else a one-line
    error naming what would."""
    if name is None:
        return default_capture(model)
    if name not in CAPTURES:
        raise FeatstoreError(f"unknown capture {name!r}: use one of {', '.join(CAPTURES)}")
    if not CAPTURES[name].supports(model):
        raise FeatstoreError(
            f"capture {name!r} does not support model {model.key!r} (architecture "
            f"{model.identity['architecture']}): use --capture {default_capture(model)}"
        )
    return name


def capture_last_token(
    model: LoadedModel,
    input_ids: np.ndarray,
    lengths: np.ndarray,
    out_dtype: npt.DTypeLike = np.float16,
    strategy: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run one right-padded batch [B, T] (lengths[i] real tokens each, the rest pad) and return
    attn [B, n_layers, n_heads, T] (each example's attention row at query position lengths[i]-1, over all T keys;
    keys >= lengths[i] are exactly 0) and resid [B, n_layers, d_model] (hook_resid_post at position lengths[i]-1
    for every layer). `strategy` names a `CAPTURES` entry (default: `default_capture(model)`)."""
    return launch_capture(model, input_ids, lengths, out_dtype, strategy).result()


def launch_capture(
    model: LoadedModel,
    input_ids: np.ndarray,
    lengths: np.ndarray,
    out_dtype: npt.DTypeLike = np.float16,
    strategy: str | None = None,
) -> HostCopy:
    """`capture_last_token` without waiting for the rows to reach the host (on a GPU the copy overlaps whatever
    runs next; elsewhere it is done on return)."""
    input_ids, lengths = np.asarray(input_ids), np.asarray(lengths)
    torch_dtype = _check_inputs(model, input_ids, lengths, out_dtype)
    name = check_capture(model, strategy)
    with torch.inference_mode():
        tokens, real_lengths = (_to_device(values, model.device) for values in (input_ids, lengths))
        sink = LastTokenSink(model, real_lengths, tokens.shape[1], torch_dtype)
        CAPTURES[name].load().run(model, tokens, sink)
        return sink.to_host(name)


def _to_device(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """`values` as a long tensor on `device`; to a GPU through pinned memory without waiting: a plain copy from
    pageable memory waits for everything queued on the stream (the previous batch's forward), so the next batch's
    kernels could not be queued while the GPU still ran the last ones."""
    host = torch.as_tensor(values, dtype=torch.long)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


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
            f"token ids must lie in 0..{d_vocab - 1} for model {model.key!r}, got {input_ids.min()}..{input_ids.max()}"
        )
    return OUT_DTYPES[np.dtype(out_dtype)]
