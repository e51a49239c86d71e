"""probing stage of featstore."""
