"""Metadata documents read from a store (a split's `zarr.json`, `project.json`) are size-capped before parsing.

A stored document is untrusted: one padded to gigabytes would be read whole, several times, and parsed. Every
such read goes through `read_document`, which reads at most MAX_DOCUMENT_BYTES (+1 to tell) and refuses more.
"""

from __future__ import annotations

from featstore.errors import FeatstoreError
from featstore.store.location import StoreLocation

MAX_DOCUMENT_BYTES = 16 << 20  # a split's root with 100,000 manifest entries is about 10 MB


class DocumentTooLarge(FeatstoreError):
    """A stored metadata document larger than MAX_DOCUMENT_BYTES."""


def read_document(location: StoreLocation, key: str) -> bytes | None:
    """The bytes of a metadata document, or None when there is none; DocumentTooLarge (read no further) when it
    holds more than MAX_DOCUMENT_BYTES."""
    data = location.read_at_most(key, MAX_DOCUMENT_BYTES + 1)
    if data is not None and len(data) > MAX_DOCUMENT_BYTES:
        raise DocumentTooLarge(
            f"{location.describe(key)} is larger than {MAX_DOCUMENT_BYTES >> 20} MiB, which no "
            "featstore metadata document is; refused without reading it"
        )
    return data
