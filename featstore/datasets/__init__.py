"""datasets stage of featstore."""
