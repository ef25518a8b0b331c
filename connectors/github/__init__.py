"""The ``github`` connector: issues (and optionally pull requests) with their comments."""
