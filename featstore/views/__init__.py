"""views stage of featstore."""
