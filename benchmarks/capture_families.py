"""Each model family on its default capture: max |diff| of the stored rows and residuals against plain
transformers eager attention (each example run alone, float32), and the `last-row` capture's tokens/s against
the `pattern` capture's on the same batches, at 128 and 1,024 tokens a row, measured alternately in one run.

Run: python benchmarks/capture_families.py [--families mistral-tiny gemma2-tiny] [--repeats 5]
(`random:<family>` models; the tiny ones have a 1,024-token context except random:tiny and random:llama-tiny,
which stop at 128.)
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from featstore.extraction.capture import capture_last_token, default_capture
from featstore.extraction.model_sources import parse_model_spec
from tests.test_capture_families import FAMILIES, TEXTS, eager_reference, right_pad

BATCH_TOKENS = 2048
LENGTHS = (128, 1024)


def max_differences(model) -> tuple[float, float]:
    """Max |diff| of float32 rows and residuals against transformers eager on each example alone."""
    encoded = model.encode(TEXTS)
    batch, lengths = right_pad(encoded)
    attn, resid = capture_last_token(model, batch, lengths, out_dtype=np.float32)
    reference, outputs = eager_reference(model)
    attn_diff = resid_diff = 0.0
    for row, ids in enumerate(encoded):
        with torch.inference_mode():
            output = reference(torch.as_tensor(ids[None].astype(np.int64)), output_attentions=True)
        ref_attn = np.stack([pattern[0, :, -1].numpy() for pattern in output.attentions])
        ref_resid = np.stack([outputs[layer][0, -1].numpy() for layer in range(model.n_layers)])
        attn_diff = max(attn_diff, float(np.abs(attn[row, :, :, : len(ids)] - ref_attn).max()))
        resid_diff = max(resid_diff, float(np.abs(resid[row] - ref_resid).max()))
    return attn_diff, resid_diff


def tokens_per_second(model, length: int, repeats: int) -> dict[str, float]:
    """Best-of-`repeats` tokens/s of each capture on a batch of BATCH_TOKENS // length random rows of `length`
    tokens (the last row one token shorter, so there is padding), the captures alternating."""
    rows = max(1, BATCH_TOKENS // length)
    ids = np.random.default_rng(0).integers(0, 256, (rows, length))
    lengths = np.full(rows, length)
    lengths[-1] -= 1
    best = {"last-row": np.inf, "pattern": np.inf}
    for _ in range(repeats):
        for name in best:
            started = time.perf_counter()
            capture_last_token(model, ids, lengths, strategy=name)
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: lengths.sum() / seconds for name, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=FAMILIES, help="random:<family> names")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads")
    print(
        "| family | architecture | capture | max abs diff rows | max abs diff residuals | "
        + " | ".join(f"last-row / pattern tok/s at {length}" for length in LENGTHS)
        + " |"
    )
    print("|---|---|---|---|---|" + "---|" * len(LENGTHS))
    for family in args.families:
        model = parse_model_spec(f"random:{family}").load()
        attn_diff, resid_diff = max_differences(model)
        speeds = []
        for length in LENGTHS:
            if length > model.n_ctx:
                speeds.append(f"(context {model.n_ctx})")
                continue
            rate = tokens_per_second(model, length, args.repeats)
            fast, slow = rate["last-row"], rate["pattern"]
            speeds.append(f"{fast / slow:.2f}x ({fast:.0f} vs {slow:.0f})")
        print(
            f"| random:{family} | {model.identity['architecture']} | {default_capture(model)} | {attn_diff:.1e} | "
            f"{resid_diff:.1e} | " + " | ".join(speeds) + " |",
            flush=True,
        )


if __name__ == "__main__":
    main()
