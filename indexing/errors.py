"""Indexing errors. A document that cannot be parsed is a value (``ParseFailure``), not these.

IndexingError
├── IndexLockedError        another process owns the embedded index
├── EmbedderMismatchError   the index was built by another embedder
└── IndexUnavailableError   the Qdrant server cannot be reached
"""


class IndexingError(Exception):
    pass


class IndexLockedError(IndexingError):
    pass


class EmbedderMismatchError(IndexingError):
    pass


class IndexUnavailableError(IndexingError):
    pass
