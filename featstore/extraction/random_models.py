"""The seeded random models `random:<arch>` names: one tiny Hugging Face config per family probed in the
literature (plus gpt2-medium's and Llama-3.2-1B's shapes), all on an offline byte-level tokenizer. Adding an
architecture is one entry in `RANDOM_CONFIGS`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

RANDOM_SEED = 0
BYTE_TOKENIZER_NAME = "byte-level BPE: 256 byte symbols, no merges, <|endoftext|>"
END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = 256  # right after the 256 byte symbols


def _gpt2_config(**overrides: Any) -> PretrainedConfig:
    from transformers import GPT2Config

    return GPT2Config(bos_token_id=END_OF_TEXT_ID, eos_token_id=END_OF_TEXT_ID, **overrides)


def _llama_config(**overrides: Any) -> PretrainedConfig:
    from transformers import LlamaConfig

    return LlamaConfig(
        bos_token_id=END_OF_TEXT_ID, eos_token_id=END_OF_TEXT_ID, pad_token_id=END_OF_TEXT_ID, **overrides
    )


def _tiny_config(model_type: str, **overrides: Any) -> PretrainedConfig:
    """A tiny config of a Hugging Face family for the byte tokenizer: 2 layers, 4 query heads sharing 2 key/value
    heads, d_model 64, context 1,024 (so captures can be timed at long prompts); `overrides` give each family its
    distinctive features."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    shape = {
        "vocab_size": END_OF_TEXT_ID + 1,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": False,
        "initializer_range": 0.2,
    }
    ids = {"bos_token_id": END_OF_TEXT_ID, "eos_token_id": END_OF_TEXT_ID, "pad_token_id": END_OF_TEXT_ID}
    named = {"architectures": [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]]}  # how the bridge picks its adapter
    return AutoConfig.for_model(model_type, **(shape | ids | named | overrides))


LLAMA_1B = dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=2048,
    rope_theta=500000.0,
    tie_word_embeddings=True,
)

# initializer_range 0.2 on the tiny models: GPT-2's 0.02 gives near-uniform attention rows
# (max weight 0.027 over 40 keys), 0.2 gives peaky ones (max weight about 0.5), so indexing bugs show.
# random:gpt2-medium keeps gpt2-medium's own config, 0.02 included.
RANDOM_CONFIGS: dict[str, Callable[[], PretrainedConfig]] = {
    "tiny": lambda: _gpt2_config(
        vocab_size=END_OF_TEXT_ID + 1, n_positions=128, n_embd=64, n_layer=2, n_head=4, initializer_range=0.2
    ),
    "gpt2-medium": lambda: _gpt2_config(
        vocab_size=50257, n_positions=1024, n_embd=1024, n_layer=24, n_head=16, initializer_range=0.02
    ),
    "llama-tiny": lambda: _llama_config(
        vocab_size=END_OF_TEXT_ID + 1,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        initializer_range=0.2,
    ),
    # One tiny model per family probed in the literature, each with what sets its attention apart; sliding windows
    # of 16 tokens, shorter than most test prompts.
    "mistral-tiny": lambda: _tiny_config("mistral", sliding_window=16),
    "qwen2-tiny": lambda: _tiny_config("qwen2", use_sliding_window=True, sliding_window=16, max_window_layers=1),
    "qwen3-tiny": lambda: _tiny_config("qwen3", head_dim=16),  # QK-norm
    "gemma-tiny": lambda: _tiny_config("gemma", head_dim=16, num_key_value_heads=1),  # multi-query
    "gemma2-tiny": lambda: _tiny_config(  # soft-capped logits, sliding and global layers alternating
        "gemma2",
        head_dim=16,
        sliding_window=16,
        attn_logit_softcapping=5.0,
        final_logit_softcapping=30.0,
        query_pre_attn_scalar=16,
    ),
    "gemma3_text-tiny": lambda: _tiny_config(  # local layers (own rotary base), then a global one; QK-norm
        "gemma3_text",
        head_dim=16,
        sliding_window=16,
        num_hidden_layers=3,
        query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
    ),
    "phi3-tiny": lambda: _tiny_config("phi3", partial_rotary_factor=0.5, sliding_window=16),
    "gpt_neox-tiny": lambda: _tiny_config("gpt_neox", rotary_pct=0.25, num_key_value_heads=4),  # partial rotary
    "olmo2-tiny": lambda: _tiny_config("olmo2"),  # QK-norm over all heads, norms after attention and MLP
    "opt-tiny": lambda: _tiny_config(
        "opt",
        ffn_dim=128,
        word_embed_proj_dim=64,
        num_key_value_heads=4,
        enable_bias=True,
    ),
    "llama-1b": lambda: _llama_config(**LLAMA_1B),  # Llama-3.2-1B's shape; its vocabulary, byte tokens
}


def byte_level_tokenizer() -> PreTrainedTokenizerBase:
    """An offline GPT-2-style tokenizer: id b is byte b, id 256 is <|endoftext|> (BOS, EOS and pad)."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    symbols = _gpt2_byte_symbols()
    vocab = {symbols[byte]: byte for byte in range(256)} | {END_OF_TEXT: END_OF_TEXT_ID}
    backend = Tokenizer(BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, unk_token=END_OF_TEXT
    )


def _gpt2_byte_symbols() -> dict[int, str]:
    """GPT-2's byte-to-printable-character table, the alphabet of the ByteLevel pre-tokenizer."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return {byte: chr(byte) for byte in printable} | {byte: chr(256 + i) for i, byte in enumerate(others)}
