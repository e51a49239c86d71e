"""The capture strategies `featstore build --capture` accepts, in one registry: adding a strategy touches this
file and its own module (which defines `supports(model)` and `run(model, tokens, sink)`). Modules are
imported only when used, so the command line starts without torch. The fastest measured comes first: the
default for a model is the first entry that supports it."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class CaptureStrategy:
    """A capture strategy: the module implementing it and a line for --help."""

    module: str
    summary: str

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


CAPTURES: dict[str, CaptureStrategy] = {
    "last-row": CaptureStrategy(
        "featstore.extraction.capture_last_row",
        "the model's own SDPA forward, each layer's last attention row computed from the queries and keys "
        "transformers' attention interface receives, with the layer's scaling, soft-capping and mask (GPT-2, "
        "GPT-NeoX/Pythia, OPT, Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma 2, Gemma 3 text, Phi-3, OLMo-2)",
    ),
    "pattern": CaptureStrategy(
        "featstore.extraction.capture_pattern",
        "the TransformerLens bridge's eager attention, the row gathered from hook_pattern (every architecture "
        "the bridge loads; the default for all but the twelve above, e.g. Bloom, whose ALiBi biases last-row does "
        "not reproduce, and Falcon, Phi-1/2, GPT-J or mixtures of experts, untested there)",
    ),
}
