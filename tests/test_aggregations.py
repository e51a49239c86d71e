"""Length-masked token aggregations and to_matrix, checked against per-example float64 loops."""

import re
import warnings
from fractions import Fraction

import dask.array as dsa
import numpy as np
import pytest
import xarray as xr

from featstore.errors import FeatstoreError
from featstore.views.aggregations import (
    AGGREGATIONS,
    MODIFIERS,
    LengthOnlyFeatureWarning,
    aggregation_help,
    entropy,
    first_token_mass,
    last_k_mean,
    masked_max,
    masked_mean,
    parse_aggregation,
    relative_bins,
    span_mean,
    spec_forms,
)
from featstore.views.matrix import to_matrix

N_EXAMPLES, N_LAYERS, N_HEADS, N_TOKENS, D_MODEL = 14, 3, 2, 9, 4


def make_view(seed: int = 0, padding: float = 0.0) -> xr.Dataset:
    """A dask-backed view of softmax rows (with a sink on token 0), zero-padded past seq_len."""
    rng = np.random.default_rng(seed)
    seq_len = rng.integers(1, N_TOKENS + 1, N_EXAMPLES)
    seq_len[:3] = [1, N_TOKENS, 2]
    logits = rng.normal(0, 2, (N_EXAMPLES, N_LAYERS, N_HEADS, N_TOKENS))
    logits[..., 0] += 2.0
    seq_len[3:6] = [3, 4, 8]
    logits[[3, 4, 5], :, :, seq_len[3:6] - 1] = -30.0  # valid last weights that round to 0 in float16
    seq_len[6] = 5
    logits[6, 1, :, 0] += 40.0  # heads with all their float16 mass on token 0: nothing left to renormalise
    valid = np.arange(N_TOKENS) < seq_len[:, None, None, None]
    weights = np.where(valid, np.exp(logits), 0.0)
    attn = (weights / weights.sum(-1, keepdims=True)).astype(np.float16)
    attn[~np.broadcast_to(valid, attn.shape)] = padding
    coords = {
        "example_id": ("example", np.arange(100, 100 + N_EXAMPLES, dtype=np.int64)),
        "seq_len": ("example", seq_len.astype(np.int32)),
        "label": ("example", rng.integers(0, 2, N_EXAMPLES).astype(np.int8)),
        "layer": np.arange(N_LAYERS),
        "head": np.arange(N_HEADS),
        "token": np.arange(N_TOKENS),
    }
    view = xr.Dataset(
        {
            "attn": (("example", "layer", "head", "token"), dsa.from_array(attn, chunks=(5, -1, -1, -1))),
            "resid": (
                ("example", "layer", "d_model"),
                dsa.from_array(rng.normal(size=(N_EXAMPLES, N_LAYERS, D_MODEL)).astype(np.float16), chunks=(5, -1, -1)),
            ),
            "tokens": (
                ("example", "token"),
                dsa.from_array(np.zeros((N_EXAMPLES, N_TOKENS), np.int32), chunks=(5, -1)),
            ),
        },
        coords=coords,
    )
    return view.set_xindex("example_id")


def reference(view: xr.Dataset, row_feature, n_out: int | None = None) -> np.ndarray:
    """Apply ``row_feature(row, seq_len)`` to every unpadded float64 row, one at a time."""
    attn, lengths = view["attn"].values, view["seq_len"].values
    shape = attn.shape[:3] + ((n_out,) if n_out else ())
    out = np.empty(shape)
    for e, layer, head in np.ndindex(attn.shape[:3]):
        out[e, layer, head] = row_feature(attn[e, layer, head, : lengths[e]].astype(np.float64), lengths[e])
    return out


def without_first(row: np.ndarray) -> np.ndarray:
    """Tokens 1.. renormalised to sum 1; all zeros (one zero for seq_len 1) when they hold no mass."""
    rest = row[1:]
    if rest.size == 0:
        return np.zeros(1)
    return rest / rest.sum() if rest.sum() != 0 else rest


def row_entropy(row: np.ndarray) -> float:
    if row.size == 0:
        return np.nan
    p = row[row > 0]
    return float(-(p * np.log(p)).sum())


def row_bins(row: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin b holds the tokens whose relative start t/L lies in [b/n, (b+1)/n), else the token containing b/n."""
    length = row.size
    out = np.empty(n_bins)
    for b in range(n_bins):
        lo, hi = Fraction(b, n_bins), Fraction(b + 1, n_bins)
        members = [t for t in range(length) if lo <= Fraction(t, length) < hi]
        members = members or [t for t in range(length) if Fraction(t, length) <= lo < Fraction(t + 1, length)]
        out[b] = row[members].mean()
    return out


def row_span(row: np.ndarray, start: int, stop: int) -> float:
    part = row[max(start, 0) : max(stop, 0)]
    return part.mean() if part.size else np.nan


CASES = {
    "mean": (lambda da: masked_mean(da), lambda row, n: row.mean()),
    "mean-nofirst": (
        lambda da: masked_mean(da, exclude_first=True),
        lambda row, n: without_first(row).mean(),
    ),
    "max": (masked_max, lambda row, n: row.max()),
    "max-nofirst": (
        lambda da: masked_max(da, exclude_first=True),
        lambda row, n: without_first(row).max(),
    ),
    "entropy": (entropy, lambda row, n: row_entropy(row)),
    "entropy-nofirst": (lambda da: entropy(da, exclude_first=True), lambda row, n: row_entropy(without_first(row))),
    "first": (first_token_mass, lambda row, n: row[0]),
    "last:1": (lambda da: last_k_mean(da, 1), lambda row, n: row[-1]),
    "last:4": (lambda da: last_k_mean(da, 4), lambda row, n: row[-4:].mean()),
    "last:20": (lambda da: last_k_mean(da, 20), lambda row, n: row.mean()),
    "last:3-ratio": (lambda da: last_k_mean(da, 3, ratio_to_uniform=True), lambda row, n: row[-3:].mean() * n),
    "span:2-5": (lambda da: span_mean(da, 2, 5), lambda row, n: row_span(row, 2, 5)),
    "span:-3-50-ratio": (lambda da: span_mean(da, -3, 50, ratio_to_uniform=True), lambda row, n: row.mean() * n),
}


def compare(result: xr.DataArray, expected: np.ndarray) -> None:
    values = result.values
    np.testing.assert_array_equal(np.isnan(values), np.isnan(expected))
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.fixture(scope="module")
def view() -> xr.Dataset:
    return make_view()


@pytest.mark.parametrize("case", CASES)
def test_aggregation_matches_per_example_loop(view, case):
    aggregate, row_feature = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LengthOnlyFeatureWarning)
        result = aggregate(view["attn"])
    assert result.dims == ("example", "layer", "head")
    assert result.dtype == np.float32
    assert list(result["seq_len"].values) == list(view["seq_len"].values)
    compare(result, reference(view, row_feature))


@pytest.mark.parametrize("n_bins", [1, 3, 4, N_TOKENS, 12])
def test_relative_bins_match_per_example_loop(view, n_bins):
    result = relative_bins(view["attn"], n_bins)
    assert result.dims == ("example", "layer", "head", "bin")
    assert list(result["bin"].values) == list(range(n_bins))
    compare(result, reference(view, lambda row, n: row_bins(row, n_bins), n_bins))
    ratio = relative_bins(view["attn"], n_bins, ratio_to_uniform=True)
    compare(ratio, reference(view, lambda row, n: row_bins(row, n_bins) * n, n_bins))


def test_relative_bins_of_uniform_rows_are_one_over_length_and_ratio_one():
    lengths = np.array([1, 2, 5, 8])
    rows = np.where(np.arange(8) < lengths[:, None], 1.0 / lengths[:, None], 0.0)
    da = xr.DataArray(rows, dims=("example", "token"), coords={"seq_len": ("example", lengths)})
    bins = relative_bins(da, 3)
    np.testing.assert_allclose(bins.values, np.repeat(1.0 / lengths[:, None], 3, axis=1), rtol=1e-6)
    np.testing.assert_allclose(relative_bins(da, 3, ratio_to_uniform=True).values, 1.0, rtol=1e-6)


def test_relative_bins_below_seq_len_repeat_the_token_holding_each_empty_bin_start():
    da = xr.DataArray([[10.0, 20.0, 0.0]], dims=("example", "token"), coords={"seq_len": ("example", [2])})
    np.testing.assert_array_equal(relative_bins(da, 4).values, [[10.0, 10.0, 20.0, 20.0]])
    np.testing.assert_array_equal(relative_bins(da, 3).values, [[10.0, 20.0, 20.0]])


def over_examples(values: np.ndarray, example_ids: np.ndarray) -> xr.DataArray:
    return xr.DataArray(values, dims="example", coords={"example_id": ("example", example_ids)}).set_xindex(
        "example_id"
    )


def test_span_with_per_example_bounds(view):
    starts = over_examples(np.arange(N_EXAMPLES) % 4, view["example_id"].values)
    stops = starts + 3
    result = span_mean(view["attn"], starts, stops, ratio_to_uniform=True)
    attn, lengths = view["attn"].values.astype(np.float64), view["seq_len"].values
    expected = np.array(
        [
            [
                [row_span(attn[e, i, j, : lengths[e]], e % 4, e % 4 + 3) * lengths[e] for j in range(N_HEADS)]
                for i in range(N_LAYERS)
            ]
            for e in range(N_EXAMPLES)
        ]
    )
    assert np.isnan(expected).any() and not np.isnan(expected).all()
    compare(result, expected)


def test_span_bounds_must_match_the_examples(view):
    wrong = over_examples(np.zeros(N_EXAMPLES, int), np.arange(N_EXAMPLES))
    with pytest.raises(FeatstoreError, match="do not match"):
        span_mean(view["attn"], wrong, 3)
    with pytest.raises(FeatstoreError, match="dims"):
        span_mean(view["attn"], xr.DataArray([1, 2], dims="other"), 3)


def test_view_has_zero_weights_inside_rows(view):
    attn, lengths = view["attn"].values, view["seq_len"].values
    assert all((attn[e, ..., lengths[e] - 1] == 0).all() for e in (3, 4, 5))
    np.testing.assert_array_equal(last_k_mean(view["attn"], 1).values[3:6], 0.0)


@pytest.mark.parametrize("padding", [7.0, np.inf, np.nan])
@pytest.mark.parametrize("spec", [*CASES, "bins:4", "bins:3-ratio"])
def test_padding_never_counts(view, spec, padding):
    garbage = make_view(padding=padding)
    assert np.isnan(garbage["attn"].values).sum() + (garbage["attn"].values == padding).sum() > 0
    if spec.startswith("span"):
        aggregate = CASES[spec][0]
    else:
        aggregate = parse_aggregation(spec)[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LengthOnlyFeatureWarning)
        np.testing.assert_array_equal(aggregate(garbage["attn"]).values, aggregate(view["attn"]).values)


@pytest.mark.parametrize("spec", ["mean-nofirst", "max", "entropy-nofirst", "first", "last:2-ratio", "bins:5"])
def test_results_stay_lazy_until_computed(view, spec):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LengthOnlyFeatureWarning)
        result = parse_aggregation(spec)[1](view["attn"])
    assert isinstance(result.data, dsa.Array)
    assert result.chunks[0] == view["attn"].chunks[0]


def test_nan_inside_rows_propagates_and_rows_without_mass_outside_the_sink_are_zero():
    rows = np.array([[0.5, np.nan, 0.5, 0.0], [1.0, 0.0, 0.0, 0.0], [0.5, 0.25, 0.25, np.nan]], np.float16)
    da = xr.DataArray(rows, dims=("example", "token"), coords={"seq_len": ("example", [3, 3, 3])})
    for aggregate in (masked_max, entropy, lambda d: last_k_mean(d, 3), lambda d: relative_bins(d, 1)[:, 0]):
        assert np.isnan(aggregate(da).values[0]) and np.isfinite(aggregate(da).values[1:]).all()
    for aggregate in (masked_mean, masked_max, entropy):
        nofirst = aggregate(da, exclude_first=True).values
        assert np.isnan(nofirst[0]) and nofirst[1] == 0 and np.isfinite(nofirst[2]) and nofirst[2] > 0


def test_rows_without_valid_tokens_give_nan_or_nofirst_zero_without_runtime_warnings():
    eye = dsa.from_array(np.eye(3, 4, dtype=np.float16), chunks=1)
    da = xr.DataArray(eye, dims=("example", "token"), coords={"seq_len": ("example", [1, 2, 1])})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for aggregate in (masked_mean, masked_max, entropy):
            nofirst = aggregate(da, exclude_first=True)
            assert nofirst.dtype == np.float32
            np.testing.assert_array_equal(nofirst.values, [0, 1 if aggregate is not entropy else 0, 0])
        assert np.isnan(span_mean(da, 2, 3).values).all()


@pytest.mark.parametrize("spec", ["mean-nofirst", "max-nofirst", "entropy-nofirst"])
def test_nofirst_of_heads_with_all_mass_on_the_sink_is_zero_and_probe_ready(view, spec):
    """The main job's abort: heads whose float16 rows are [1, 0, 0, ...] renormalised 0/0 into NaN."""
    attn = view["attn"].values
    sink_only = (attn[:, :, :, 0] == 1) & (view["seq_len"].values[:, None, None] > 1)
    assert sink_only.any()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LengthOnlyFeatureWarning)
        result = parse_aggregation(spec)[1](view["attn"])
    assert (result.values[sink_only] == 0).all()
    X, _, _ = to_matrix(result)
    assert np.isfinite(X).all()


def test_float16_sums_past_65504_do_not_overflow():
    values = np.full((2, 6), 60000, np.float16)
    da = xr.DataArray(
        dsa.from_array(values, chunks=1), dims=("example", "token"), coords={"seq_len": ("example", [6, 3])}
    )
    with np.errstate(over="ignore"):
        assert np.isinf(values.sum(axis=1)).all()
    np.testing.assert_array_equal(last_k_mean(da, 6).values, [60000, 60000])
    np.testing.assert_array_equal(span_mean(da, 0, 6, ratio_to_uniform=True).values, [360000, 180000])
    np.testing.assert_array_equal(relative_bins(da, 2).values, [[60000, 60000], [60000, 60000]])
    np.testing.assert_array_equal(masked_max(da).values, [60000, 60000])


def test_mean_of_attention_warns_and_only_encodes_length(view):
    lengths = view["seq_len"].values[:, None, None]
    with pytest.warns(LengthOnlyFeatureWarning, match="only encodes length"):
        mean = masked_mean(view["attn"])
    np.testing.assert_allclose(mean.values, np.broadcast_to(1.0 / lengths, mean.shape), rtol=3e-3)
    with pytest.warns(LengthOnlyFeatureWarning, match="first_token_mass"):
        mean = view["attn"].masked.mean(exclude_first=True)
    no_mass = view["attn"].values[..., 1:].astype(np.float32).sum(-1) == 0
    expected = np.where(no_mass, 0.0, 1.0 / np.maximum(lengths - 1, 1))
    np.testing.assert_allclose(mean.values, np.broadcast_to(expected, mean.shape), rtol=1e-5)
    with pytest.warns(LengthOnlyFeatureWarning):
        masked_mean(view["attn"].rename("weights").assign_attrs(kind="attention"))


def test_mean_of_other_arrays_does_not_warn(view):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        masked_mean(view["attn"].rename("weights"))
        masked_mean(view["tokens"])


def test_accessor_forwards_to_the_functions(view):
    attn = view["attn"]
    pairs = [
        (attn.masked.max(exclude_first=True), masked_max(attn, exclude_first=True)),
        (attn.masked.entropy(), entropy(attn)),
        (attn.masked.first(), first_token_mass(attn)),
        (attn.masked.last(3, ratio_to_uniform=True), last_k_mean(attn, 3, ratio_to_uniform=True)),
        (attn.masked.span(1, 4), span_mean(attn, 1, 4)),
        (attn.masked.bins(4), relative_bins(attn, 4)),
        (attn.masked.apply("bins:4-ratio"), relative_bins(attn, 4, ratio_to_uniform=True)),
    ]
    for via_accessor, direct in pairs:
        xr.testing.assert_identical(via_accessor.compute(), direct.compute())


@pytest.mark.parametrize(
    ("spec", "name", "direct"),
    [
        ("max-nofirst", "max-nofirst", lambda da: masked_max(da, exclude_first=True)),
        (" Entropy ", "entropy", entropy),
        ("first", "first", first_token_mass),
        ("last:04", "last:4", lambda da: last_k_mean(da, 4)),
        ("bins:8-ratio", "bins:8-ratio", lambda da: relative_bins(da, 8, ratio_to_uniform=True)),
    ],
)
def test_parse_aggregation(view, spec, name, direct):
    parsed_name, aggregate = parse_aggregation(spec)
    assert parsed_name == name
    assert parsed_name.split(":")[0].split("-")[0] in AGGREGATIONS
    xr.testing.assert_identical(aggregate(view["attn"]).compute(), direct(view["attn"]).compute())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("median", "unknown aggregation 'median'"),
        ("", "unknown aggregation"),
        ("bins", "malformed aggregation 'bins'"),
        ("first:3", "malformed"),
        ("last:2-nofirst", "malformed"),
        ("mean-ratio", "malformed"),
        ("bins:0", "n_bins must be a positive integer"),
        ("bins:-2", "unknown aggregation"),
    ],
)
def test_bad_aggregation_specs_get_one_line_errors(spec, message):
    with pytest.raises(FeatstoreError, match=message) as info:
        parse_aggregation(spec)
    assert "\n" not in str(info.value)


def test_spec_forms_and_help_come_from_the_registry():
    assert spec_forms() == (
        "mean, mean-nofirst, max, max-nofirst, entropy, entropy-nofirst, first, last:K, "
        "last:K-ratio, bins:N, bins:N-ratio (K, N positive integers)"
    )
    expected = f"unknown aggregation 'median'; expected one of: {spec_forms()}"
    with pytest.raises(FeatstoreError, match=re.escape(expected)):
        parse_aggregation("median")
    assert all(f"{kind.forms()[0]}: {kind.summary}" in aggregation_help() for kind in AGGREGATIONS.values())
    assert all(f"-{name} (" in aggregation_help() for name in MODIFIERS)


def test_bad_views_and_arguments_are_refused(view):
    with pytest.raises(FeatstoreError, match="'seq_len' coordinate"):
        first_token_mass(view["attn"].drop_vars("seq_len"))
    with pytest.raises(FeatstoreError, match="'token' dim"):
        masked_max(view["resid"])
    with pytest.raises(FeatstoreError, match="seq_len must lie in 1..9"):
        entropy(view["attn"].assign_coords(seq_len=view["seq_len"] * 0))
    with pytest.raises(FeatstoreError, match="k must be a positive integer"):
        last_k_mean(view["attn"], 0)


def test_to_matrix_stacks_features_in_c_order(view):
    bins = relative_bins(view["attn"], 3)
    X, y, names = to_matrix(bins)
    assert X.shape == (N_EXAMPLES, N_LAYERS * N_HEADS * 3) and X.dtype == np.float32
    assert names[:4] == ["L0.H0.bin0", "L0.H0.bin1", "L0.H0.bin2", "L0.H1.bin0"]
    assert names[-1] == f"L{N_LAYERS - 1}.H{N_HEADS - 1}.bin2" and len(set(names)) == len(names)
    computed = bins.compute()
    for column, name in [(0, "L0.H0.bin0"), (5, "L0.H1.bin2"), (13, "L2.H0.bin1")]:
        assert names[column] == name
        layer, head, b = (int(part.lstrip("LHbin")) for part in name.split("."))
        np.testing.assert_array_equal(X[:, column], computed.sel(layer=layer, head=head, bin=b).values)
    np.testing.assert_array_equal(y, view["label"].values)


def test_to_matrix_with_feature_dims_and_datasets(view):
    X, _, names = to_matrix(view["resid"].astype(np.float32), feature_dims=["d_model", "layer"])
    assert names[:2] == ["d0.L0", "d0.L1"]
    np.testing.assert_array_equal(X[:, 1], view["resid"].values[:, 1, 0].astype(np.float32))
    features = xr.Dataset({"first": first_token_mass(view["attn"]), "max": masked_max(view["attn"])})
    X, y, names = to_matrix(features)
    assert X.shape == (N_EXAMPLES, 2 * N_LAYERS * N_HEADS)
    assert names[0] == "first.L0.H0" and names[N_LAYERS * N_HEADS] == "max.L0.H0"
    np.testing.assert_array_equal(X[:, N_LAYERS * N_HEADS], masked_max(view["attn"]).values[:, 0, 0])
    with pytest.raises(FeatstoreError, match="every dim"):
        to_matrix(view["resid"], feature_dims=["layer"])


def test_to_matrix_refuses_nan(view):
    nofirst = span_mean(view["attn"], 1, 2)  # no token 1 in rows of seq_len 1
    n_nan = int(np.isnan(nofirst.values).sum())
    assert n_nan == N_LAYERS * N_HEADS * int((view["seq_len"].values == 1).sum()) > 0
    with pytest.raises(
        FeatstoreError, match=rf"{n_nan} NaN/inf values in {N_LAYERS * N_HEADS} features \(first: L0.H0, L0.H1"
    ):
        to_matrix(nofirst)
    with pytest.raises(FeatstoreError, match="'label' coordinate"):
        to_matrix(nofirst.drop_vars("label"))
