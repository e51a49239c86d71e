"""Length-masked reductions over the ``token`` axis of lazy xarray views.

Every function takes a DataArray with a ``token`` dim and a per-example ``seq_len`` coordinate.
Tokens at positions ``>= seq_len`` are padding and never count (lengths come from ``seq_len``
only, never from zeros). Values are cast to float32 before reducing (float16 sums overflow at
65504); results keep every other dim and coordinate and stay lazy when the input is dask-backed.
A reduction over no valid token (an empty span) is NaN.

``exclude_first`` (the ``-nofirst`` specs) drops token 0 and renormalises the rest to sum to 1. A row with
no mass outside token 0 (all of it on the sink, which float16 storage makes common, or ``seq_len == 1``)
has nothing to renormalise: it is not renormalised and its aggregation is taken over its zero weights,
so ``mean``, ``max`` and ``entropy`` (0 log 0 = 0) are all 0. For ``max`` and ``mean`` 0 lies below every
renormalised value (at least 1/(seq_len-1)), so such rows stay distinguishable; entropy 0 is shared with a
row that puts all its non-sink mass on one token (``first`` tells them apart). NaN would abort a probe.

``import featstore.views.aggregations`` registers the ``.masked`` accessor:
``view.attn.masked.first()``, ``.masked.bins(8)``, ``.masked.last(4, ratio_to_uniform=True)``...

Aggregation specs for the CLI/runner (``parse_aggregation``), grammar ``BASE[:N][-MODIFIER]``: one
``AggregationKind`` per base in ``AGGREGATIONS`` (its function, the argument ``:N`` fills, the modifiers it
takes, its help line), one keyword per modifier in ``MODIFIERS``; ``aggregation_help()`` describes them all.
``span_mean`` needs per-example bounds, so it has no spec; call it directly.
"""

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import xarray as xr

from featstore.errors import FeatstoreError

Aggregation = Callable[[xr.DataArray], xr.DataArray]


class LengthOnlyFeatureWarning(UserWarning):
    """The requested feature is a function of ``seq_len`` alone and carries no other signal."""


def valid_mask(da: xr.DataArray) -> xr.DataArray:
    """Boolean (example, token) mask of the real tokens: ``token < seq_len``."""
    _check_view(da)
    return da["token"] < da["seq_len"]


def masked_mean(da: xr.DataArray, exclude_first: bool = False) -> xr.DataArray:
    """Mean over the valid tokens; on attention rows this is 1/seq_len and warns (the 1/len trap)."""
    if da.name == "attn" or da.attrs.get("kind") == "attention":
        warnings.warn(
            "masked_mean of attention rows only encodes length: each row sums to 1, so the mean "
            "is 1/seq_len (1/(seq_len-1) with exclude_first); use first_token_mass, entropy, "
            "relative_bins or a span mean with ratio_to_uniform instead",
            LengthOnlyFeatureWarning,
            stacklevel=2,
        )
    values, valid = _weights(da, exclude_first)
    return _filled(_mean_where(values, valid), valid, exclude_first)


def masked_max(da: xr.DataArray, exclude_first: bool = False) -> xr.DataArray:
    """Largest valid value of each row."""
    values, valid = _weights(da, exclude_first)
    largest = xr.where(valid, values, -np.inf).max("token", skipna=False)
    return _filled(largest, valid, exclude_first)


def entropy(da: xr.DataArray, exclude_first: bool = False) -> xr.DataArray:
    """Shannon entropy -sum p log p (natural log, 0 log 0 = 0) of each row's valid weights."""
    values, valid = _weights(da, exclude_first)
    plogp = values * np.log(values.where(values > 0, 1.0))
    total = xr.where(valid, plogp, 0.0).sum("token", skipna=False)
    return _filled(-total, valid, exclude_first)


def first_token_mass(da: xr.DataArray) -> xr.DataArray:
    """The value at token 0 (the attention sink); token 0 is always valid since seq_len >= 1."""
    _check_view(da)
    return da.isel(token=0, drop=True).astype(np.float32)


def last_k_mean(da: xr.DataArray, k: int, ratio_to_uniform: bool = False) -> xr.DataArray:
    """Mean over the last min(k, seq_len) valid tokens of each row."""
    _check_positive("k", k)
    in_tail = valid_mask(da) & (da["token"] >= da["seq_len"] - k)
    return _scaled(_mean_where(da.astype(np.float32), in_tail), ratio_to_uniform)


def span_mean(
    da: xr.DataArray,
    start: int | xr.DataArray,
    stop: int | xr.DataArray,
    ratio_to_uniform: bool = False,
) -> xr.DataArray:
    """Mean over the half-open token span [start, stop) clipped to [0, seq_len); empty span -> NaN.

    ``start``/``stop`` are ints or DataArrays over ``example`` aligned exactly with ``da``.
    """
    _check_view(da)
    bounds = [b for b in (start, stop) if isinstance(b, xr.DataArray)]
    if any(b.dims != ("example",) for b in bounds):
        raise FeatstoreError("span_mean: start/stop must be ints or DataArrays with dims ('example',)")
    try:
        xr.align(da, *bounds, join="exact")
    except ValueError as exc:
        raise FeatstoreError(f"span_mean: start/stop do not match the view's examples ({exc})") from None
    token = da["token"]
    in_span = valid_mask(da) & (token >= start) & (token < stop)
    return _scaled(_mean_where(da.astype(np.float32), in_span), ratio_to_uniform)


def relative_bins(da: xr.DataArray, n_bins: int, ratio_to_uniform: bool = False) -> xr.DataArray:
    """Mean within ``n_bins`` relative-position bins of each row's valid tokens (new last dim ``bin``).

    With L = seq_len, token t (relative span [t/L, (t+1)/L)) belongs to bin floor(t * n_bins / L),
    the bin holding its start. For L >= n_bins these bins partition the tokens and none is empty;
    for L < n_bins an empty bin takes the token containing the bin's start, t = floor(b * L / n_bins)
    (nearest-neighbour upsampling), so no bin is ever NaN.
    """
    _check_positive("n_bins", n_bins)
    valid = valid_mask(da)
    token = da["token"].astype(np.int64)
    length = da["seq_len"].astype(np.int64)
    bin_index = xr.DataArray(np.arange(n_bins), dims="bin", coords={"bin": np.arange(n_bins)})
    starts_in_bin = (token * n_bins) // length == bin_index
    holds_bin_start = token == (bin_index * length) // n_bins
    members = starts_in_bin | (holds_bin_start & ~starts_in_bin.any("token"))
    members = members.astype(np.float32)
    values = xr.where(valid, da.astype(np.float32), 0.0)
    sums = xr.dot(values, members, dim="token")
    means = sums / members.sum("token")
    return _scaled(means, ratio_to_uniform).transpose(..., "bin")


class MaskedAccessor:
    """``da.masked.<aggregation>(...)``: forwards to this module's functions (stateless)."""

    def __init__(self, da: xr.DataArray) -> None:
        self._da = da

    def mean(self, exclude_first: bool = False) -> xr.DataArray:
        """See ``masked_mean``."""
        return masked_mean(self._da, exclude_first)

    def max(self, exclude_first: bool = False) -> xr.DataArray:
        """See ``masked_max``."""
        return masked_max(self._da, exclude_first)

    def entropy(self, exclude_first: bool = False) -> xr.DataArray:
        """See ``entropy``."""
        return entropy(self._da, exclude_first)

    def first(self) -> xr.DataArray:
        """See ``first_token_mass``."""
        return first_token_mass(self._da)

    def last(self, k: int, ratio_to_uniform: bool = False) -> xr.DataArray:
        """See ``last_k_mean``."""
        return last_k_mean(self._da, k, ratio_to_uniform)

    def span(self, start: int | xr.DataArray, stop: int | xr.DataArray, ratio_to_uniform: bool = False) -> xr.DataArray:
        """See ``span_mean``."""
        return span_mean(self._da, start, stop, ratio_to_uniform)

    def bins(self, n_bins: int, ratio_to_uniform: bool = False) -> xr.DataArray:
        """See ``relative_bins``."""
        return relative_bins(self._da, n_bins, ratio_to_uniform)

    def apply(self, spec: str) -> xr.DataArray:
        """Apply an aggregation spec such as ``"bins:8"`` (see ``parse_aggregation``)."""
        return parse_aggregation(spec)[1](self._da)


xr.register_dataarray_accessor("masked")(MaskedAccessor)


@dataclass(frozen=True)
class Modifier:
    """A ``-MODIFIER`` suffix: the boolean keyword it sets on the aggregation function, and what it does."""

    keyword: str
    summary: str


@dataclass(frozen=True)
class AggregationKind:
    """One base of the spec grammar: its function, the keyword a ``:N`` count fills with the letter --help shows
    for it (none: the spec takes no count), the ``MODIFIERS`` it accepts and its line for --help."""

    name: str
    function: Callable[..., xr.DataArray]
    summary: str
    count: tuple[str, str] | None = None
    modifiers: tuple[str, ...] = ()

    def forms(self) -> list[str]:
        """Every spec shape of this base: ``bins:N``, ``bins:N-ratio``."""
        base = self.name + (f":{self.count[1]}" if self.count else "")
        return [base, *(f"{base}-{modifier}" for modifier in self.modifiers)]


MODIFIERS = {
    "nofirst": Modifier("exclude_first", "drops token 0 and renormalises the rest (0 for rows with no mass left)"),
    "ratio": Modifier("ratio_to_uniform", "multiplies by seq_len (1.0 for uniform attention)"),
}
AGGREGATIONS = {
    kind.name: kind
    for kind in (
        AggregationKind(
            "mean",
            masked_mean,
            "mean over every valid token (on attention rows only 1/seq_len)",
            modifiers=("nofirst",),
        ),
        AggregationKind("max", masked_max, "largest valid value", modifiers=("nofirst",)),
        AggregationKind("entropy", entropy, "Shannon entropy of the valid weights", modifiers=("nofirst",)),
        AggregationKind("first", first_token_mass, "the value at token 0 (the attention sink)"),
        AggregationKind(
            "last",
            last_k_mean,
            "mean over the last min(K, seq_len) valid tokens",
            count=("k", "K"),
            modifiers=("ratio",),
        ),
        AggregationKind(
            "bins", relative_bins, "means within N relative-position bins", count=("n_bins", "N"), modifiers=("ratio",)
        ),
    )
}
_SPEC = re.compile(r"(?P<base>[a-z]+)(?::(?P<count>\d+))?(?:-(?P<modifier>[a-z]+))?")


def spec_forms() -> str:
    """Every accepted spec shape in one line, as the parse errors name them."""
    forms = ", ".join(form for kind in AGGREGATIONS.values() for form in kind.forms())
    letters = ", ".join(kind.count[1] for kind in AGGREGATIONS.values() if kind.count)
    return f"{forms} ({letters} positive integers)"


def aggregation_help() -> str:
    """What each base and modifier computes, for ``probe --aggregation --help``."""
    bases = "; ".join(f"{kind.forms()[0]}: {kind.summary}" for kind in AGGREGATIONS.values())
    modifiers = "; ".join(
        f"-{name} ({', '.join(_taking(name))}) {modifier.summary}" for name, modifier in MODIFIERS.items()
    )
    return f"{bases}; {modifiers}"


def _taking(modifier: str) -> list[str]:
    return [kind.name for kind in AGGREGATIONS.values() if modifier in kind.modifiers]


def parse_aggregation(spec: str) -> tuple[str, Aggregation]:
    """Parse a spec such as ``"bins:8"`` or ``"mean-nofirst"`` into (canonical name, callable)."""
    match = _SPEC.fullmatch(spec.strip().lower())
    kind = AGGREGATIONS.get(match["base"]) if match else None
    if kind is None:
        raise FeatstoreError(f"unknown aggregation {spec!r}; expected one of: {spec_forms()}")
    count, modifier = match["count"], match["modifier"]
    if (count is None) != (kind.count is None) or modifier not in (None, *kind.modifiers):
        raise FeatstoreError(f"malformed aggregation {spec!r}; expected one of: {spec_forms()}")
    kwargs = {MODIFIERS[modifier].keyword: True} if modifier else {}
    if count is not None:
        _check_positive(kind.count[0], int(count))
        kwargs[kind.count[0]] = int(count)
    name = kind.name + (f":{int(count)}" if count is not None else "") + (f"-{modifier}" if modifier else "")
    return name, partial(kind.function, **kwargs)


def _check_view(da: xr.DataArray) -> None:
    if "token" not in da.dims or "seq_len" not in da.coords:
        raise FeatstoreError(
            f"aggregation needs a 'token' dim and a 'seq_len' coordinate; got dims {da.dims} "
            f"and coords {list(da.coords)}"
        )
    lengths = np.asarray(da["seq_len"].values)
    if lengths.size and (lengths.min() < 1 or lengths.max() > da.sizes["token"]):
        raise FeatstoreError(
            f"seq_len must lie in 1..{da.sizes['token']} (the token axis); got {lengths.min()}..{lengths.max()}"
        )


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise FeatstoreError(f"{name} must be a positive integer; got {value!r}")


def _weights(da: xr.DataArray, exclude_first: bool) -> tuple[xr.DataArray, xr.DataArray]:
    """float32 values and their valid mask; with exclude_first, token 0 is dropped and rows renormalised (a row
    whose other weights sum to 0 keeps its zeros: there is nothing to renormalise, see the module docstring)."""
    values, valid = da.astype(np.float32), valid_mask(da)
    if exclude_first:
        valid = valid & (da["token"] > 0)
        total = xr.where(valid, values, 0.0).sum("token", skipna=False)
        values = xr.where(total == 0, np.float32(0), values / total.where(total != 0))
    return values, valid


def _filled(reduced: xr.DataArray, valid: xr.DataArray, exclude_first: bool) -> xr.DataArray:
    """A reduction with its rows of no valid token set: NaN, or 0 with exclude_first (seq_len 1: no mass
    outside token 0)."""
    return reduced.where(valid.any("token"), np.float32(0) if exclude_first else np.float32(np.nan))


def _mean_where(values: xr.DataArray, selected: xr.DataArray) -> xr.DataArray:
    """Mean of ``values`` over the selected tokens; NaN where none is selected."""
    count = selected.sum("token").astype(np.float32)
    return xr.where(selected, values, 0.0).sum("token", skipna=False) / count.where(count > 0)


def _scaled(means: xr.DataArray, ratio_to_uniform: bool) -> xr.DataArray:
    """Span means times seq_len (the ratio to uniform attention) when asked."""
    return means * means["seq_len"].astype(np.float32) if ratio_to_uniform else means
