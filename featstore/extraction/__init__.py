"""extraction stage of featstore."""
