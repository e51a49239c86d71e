"""Capture on the model's own Hugging Face forward (SDPA attention, no [T, T] pattern kept anywhere): the
bridge's weights in the unwrapped Hugging Face model, an attention function registered in transformers'
attention interface that computes the layer's output and each example's last attention row from the queries and
keys it is given (after rotary and QK-norm) with the layer's scaling, soft-capping and mask (padding, causal,
sliding window), and a hook on each decoder layer's output for the residual. Rows equal transformers' eager
attention rows within float rounding (tested for every architecture in `DECODER_LAYERS`, those its `CAPTURES` entry
names)."""

from __future__ import annotations

import copy
import threading
import weakref

import torch
from transformers import AttentionInterface, AutoModelForCausalLM
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from featstore.extraction.capture_sink import LastTokenSink
from featstore.extraction.captures import CAPTURES
from featstore.extraction.models import LoadedModel

ATTENTION = "featstore_last_row"
SINK_KWARG = "featstore_sink"
# Where the decoder layers are, under the base model, in each architecture whose attention this file reproduces
# (its entry in `CAPTURES`; each tested against transformers' eager attention): `layers` but where named here.
_LAYER_PATHS = {"GPT2LMHeadModel": "h", "OPTForCausalLM": "decoder.layers"}
DECODER_LAYERS = {
    architecture: _LAYER_PATHS.get(architecture, "layers") for architecture in CAPTURES["last-row"].architectures
}

_UNWRAPPED: weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module] = weakref.WeakKeyDictionary()
_UNWRAPPING = threading.Lock()


def run(model: LoadedModel, tokens: torch.Tensor, sink: LastTokenSink) -> None:
    """One Hugging Face forward; the attention function and the layer hooks fill the sink."""
    unwrapped(model)(
        input_ids=tokens, attention_mask=sink.attention_mask, logits_to_keep=1, use_cache=False, **{SINK_KWARG: sink}
    )


def unwrapped(model: LoadedModel) -> torch.nn.Module:
    """The bridge's Hugging Face model without the bridge's wrappers, sharing its weights, built once per bridge."""
    with _UNWRAPPING:
        if model.bridge not in _UNWRAPPED:
            layers = DECODER_LAYERS[model.identity["architecture"]]
            _UNWRAPPED[model.bridge] = _unwrap(model.bridge.original_model, layers)
        return _UNWRAPPED[model.bridge]


def _unwrap(wrapped: torch.nn.Module, decoder_layers: str) -> torch.nn.Module:
    """A model of the same class built on the meta device, then given the wrapped model's own tensors."""
    config = copy.deepcopy(wrapped.config)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, attn_implementation=ATTENTION)
    own = {name.replace("._original_component", ""): tensor for name, tensor in wrapped.state_dict().items()}
    plain.load_state_dict({name: own[name] for name in plain.state_dict()}, strict=True, assign=True)
    buffers = {name.replace("._original_component", ""): buffer for name, buffer in wrapped.named_buffers()}
    for name, buffer in list(plain.named_buffers()):
        if buffer.is_meta:  # non-persistent buffers (rotary inverse frequencies) are not in the state dict
            owner, _, leaf = name.rpartition(".")
            plain.get_submodule(owner)._buffers[leaf] = buffers[name]
    for layer, block in enumerate(plain.base_model.get_submodule(decoder_layers)):
        block.register_forward_hook(_residual_hook(layer), with_kwargs=True)
    return plain.eval()


def _residual_hook(layer: int):
    def keep_residual(module: torch.nn.Module, args: tuple, kwargs: dict, output) -> None:
        sink = kwargs.get(SINK_KWARG)
        if sink is not None:
            sink.store_resid(layer, output[0] if isinstance(output, tuple) else output)

    return keep_residual


def _attention_keeping_last_rows(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    softcap: float | None = None,
    **kwargs,
):
    """The layer's attention output (SDPA; eager arithmetic where soft-capping rules SDPA out), plus the last
    real token's attention row of every head for the sink, computed as eager attention computes it."""
    sink: LastTokenSink | None = kwargs.pop(SINK_KWARG, None)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    if softcap is None:
        output = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    else:
        output = _softcapped_attention(query, key, value, attention_mask, scale, softcap)
    if sink is not None:
        sink.store_rows(module.layer_idx, _last_rows(query, key, attention_mask, scale, softcap, sink))
    return output


def _last_rows(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scale: float,
    softcap: float | None,
    sink: LastTokenSink,
) -> torch.Tensor:
    """softmax(softcap(q_last . K * scale)) over the keys the layer's mask lets the last real token see, in
    float32: [B, n_heads, T]. Query heads share key heads in groups (GQA/MQA)."""
    batch, n_heads, _, head_dim = query.shape
    n_kv_heads, seq_len = key.shape[1], key.shape[2]
    last_query = query[sink.rows, :, sink.last].view(batch, n_kv_heads, n_heads // n_kv_heads, head_dim)
    scores = torch.einsum("bkgd,bktd->bkgt", last_query, key).reshape(batch, n_heads, seq_len) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~_visible_keys(attention_mask, sink)[:, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1, dtype=torch.float32)


def _visible_keys(attention_mask: torch.Tensor | None, sink: LastTokenSink) -> torch.Tensor:
    """[B, T] True on the keys the last real token attends to: its row of the layer's boolean mask (padding, causal
    and sliding window in one); transformers skips the mask only when no key is padding and no window is shorter
    than the keys, and then the real keys are all of them."""
    if attention_mask is None:
        return ~sink.past_end
    return attention_mask[sink.rows, 0, sink.last]


def _softcapped_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scale: float,
    softcap: float,
) -> tuple[torch.Tensor, None]:
    """Eager attention with logit soft-capping (Gemma 2) over a boolean mask: transformers' eager arithmetic."""
    n_rep = query.shape[1] // key.shape[1]
    scores = torch.matmul(query, repeat_kv(key, n_rep).transpose(2, 3)) * scale
    scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is None:
        causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
        attention_mask = causal[None, None]
    # the most negative finite value, as eager adds: a padding query whose window holds only padding stays finite
    scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, repeat_kv(value, n_rep)).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, _attention_keeping_last_rows)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)
