"""Context server: composition root."""

__version__ = "0.1.0"
