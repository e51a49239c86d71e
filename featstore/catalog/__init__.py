"""catalog stage of featstore."""
