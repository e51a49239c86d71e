"""Capture on the model's own Hugging Face forward (SDPA attention, no [T, T] pattern kept anywhere): the
bridge's weights in the unwrapped Hugging Face model, an attention function that runs SDPA and computes each
example's last attention row from the layer's (rotary) queries and keys, and a hook on each decoder layer's
output for the residual. Rows equal the bridge's `hook_pattern` rows within float rounding (tested)."""

from __future__ import annotations

import copy
import threading
import weakref

import torch
from transformers import AttentionInterface, AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from featstore.extraction.capture_sink import LastTokenSink
from featstore.extraction.models import LoadedModel

ATTENTION = "featstore_last_row"
SINK_KWARG = "featstore_sink"
# The architectures whose attention this file reproduces (tested), and where their decoder layers are.
DECODER_LAYERS = {"GPT2LMHeadModel": "h", "LlamaForCausalLM": "layers"}

_UNWRAPPED: weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module] = weakref.WeakKeyDictionary()
_UNWRAPPING = threading.Lock()


def supports(model: LoadedModel) -> bool:
    """GPT-2 and Llama models (decided from the identity, so a model described without its weights answers too)."""
    return model.identity["architecture"] in DECODER_LAYERS


def run(model: LoadedModel, tokens: torch.Tensor, sink: LastTokenSink) -> None:
    """One Hugging Face forward; the attention function and the layer hooks fill the sink."""
    unwrapped(model)(input_ids=tokens, attention_mask=sink.attention_mask, logits_to_keep=1, use_cache=False,
                     **{SINK_KWARG: sink})


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
    layers = getattr(plain.base_model, decoder_layers)
    for layer, block in enumerate(layers):
        block.register_forward_hook(_residual_hook(layer), with_kwargs=True)
    return plain.eval()


def _residual_hook(layer: int):
    def keep_residual(module: torch.nn.Module, args: tuple, kwargs: dict, output) -> None:
        sink = kwargs.get(SINK_KWARG)
        if sink is not None:
            sink.store_resid(layer, output[0] if isinstance(output, tuple) else output)

    return keep_residual


def _sdpa_keeping_last_rows(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float | None = None, **kwargs):
    """Hugging Face's SDPA attention, plus softmax(q_last . K / sqrt(d)) over the real keys for the sink."""
    sink: LastTokenSink | None = kwargs.pop(SINK_KWARG, None)
    output = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    if sink is not None:
        batch, n_heads, _, head_dim = query.shape
        n_kv_heads, seq_len = key.shape[1], key.shape[2]
        scale = head_dim ** -0.5 if scaling is None else scaling
        last_query = query[sink.rows, :, sink.last].view(batch, n_kv_heads, n_heads // n_kv_heads, head_dim)
        scores = torch.einsum("bkgd,bktd->bkgt", last_query, key).reshape(batch, n_heads, seq_len) * scale
        scores = scores.masked_fill(sink.past_end[:, None, :], float("-inf"))
        sink.store_rows(module.layer_idx, torch.softmax(scores, dim=-1, dtype=torch.float32))
    return output


AttentionInterface.register(ATTENTION, _sdpa_keeping_last_rows)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)
