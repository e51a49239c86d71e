"""Checks of the values a saved probe file holds, applied before any probe is built from them: types, ranges,
array shapes and dtypes. A file is untrusted input, so each check fails with one line naming the field."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from probes.errors import ProbeInputError

MAX_STRING = 4096
MAX_INT = 2**62
MAX_PARTS = 1024
FLOATS = ("float32", "float64")
CLASS_DTYPES = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32", "float64"}


class SavedProbeError(ProbeInputError):
    """A probe file that is not a probe this library saved: wrong format, field, type, shape or size."""


def fields(found: Any, name: str, required: set[str], optional: frozenset[str] = frozenset()) -> dict:
    """`found` as a dict holding every required key and no key outside required and optional."""
    if not isinstance(found, dict):
        raise SavedProbeError(f"{name} must be an object, got {type(found).__name__}")
    missing, unknown = sorted(required - found.keys()), sorted(found.keys() - required - optional)
    if missing or unknown:
        problems = ([f"missing {missing}"] if missing else []) + ([f"unknown {unknown[:5]}"] if unknown else [])
        raise SavedProbeError(f"{name}: {'; '.join(problems)}")
    return found


def integer(value: Any, name: str, low: int, high: int, optional: bool = False) -> int | None:
    """An int (not a bool) in [low, high], or None when optional."""
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise SavedProbeError(f"{name} must be an integer in [{low}, {high}], got {shown(value)}")
    return value


def real(
    value: Any, name: str, low: float = -math.inf, high: float = math.inf, finite: bool = True, optional: bool = False
) -> float | int | None:
    """A number (int or float, not bool) in [low, high], finite unless told, or None when optional."""
    if value is None and optional:
        return None
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    try:
        number = float(value) if is_number else math.nan
    except OverflowError:  # an integer beyond a float's range
        number = math.nan
    if not (low <= number <= high or (not finite and isinstance(value, float) and not math.isfinite(value))):
        raise SavedProbeError(f"{name} must be a{' finite' * finite} number in [{low}, {high}], got {shown(value)}")
    return value


def seed(value: Any, name: str = "random_state") -> int | None:
    """A random_state: None or a 64-bit integer."""
    return integer(value, name, -(2**63), 2**63 - 1, optional=True)


def boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise SavedProbeError(f"{name} must be true or false, got {shown(value)}")
    return value


def text(value: Any, name: str, choices: tuple | None = None, optional: bool = False) -> str | None:
    """A string of at most MAX_STRING characters (one of `choices` when given), or None when optional."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > MAX_STRING or (choices is not None and value not in choices):
        expected = f"one of {list(choices)}" if choices is not None else f"a string of at most {MAX_STRING} characters"
        raise SavedProbeError(f"{name} must be {expected}, got {shown(value)}")
    return value


def array(arrays: dict[str, np.ndarray], name: str, shape: tuple[int, ...], dtypes: tuple[str, ...]) -> np.ndarray:
    """The array `name` of exactly this shape and one of these dtypes (a writable copy)."""
    if name not in arrays:
        raise SavedProbeError(f"the array {name} is missing")
    found = arrays[name]
    if found.shape != shape or found.dtype.name not in dtypes:
        raise SavedProbeError(
            f"the array {name} must be {'/'.join(dtypes)} of shape {shape}, "
            f"got {found.dtype.name} of shape {found.shape}"
        )
    return found.copy()


def vector_length(arrays: dict[str, np.ndarray], name: str, high: int) -> int:
    """The length of the 1-D array `name`, at most `high` (its dtype is checked by `array`)."""
    found = arrays.get(name)
    if found is None or found.ndim != 1 or found.size > high:
        raise SavedProbeError(f"the array {name} must be 1-D with at most {high} entries")
    return found.size


def classes(found: Any) -> np.ndarray:
    """The two class labels, from {"values": [a, b], "dtype": numpy dtype name}."""
    found = fields(found, "classes_", {"values", "dtype"})
    dtype, values = found["dtype"], found["values"]
    if not isinstance(dtype, str) or not (dtype in CLASS_DTYPES or _short_unicode(dtype)):
        raise SavedProbeError(f"classes_ dtype must be a number, bool or short string type, got {shown(dtype)}")
    plain = (bool, int, float, str)
    if (
        not isinstance(values, list)
        or len(values) != 2
        or not all(isinstance(v, plain) for v in values)
        or any(isinstance(v, str) and len(v) > MAX_STRING for v in values)
    ):
        raise SavedProbeError("classes_ must be a list of two plain labels")
    try:
        labels = np.array(values, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as error:
        raise SavedProbeError(f"classes_ {shown(values)} are not of dtype {dtype}: {error}") from None
    if labels[0] == labels[1]:
        raise SavedProbeError("classes_ must be two different labels")
    return labels


def saved_classes(labels: np.ndarray) -> dict:
    """The JSON form `classes` reads back."""
    return {"values": labels.tolist(), "dtype": labels.dtype.name if labels.dtype.kind != "U" else labels.dtype.str[1:]}


def feature_names(found: Any, n_features: int) -> np.ndarray | None:
    """sklearn's feature_names_in_ (names of a DataFrame's columns), if the probe was fitted on one."""
    if found is None:
        return None
    if (
        not isinstance(found, list)
        or len(found) != n_features
        or not all(isinstance(v, str) and len(v) <= MAX_STRING for v in found)
    ):
        raise SavedProbeError(f"feature_names_in_ must be {n_features} strings")
    return np.array(found, dtype=object)


def _short_unicode(dtype: str) -> bool:
    return dtype.startswith("U") and dtype[1:].isdigit() and 0 < int(dtype[1:]) <= MAX_STRING


def shown(value: Any) -> str:
    """A value as an error line shows it: its repr, cut to 60 characters."""
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
