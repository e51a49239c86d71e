"""The capture strategies `featstore build --capture` accepts, in one registry, `CAPTURES`: adding a strategy is
one entry here (its name, summary and the architectures it reproduces) naming the module that implements it with
`run(model, tokens, sink)`. Modules are imported only when used, so the command line starts without torch. The
fastest measured comes first: the default for a model is the first entry that supports it."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from featstore.extraction.models import LoadedModel


@dataclass(frozen=True)
class CaptureStrategy:
    """A capture strategy: the module implementing it, a line for --help, and the Hugging Face architectures it
    supports, each with its family's name for --help (None: every architecture the bridge loads)."""

    module: str
    summary: str
    architectures: Mapping[str, str] | None = None

    def supports(self, model: LoadedModel) -> bool:
        """Decided from the identity, so a model described without its weights answers too."""
        return self.architectures is None or model.identity["architecture"] in self.architectures

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


CAPTURES: dict[str, CaptureStrategy] = {
    "last-row": CaptureStrategy(
        "featstore.extraction.capture_last_row",
        "the model's own SDPA forward, each layer's last attention row computed from the queries and keys "
        "transformers' attention interface receives, with the layer's scaling, soft-capping and mask",
        {
            "GPT2LMHeadModel": "GPT-2",
            "GPTNeoXForCausalLM": "GPT-NeoX/Pythia",
            "OPTForCausalLM": "OPT",
            "LlamaForCausalLM": "Llama",
            "MistralForCausalLM": "Mistral",
            "Qwen2ForCausalLM": "Qwen2",
            "Qwen3ForCausalLM": "Qwen3",
            "GemmaForCausalLM": "Gemma",
            "Gemma2ForCausalLM": "Gemma 2",
            "Gemma3ForCausalLM": "Gemma 3 text",
            "Phi3ForCausalLM": "Phi-3",
            "Olmo2ForCausalLM": "OLMo-2",
        },
    ),
    "pattern": CaptureStrategy(
        "featstore.extraction.capture_pattern",
        "the TransformerLens bridge's eager attention, the row gathered from hook_pattern (e.g. for Bloom, whose "
        "ALiBi biases last-row does not reproduce, and Falcon, Phi-1/2, GPT-J or mixtures of experts, untested "
        "there)",
    ),
}


def capture_help() -> str:
    """Each strategy's summary and the families it covers, as the default or as a choice, for `build --help`."""
    lines, covered = [], set()
    for name, strategy in CAPTURES.items():
        if strategy.architectures is None:
            scope = "every architecture the bridge loads" + (
                f"; the default for all but the {len(covered)} above" if covered else ""
            )
        else:
            scope = ", ".join(strategy.architectures.values())
            covered |= set(strategy.architectures)
        lines.append(f"{name} ({scope}): {strategy.summary}")
    return "how attention rows are captured (default: the first that supports the model): " + "; ".join(lines)
