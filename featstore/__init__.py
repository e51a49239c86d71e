"""featstore: an activation cache for probing attention, with a SQL catalog and lazy views."""

__version__ = "0.1.0"
