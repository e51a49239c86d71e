"""The correctness test of extraction: a right-padded batch captured with hooks must give, for every
example, layer and head, what the same model gives on that example alone, unpadded."""

import dataclasses

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from featstore.errors import FeatstoreError
from featstore.extraction import capture_last_row
from featstore.extraction.capture import capture_last_token, check_capture, default_capture
from featstore.extraction.captures import CAPTURES, capture_help
from featstore.extraction.model_sources import parse_model_spec
from featstore.extraction.models import LoadedModel

TEXTS = [
    "a",
    "Paris is the capital of",
    "The quick brown fox jumps over the lazy dog, then naps in the sun for an hour or two.",
    "ok?",
    "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich",
]
PAD_ID = 256  # <|endoftext|> of the random models' byte tokenizer


@pytest.fixture(scope="module", params=["random:tiny", "random:llama-tiny"])
def model(request: pytest.FixtureRequest) -> LoadedModel:
    return parse_model_spec(request.param).load()


@pytest.fixture(params=list(CAPTURES))
def capture(request: pytest.FixtureRequest) -> str:
    """Every registered capture strategy (each supports GPT-2 and Llama)."""
    return request.param


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return parse_model_spec("random:tiny").load()


def right_pad(encoded: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The examples as one batch padded on the right with PAD_ID, and their lengths."""
    lengths = np.array([len(ids) for ids in encoded])
    batch = np.full((len(encoded), lengths.max()), PAD_ID, dtype=np.int64)
    for row, ids in enumerate(encoded):
        batch[row, : len(ids)] = ids
    return batch, lengths


def run_alone(model: LoadedModel, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Last-token pattern rows [L, H, len] and resid_post [L, D] of one unpadded example, via run_with_cache."""
    with torch.inference_mode():
        _, cache = model.bridge.run_with_cache(torch.as_tensor(ids[None].astype(np.int64)))
    attn = np.stack([cache[f"blocks.{layer}.attn.hook_pattern"][0, :, -1].numpy() for layer in range(model.n_layers)])
    resid = np.stack([cache[f"blocks.{layer}.hook_resid_post"][0, -1].numpy() for layer in range(model.n_layers)])
    return attn, resid


@pytest.mark.parametrize(
    "out_dtype, attn_atol, resid_rtol, resid_atol",
    [(np.float32, 1e-5, 1e-5, 1e-4), (np.float16, 2e-3, 1e-2, 1e-2)],
)
def test_batch_matches_each_example_run_alone(model, capture, out_dtype, attn_atol, resid_rtol, resid_atol):
    encoded = model.encode(TEXTS)
    batch, lengths = right_pad(encoded)
    assert len(set(lengths)) == len(TEXTS)  # very different lengths, one of them the full width

    attn, resid = capture_last_token(model, batch, lengths, out_dtype=out_dtype, strategy=capture)

    assert attn.shape == (len(TEXTS), model.n_layers, model.n_heads, batch.shape[1])
    assert resid.shape == (len(TEXTS), model.n_layers, model.d_model)
    assert attn.dtype == out_dtype and resid.dtype == out_dtype
    for row, ids in enumerate(encoded):
        ref_attn, ref_resid = run_alone(model, ids)
        np.testing.assert_allclose(attn[row, :, :, : len(ids)], ref_attn, rtol=0, atol=attn_atol)
        np.testing.assert_allclose(resid[row], ref_resid, rtol=resid_rtol, atol=resid_atol)
        assert np.all(attn[row, :, :, len(ids) :] == 0)


def test_rows_are_distributions_over_real_keys_and_not_uniform(model, capture):
    batch, lengths = right_pad(model.encode(TEXTS))
    attn, _ = capture_last_token(model, batch, lengths, out_dtype=np.float32, strategy=capture)
    np.testing.assert_allclose(attn.sum(-1), 1.0, atol=1e-5)
    longest = int(np.argmax(lengths))
    assert attn[longest].max(-1).mean() > 3 / lengths[longest]  # peaky enough for indexing bugs to show


def test_padding_ids_do_not_change_the_capture(model, capture):
    batch, lengths = right_pad(model.encode(TEXTS))
    garbage = batch.copy()
    is_pad = np.arange(batch.shape[1]) >= lengths[:, None]
    garbage[is_pad] = np.random.default_rng(0).integers(0, 256, is_pad.sum())

    attn, resid = capture_last_token(model, batch, lengths, out_dtype=np.float32, strategy=capture)
    attn_garbage, resid_garbage = capture_last_token(model, garbage, lengths, out_dtype=np.float32, strategy=capture)

    np.testing.assert_allclose(attn_garbage, attn, rtol=0, atol=1e-6)
    np.testing.assert_allclose(resid_garbage, resid, rtol=1e-6, atol=1e-5)


def test_attention_mask_from_lengths_reaches_the_model(tiny, capture):
    batch, lengths = right_pad(tiny.encode(TEXTS))
    seen = {}

    def record(module, args, kwargs):
        seen["attention_mask"] = kwargs.get("attention_mask")

    runs = {"pattern": tiny.bridge.original_model, "last-row": capture_last_row.unwrapped(tiny)}[capture]
    handle = runs.register_forward_pre_hook(record, with_kwargs=True)
    try:
        capture_last_token(tiny, batch, lengths, strategy=capture)
    finally:
        handle.remove()

    assert seen["attention_mask"] is not None
    expected = np.arange(batch.shape[1]) < lengths[:, None]
    np.testing.assert_array_equal(seen["attention_mask"].cpu().numpy().astype(bool), expected)


def test_matches_a_plain_hugging_face_model_rebuilt_from_the_identity(tiny, capture):
    """An independent reference: transformers itself, rebuilt from the recorded config and seed."""
    config = AutoConfig.for_model(**tiny.identity["config"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tiny.identity["seed"])
        reference = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    block_outputs = {}
    for layer, block in enumerate(reference.transformer.h):
        block.register_forward_hook(lambda module, args, output, layer=layer: block_outputs.__setitem__(layer, output))
    encoded = tiny.encode(TEXTS)
    batch, lengths = right_pad(encoded)

    attn, resid = capture_last_token(tiny, batch, lengths, out_dtype=np.float32, strategy=capture)

    for row, ids in enumerate(encoded):
        with torch.inference_mode():
            output = reference(torch.as_tensor(ids[None].astype(np.int64)), output_attentions=True)
        ref_attn = np.stack([pattern[0, :, -1].numpy() for pattern in output.attentions])
        ref_resid = np.stack([block_outputs[layer][0, -1].numpy() for layer in range(tiny.n_layers)])
        np.testing.assert_allclose(attn[row, :, :, : len(ids)], ref_attn, rtol=0, atol=1e-5)
        np.testing.assert_allclose(resid[row], ref_resid, rtol=1e-5, atol=1e-4)


def test_bfloat16_model_stays_close_to_float32(tiny, capture):
    bf16 = parse_model_spec("random:tiny").load(dtype="bfloat16")
    batch, lengths = right_pad(tiny.encode(TEXTS))

    attn32, resid32 = capture_last_token(tiny, batch, lengths, out_dtype=np.float32, strategy=capture)
    attn16, resid16 = capture_last_token(bf16, batch, lengths, out_dtype=np.float32, strategy=capture)

    np.testing.assert_allclose(attn16, attn32, rtol=0, atol=5e-2)
    np.testing.assert_allclose(resid16, resid32, rtol=5e-2, atol=1e-1)
    is_pad = np.arange(batch.shape[1]) >= lengths[:, None]
    assert np.all(attn16.transpose(0, 3, 1, 2)[is_pad] == 0)


@pytest.mark.parametrize(
    "ids, lengths, message",
    [
        (np.zeros((2, 4), np.int64), np.array([0, 4]), "lengths must lie in 1..4"),
        (np.zeros((2, 4), np.int64), np.array([3, 5]), "lengths must lie in 1..4"),
        (np.zeros((2, 4), np.int64), np.array([3]), "lengths must have shape"),
        (np.zeros((2, 4), np.int64), np.array([3.0, 4.0]), "lengths must be integers"),
        (np.zeros(4, np.int64), np.array([4]), "input_ids must be a non-empty"),
        (np.zeros((2, 4), np.float32), np.array([3, 4]), "integer token ids"),
        (np.full((2, 4), 257, np.int64), np.array([3, 4]), "token ids must lie in 0..256"),
        (np.zeros((1, 129), np.int64), np.array([129]), "n_ctx=128"),
    ],
)
def test_refuses_bad_batches(tiny, capture, ids, lengths, message):
    with pytest.raises(FeatstoreError, match=message):
        capture_last_token(tiny, ids, lengths, strategy=capture)


def test_refuses_an_output_dtype_it_cannot_store(tiny):
    with pytest.raises(FeatstoreError, match="out_dtype must be float16 or float32"):
        capture_last_token(tiny, np.zeros((1, 2), np.int64), np.array([2]), out_dtype=np.int8)


def test_strategies_agree_on_a_batch_of_mixed_lengths(model):
    """The two strategies side by side: float32 rows within 1e-5, and in float16 at most one rounding step."""
    batch, lengths = right_pad(model.encode(TEXTS * 3))
    (fast_attn, fast_resid), (ref_attn, ref_resid) = (
        capture_last_token(model, batch, lengths, out_dtype=np.float32, strategy=name)
        for name in ("last-row", "pattern")
    )
    np.testing.assert_allclose(fast_attn, ref_attn, rtol=0, atol=1e-5)
    np.testing.assert_allclose(fast_resid, ref_resid, rtol=1e-5, atol=1e-4)
    fast16, ref16 = (capture_last_token(model, batch, lengths, strategy=name)[0] for name in ("last-row", "pattern"))
    ulp = np.spacing(np.abs(ref16.astype(np.float32)).astype(np.float16)).astype(np.float32)
    assert np.all(np.abs(fast16.astype(np.float32) - ref16.astype(np.float32)) <= ulp)


def test_default_capture_is_last_row_where_supported(model):
    assert default_capture(model) == "last-row"


def test_an_unsupported_architecture_falls_back_to_the_pattern_capture(tiny, monkeypatch):
    monkeypatch.setitem(
        CAPTURES, "last-row", dataclasses.replace(CAPTURES["last-row"], architectures={"LlamaForCausalLM": "Llama"})
    )
    assert default_capture(tiny) == "pattern"
    with pytest.raises(
        FeatstoreError, match="capture 'last-row' does not support model 'random:tiny'.*--capture pattern"
    ):
        check_capture(tiny, "last-row")
    with pytest.raises(FeatstoreError, match="unknown capture 'fast': use one of last-row, pattern"):
        check_capture(tiny, "fast")


def test_a_strategy_that_skips_a_layer_is_refused(tiny, monkeypatch):
    real = capture_last_row._attention_keeping_last_rows

    def skipping_layer_1(module, *args, **kwargs):
        if module.layer_idx == 1:
            kwargs.pop(capture_last_row.SINK_KWARG)
        return real(module, *args, **kwargs)

    monkeypatch.setitem(
        capture_last_row.AttentionInterface._global_mapping, capture_last_row.ATTENTION, skipping_layer_1
    )
    with pytest.raises(FeatstoreError, match="capture 'last-row' filled no attention row or residual for layer 1"):
        capture_last_token(tiny, np.zeros((1, 3), np.int64), np.array([3]), strategy="last-row")


def test_build_help_lists_each_capture_and_the_families_it_covers():
    text = capture_help()
    assert all(f"{name} (" in text for name in CAPTURES)
    assert all(family in text for family in CAPTURES["last-row"].architectures.values())
    assert f"the default for all but the {len(capture_last_row.DECODER_LAYERS)} above" in text
