"""Byte counts as people read them, one way for the CLI's messages (`2.4 MB freed`) and the report's pages."""

from __future__ import annotations


def format_bytes(n: float, small_unit: str = "bytes") -> str:
    """A byte count in decimal units up to GB, `389.2 MB`; under 1000 a whole number of `small_unit` (`bytes`,
    or the report's `B`)."""
    unit = small_unit
    for larger in ("kB", "MB", "GB"):
        if n < 1000:
            break
        n, unit = n / 1000, larger
    return f"{n:.0f} {unit}" if unit == small_unit else f"{n:.1f} {unit}"
