"""Every family on the `last-row` capture, checked against plain transformers: each example of a right-padded
batch, captured, must give the attention rows of transformers' eager attention (output_attentions=True) and the
decoder layers' outputs of that example run alone, unpadded, in a model rebuilt from the recorded config and
seed. Prompts run past the 16-token sliding windows of the families that have them."""

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from featstore.extraction.capture import capture_last_token, default_capture
from featstore.extraction.capture_last_row import DECODER_LAYERS
from featstore.extraction.captures import CAPTURES
from featstore.extraction.model_sources import parse_model_spec
from featstore.extraction.models import LoadedModel
from featstore.extraction.random_models import RANDOM_CONFIGS
from tests.test_capture import TEXTS, right_pad

WINDOW = 16  # the tiny configs' sliding window
# The tiny model of each family (the registry's full-size shapes, gpt2-medium and llama-1b, are of families that
# random:tiny and random:llama-tiny cover).
FAMILIES = [name for name in RANDOM_CONFIGS if name == "tiny" or name.endswith("-tiny")]
SLIDING = {
    "mistral-tiny": [0, 1],
    "qwen2-tiny": [1],
    "gemma2-tiny": [0],
    "gemma3_text-tiny": [0, 1],
    "phi3-tiny": [0, 1],
}  # the layers with a window
SHIPPED_IN_BF16 = ["llama-tiny", "qwen2-tiny", "qwen3-tiny", "gemma-tiny", "gemma2-tiny", "gemma3_text-tiny"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest) -> LoadedModel:
    return parse_model_spec(f"random:{request.param}").load()


def eager_reference(model: LoadedModel) -> tuple[torch.nn.Module, dict]:
    """transformers' own model with eager attention, rebuilt from the identity, and its decoder layers' outputs."""
    config = AutoConfig.for_model(**model.identity["config"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(model.identity["seed"])
        reference = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    outputs = {}
    layers = reference.base_model.get_submodule(DECODER_LAYERS[model.identity["architecture"]])
    for layer, block in enumerate(layers):
        block.register_forward_hook(
            lambda module, args, output, layer=layer: outputs.__setitem__(
                layer, output[0] if isinstance(output, tuple) else output
            )
        )
    return reference, outputs


def test_every_last_row_architecture_has_a_family_here_and_its_decoder_layers_where_named():
    """Each architecture `last-row` supports is the architecture of one of FAMILIES (so the tests below cover it),
    and `DECODER_LAYERS` leads, under its base model, to the ModuleList of its decoder layers (built on the meta
    device: no weights drawn)."""
    built = {}
    for name in FAMILIES:
        config = RANDOM_CONFIGS[name]()
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        built[type(model).__name__] = (model, config.num_hidden_layers)
    assert set(CAPTURES["last-row"].architectures) <= set(built)
    for architecture in CAPTURES["last-row"].architectures:
        model, n_layers = built[architecture]
        layers = model.base_model.get_submodule(DECODER_LAYERS[architecture])
        assert isinstance(layers, torch.nn.ModuleList) and len(layers) == n_layers, architecture


@pytest.mark.parametrize(
    "out_dtype, attn_atol, resid_rtol, resid_atol",
    [(np.float32, 1e-5, 1e-5, 1e-4), (np.float16, 1e-3, 2e-3, 1e-3)],
)
def test_last_row_matches_transformers_eager_attention_on_each_example_alone(
    family, out_dtype, attn_atol, resid_rtol, resid_atol
):
    assert default_capture(family) == "last-row"
    encoded = family.encode(TEXTS)
    batch, lengths = right_pad(encoded)
    assert lengths.max() > 4 * WINDOW
    reference, block_outputs = eager_reference(family)

    attn, resid = capture_last_token(family, batch, lengths, out_dtype=out_dtype, strategy="last-row")

    assert attn.dtype == resid.dtype == out_dtype
    for row, ids in enumerate(encoded):
        with torch.inference_mode():
            output = reference(torch.as_tensor(ids[None].astype(np.int64)), output_attentions=True)
        ref_attn = np.stack([pattern[0, :, -1].numpy() for pattern in output.attentions])
        ref_resid = np.stack([block_outputs[layer][0, -1].numpy() for layer in range(family.n_layers)])
        np.testing.assert_allclose(attn[row, :, :, : len(ids)], ref_attn, rtol=0, atol=attn_atol)
        np.testing.assert_allclose(resid[row], ref_resid, rtol=resid_rtol, atol=resid_atol)
        assert np.all(attn[row, :, :, len(ids) :] == 0)


def test_sliding_layers_see_only_their_window(family):
    """Where a layer has a window, the last token's row is 0 before it and sums to 1 inside it: the reference
    test above does compare rows of prompts longer than the window."""
    name = family.key.removeprefix("random:")
    batch, lengths = right_pad(family.encode(TEXTS))
    attn, _ = capture_last_token(family, batch, lengths, out_dtype=np.float32, strategy="last-row")
    longest = int(np.argmax(lengths))
    start = lengths[longest] - WINDOW
    for layer in range(family.n_layers):
        before = attn[longest, layer, :, :start]
        if layer in SLIDING.get(name, []):
            assert np.all(before == 0)
            np.testing.assert_allclose(attn[longest, layer, :, start:].sum(-1), 1.0, atol=1e-5)
        else:
            assert before.max() > 1e-3  # a global layer attends to the early keys


@pytest.mark.parametrize("name", SHIPPED_IN_BF16)
@pytest.mark.parametrize("how", ["bfloat16 weights", "autocast"])
def test_bfloat16_capture_stays_close_to_float32(name, how):
    """The families that ship in bf16, run in bf16 weights or under torch.autocast, stored as fp16: within bf16
    rounding of the float32 run. bf16 keeps 8 bits of mantissa, so on these peaky random weights single entries
    move by up to 0.07 (the bridge's eager attention in bf16 moves as much); the means stay far smaller."""
    fp32 = parse_model_spec(f"random:{name}").load()
    batch, lengths = right_pad(fp32.encode(TEXTS))
    attn32, resid32 = capture_last_token(fp32, batch, lengths, out_dtype=np.float32, strategy="last-row")
    if how == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            attn16, resid16 = capture_last_token(fp32, batch, lengths, out_dtype=np.float16, strategy="last-row")
    else:
        bf16 = parse_model_spec(f"random:{name}").load(dtype="bfloat16")
        attn16, resid16 = capture_last_token(bf16, batch, lengths, out_dtype=np.float16, strategy="last-row")

    assert attn16.dtype == resid16.dtype == np.float16
    attn_error = np.abs(attn16.astype(np.float32) - attn32)
    resid_error = np.abs(resid16.astype(np.float32) - resid32) / np.abs(resid32).max()
    assert attn_error.max() < 0.1 and attn_error.mean() < 1e-3
    assert resid_error.max() < 0.06 and resid_error.mean() < 1e-2
    is_pad = np.arange(batch.shape[1]) >= lengths[:, None]
    assert np.all(attn16.transpose(0, 3, 1, 2)[is_pad] == 0)
