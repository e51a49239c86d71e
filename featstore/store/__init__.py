"""store stage of featstore."""
