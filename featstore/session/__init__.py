"""What a command holds while it runs: the store (its build lock or lease) and the project's mirror in it."""
