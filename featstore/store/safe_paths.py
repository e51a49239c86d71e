"""The one boundary where names read from a store, a catalog, a listing or a registry become paths or keys.

Whatever a store holds is untrusted: a colleague's bucket or a shared folder may list `../x`, `/etc/x` or a
dataset named `a/../../b`. Such a name becomes a local path or a store key only through `checked_key` (a
'/'-separated relative key), `checked_name` (one part) or `confined_path` (a key below a local folder, with
links resolved), which refuse anything that could leave its folder in one line, before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Sized
from pathlib import Path

from featstore.errors import FeatstoreError

MAX_PART_BYTES = 200  # one file or folder name (filesystems allow 255 bytes; room for suffixes like `.html`)
MAX_KEY_CHARS = 1024  # a whole key
MAX_ENTRIES = 100_000  # files in one listing (a project mirrors a few per dataset)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\:]")  # control characters, backslashes, drive letters and streams


class UnsafeName(FeatstoreError):
    """A stored name that could lead outside its folder (or is too long to be a file name)."""


def checked_name(name: object, what: str) -> str:
    """`name` when it is one plain path part: not empty, `.` or `..`, no `/`, `\\`, `:` or control character,
    at most MAX_PART_BYTES bytes."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or _UNSAFE.search(name):
        raise UnsafeName(
            f"{what} {_shown(name)} is not a plain name (no '/', '\\', ':', '..' or control "
            "characters); refused, nothing was written"
        )
    if len(name.encode("utf-8", "surrogateescape")) > MAX_PART_BYTES:
        raise UnsafeName(f"{what} {_shown(name)} is longer than {MAX_PART_BYTES} bytes; refused, nothing was written")
    return name


def checked_key(key: object, what: str) -> str:
    """`key` when it is a relative '/'-separated path of plain names (see `checked_name`), at most MAX_KEY_CHARS
    long: no absolute path, drive letter, `..` or empty part."""
    if not isinstance(key, str) or not key:
        raise UnsafeName(f"{what} {_shown(key)} is not a relative path; refused, nothing was written")
    if len(key) > MAX_KEY_CHARS:
        raise UnsafeName(
            f"{what} {_shown(key)} is longer than {MAX_KEY_CHARS} characters; refused, nothing was written"
        )
    if key.startswith("/"):
        raise UnsafeName(f"{what} {_shown(key)} is an absolute path; refused, nothing was written")
    for part in key.split("/"):
        try:
            checked_name(part, what)
        except UnsafeName:
            raise UnsafeName(
                f"{what} {_shown(key)} is not a relative path of plain names (no '..', empty part, "
                "'\\', ':' or control characters); refused, nothing was written"
            ) from None
    return key


def confined_path(root: Path, key: str, what: str) -> Path:
    """The path of `key` below the local folder `root`, proven to stay inside it once links are resolved."""
    path = Path(root) / checked_key(key, what)
    if not path.resolve().is_relative_to(Path(root).resolve()):
        raise UnsafeName(f"{what} {_shown(key)} leads outside {root} through a link; refused, nothing was written")
    return path


def checked_count(entries: Sized, what: str) -> None:
    """Refuse a listing with more than MAX_ENTRIES entries (a listing is read whole)."""
    if len(entries) > MAX_ENTRIES:
        raise FeatstoreError(
            f"{what} lists {len(entries)} entries, more than the {MAX_ENTRIES} featstore accepts; "
            "refused, nothing was written"
        )


def _shown(value: object) -> str:
    """A name as an error shows it: quoted, escaped and cut, so a hostile name cannot flood or forge a line."""
    text = ascii(value) if isinstance(value, str) else type(value).__name__
    return text if len(text) <= 80 else text[:77] + "..."
