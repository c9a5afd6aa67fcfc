"""loader: source -> verified bytes. Resolves, fetches, and re-verifies every file on every load; executes nothing."""
