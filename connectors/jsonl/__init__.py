"""The ``jsonl`` connector: a JSON-lines export file, one document per line."""
