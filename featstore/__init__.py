"""featstore: an activation cache for probing attention, with a SQL catalog and lazy views."""

from featstore.version import __version__

__all__ = ["__version__"]


def __getattr__(name: str):
    """`featstore.open_store` without importing the heavy stack for every CLI call."""
    if name == "open_store":
        from featstore.api import open_store

        return open_store
    raise AttributeError(f"module 'featstore' has no attribute {name!r}")
