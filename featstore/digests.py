"""One way to fingerprint a JSON-able value: the SHA-256 of its canonical JSON (sorted keys, non-JSON values as
their str), so equal inputs give equal ids in every process and catalog."""

from __future__ import annotations

import hashlib
import json


def json_digest(value: object, length: int | None = None) -> str:
    """The hex SHA-256 of `value` as canonical JSON, cut to its first `length` characters when given."""
    digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
    return digest if length is None else digest[:length]
