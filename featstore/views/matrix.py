"""Turn per-example feature arrays into the (X, y, feature names) triple that probes consume."""

import itertools

import numpy as np
import xarray as xr

from featstore.errors import FeatstoreError

_NAME_PREFIXES = {"layer": "L", "head": "H", "bin": "bin", "d_model": "d"}


def to_matrix(
    features: xr.DataArray | xr.Dataset, feature_dims: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Compute ``features`` and stack every non-``example`` dim (C order) into float32 X.

    Returns X (examples x features), y from the ``label`` coordinate, and names such as
    ``L3.H5.bin2``. A Dataset contributes each data variable in turn, names prefixed by the
    variable (``first.L3.H5``). ``feature_dims`` fixes the stacking order (default: the array's).
    Non-finite values are refused, since probes cannot use them.
    """
    if "label" not in features.coords:
        raise FeatstoreError("to_matrix needs a 'label' coordinate over 'example'")
    computed = features.compute()
    if isinstance(computed, xr.Dataset):
        if not computed.data_vars:
            raise FeatstoreError("to_matrix got a Dataset with no data variables")
        blocks = [_flatten(computed[name], feature_dims, f"{name}.") for name in computed.data_vars]
    else:
        blocks = [_flatten(computed, feature_dims, "")]
    matrix = np.hstack([block for block, _ in blocks])
    names = [name for _, block_names in blocks for name in block_names]
    _refuse_non_finite(matrix, names)
    return matrix, np.asarray(computed["label"].values), names


def _flatten(da: xr.DataArray, feature_dims: list[str] | None, prefix: str) -> tuple[np.ndarray, list[str]]:
    """float32 (examples x features) block of one array and its feature names."""
    if "example" not in da.dims:
        raise FeatstoreError(f"to_matrix needs an 'example' dim; got dims {da.dims}")
    dims = [d for d in da.dims if d != "example"] if feature_dims is None else list(feature_dims)
    if sorted(dims) != sorted(d for d in da.dims if d != "example"):
        raise FeatstoreError(f"feature_dims {dims} must list every dim of {da.dims} except 'example'")
    block = da.transpose("example", *dims).values.astype(np.float32).reshape(da.sizes["example"], -1)
    if not dims:
        return block, [prefix.rstrip(".") or str(da.name or "value")]
    labels = [[f"{_NAME_PREFIXES.get(d, d)}{v}" for v in _coordinate_values(da, d)] for d in dims]
    return block, [prefix + ".".join(parts) for parts in itertools.product(*labels)]


def _coordinate_values(da: xr.DataArray, dim: str) -> np.ndarray:
    return np.asarray(da[dim].values) if dim in da.coords else np.arange(da.sizes[dim])


def _refuse_non_finite(matrix: np.ndarray, names: list[str]) -> None:
    bad = ~np.isfinite(matrix)
    if bad.any():
        columns = np.flatnonzero(bad.any(axis=0))
        first = ", ".join(names[c] for c in columns[:5])
        raise FeatstoreError(
            f"{int(bad.sum())} NaN/inf values in {columns.size} features (first: {first}); "
            "probes cannot use them (e.g. a span mean over tokens past a row's seq_len, or NaN stored in the row)"
        )
