"""The report: a static site of what the probes found, written by `featstore report` (see `site.py`)."""
