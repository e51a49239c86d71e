"""Fitted probes saved as arrays plus plain values, never as pickles, so loading a file runs no code it names.

A probe file is a safetensors file: its tensors are the fitted arrays, and its metadata holds one JSON document
{"format", "version", "probe"} where "probe" gives the family's name (a key of probes.families.FAMILIES), the
constructor parameters, the fitted plain values and the fitted sub-probes (the meta probe's). Loading bounds the
file and header sizes, looks the family up in that registry (nothing is imported by a name read from the file),
checks every parameter, value and array shape, and only then builds the probe. Format version 1 was a joblib
pickle: never loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import numpy as np
import safetensors
import safetensors.numpy
from sklearn.utils.validation import check_is_fitted

from probes.base import BinaryProbe
from probes.families import FAMILIES, family_name
from probes.saved_checks import MAX_PARTS, SavedProbeError, fields, integer, shown

FORMAT = "featstore-probe"
FORMAT_VERSION = 2
MAX_BYTES = 256 * 2**20
MAX_HEADER_BYTES = 8 * 2**20
MAX_DEPTH = 3
METADATA_KEY = "featstore"


def probe_bytes(probe: BinaryProbe) -> bytes:
    """A fitted probe as the bytes of a probe file."""
    check_is_fitted(probe)
    arrays: dict[str, np.ndarray] = {}
    document = {"format": FORMAT, "version": FORMAT_VERSION, "probe": _node(probe, "", arrays, fitted=True)}
    return safetensors.numpy.save(arrays, metadata={METADATA_KEY: json.dumps(document)})


def save_probe(probe: BinaryProbe, path: str | Path) -> None:
    """Write a fitted probe to a probe file."""
    Path(path).write_bytes(probe_bytes(probe))


def load_probe(source: bytes | str | Path | IO[bytes]) -> BinaryProbe:
    """The probe a probe file holds (bytes, a path or an open binary file), checked field by field; a file that
    is not one raises SavedProbeError."""
    if isinstance(source, (str, Path)):
        with open(source, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    else:
        data = source if isinstance(source, bytes) else source.read(MAX_BYTES + 1)
    document, arrays = _parse(data)
    return _build(document["probe"], "", arrays, depth=0, fitted=True)


def _node(probe: BinaryProbe, prefix: str, arrays: dict[str, np.ndarray], fitted: bool) -> dict:
    """A probe's JSON node; its arrays (and its sub-probes' arrays) are added to `arrays` under `prefix`."""
    family = family_name(probe)
    if family is None:
        raise TypeError(f"{type(probe).__name__} is not a probe family that can be saved ({', '.join(FAMILIES)})")
    params = {
        name: _plain_param(value, f"{prefix}{name}.", arrays) for name, value in probe.get_params(deep=False).items()
    }
    node = {"family": family, "params": params}
    if fitted:
        plain, own, parts = probe._fitted_state()
        arrays.update({prefix + name: np.require(value, requirements="C") for name, value in own.items()})
        node["fitted"] = plain
        node["parts"] = {
            name: [_node(p, f"{prefix}{name}.{i}.", arrays, True) for i, p in enumerate(part)]
            if isinstance(part, list)
            else _node(part, f"{prefix}{name}.", arrays, True)
            for name, part in parts.items()
        }
    return node


def _plain_param(value: Any, prefix: str, arrays: dict[str, np.ndarray]) -> Any:
    """A constructor parameter as JSON: plain values and lists as they are, a dict as {"mapping": pairs}, a probe
    (unfitted: a template) as {"probe": node}, a list of probes as {"probes": nodes}."""
    if isinstance(value, BinaryProbe):
        return {"probe": _node(value, prefix, arrays, fitted=False)}
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, BinaryProbe) for v in value):
        return {"probes": [_node(v, f"{prefix}{i}.", arrays, fitted=False) for i, v in enumerate(value)]}
    if isinstance(value, dict):
        return {
            "mapping": [
                [_plain_param(key, prefix, arrays), _plain_param(item, prefix, arrays)] for key, item in value.items()
            ]
        }
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain_param(v, prefix, arrays) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a probe parameter of type {type(value).__name__} cannot be saved")


def _parse(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """The JSON document and the arrays of a probe file's bytes, sizes bounded before anything is parsed."""
    if len(data) > MAX_BYTES:
        raise SavedProbeError(f"the probe file is larger than {MAX_BYTES // 2**20} MiB")
    header_bytes = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 0 < header_bytes <= min(MAX_HEADER_BYTES, len(data) - 8):
        raise SavedProbeError("not a probe file (no safetensors header of a bounded size)")
    try:
        header = json.loads(data[8 : 8 + header_bytes])
        metadata = header.get("__metadata__") if isinstance(header, dict) else None
        found = isinstance(metadata, dict) and isinstance(metadata.get(METADATA_KEY), str)
        document = json.loads(metadata[METADATA_KEY]) if found else None
    except (ValueError, TypeError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise SavedProbeError(f"not a probe file (unreadable header: {str(error).splitlines()[0][:80]})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SavedProbeError(f"not a probe file (no {FORMAT} document in its metadata)")
    fields(document, "probe file", {"format", "version", "probe"})
    if document["version"] != FORMAT_VERSION:
        raise SavedProbeError(
            f"probe file format version {document['version']!r}; this featstore reads version {FORMAT_VERSION}"
        )
    try:
        arrays = safetensors.numpy.load(data)
    except (safetensors.SafetensorError, ValueError, TypeError, KeyError) as error:
        raise SavedProbeError(f"the probe file's arrays are unreadable: {str(error).splitlines()[0][:80]}") from None
    return document, arrays


def _build(node: Any, prefix: str, arrays: dict[str, np.ndarray], depth: int, fitted: bool) -> BinaryProbe:
    """The probe of a JSON node: its family from the registry, its parameters and fitted values checked first."""
    if depth > MAX_DEPTH:
        raise SavedProbeError(f"probes nested deeper than {MAX_DEPTH} levels")
    node = fields(node, "probe", {"family", "params"} | ({"fitted", "parts"} if fitted else set()))
    family = node["family"]
    if not isinstance(family, str) or family not in FAMILIES:
        raise SavedProbeError(f"unknown probe family {shown(family)} (known: {', '.join(FAMILIES)})")
    cls = FAMILIES[family].estimator()
    params = fields(node["params"], f"{family} parameters", set(cls._get_param_names()))
    params = {name: _param(value, f"{prefix}{name}.", arrays, depth) for name, value in params.items()}
    cls._check_params(params)
    probe = cls(**params)
    if fitted:
        parts = node["parts"]
        if not isinstance(parts, dict):
            raise SavedProbeError(f"{family} parts must be an object")
        parts = {name: _part(part, f"{prefix}{name}.", arrays, depth) for name, part in parts.items()}
        own = {name[len(prefix) :]: value for name, value in arrays.items() if name.startswith(prefix)}
        probe._restore_fitted(node["fitted"], own, parts)
    return probe


def _param(value: Any, prefix: str, arrays: dict[str, np.ndarray], depth: int) -> Any:
    """A constructor parameter from its JSON form (see _plain_param); the family checks it next."""
    if not isinstance(value, dict):
        return value
    kind, inner = next(iter(value.items())) if len(value) == 1 else (None, None)
    if kind == "probe":
        return _build(inner, prefix, arrays, depth + 1, fitted=False)
    if kind == "probes" and isinstance(inner, list) and 0 < len(inner) <= MAX_PARTS:
        return [_build(v, f"{prefix}{i}.", arrays, depth + 1, fitted=False) for i, v in enumerate(inner)]
    if kind == "mapping" and isinstance(inner, list) and len(inner) <= MAX_PARTS:
        if not all(
            isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], (bool, int, float, str)) for pair in inner
        ):
            raise SavedProbeError("a mapping parameter must be a list of [plain key, value] pairs")
        return dict(map(tuple, inner))
    raise SavedProbeError('a parameter object must be {"probe": ...}, {"probes": [...]} or {"mapping": [...]}')


def _part(part: Any, prefix: str, arrays: dict[str, np.ndarray], depth: int) -> BinaryProbe | list[BinaryProbe]:
    """A fitted sub-probe, or a list of them."""
    if isinstance(part, list):
        integer(len(part), "the number of sub-probes", 1, MAX_PARTS)
        return [_build(p, f"{prefix}{i}.", arrays, depth + 1, fitted=True) for i, p in enumerate(part)]
    return _build(part, prefix, arrays, depth + 1, fitted=True)
