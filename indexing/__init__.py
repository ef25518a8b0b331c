"""Indexing: documents → parsed → chunks → vectors → index. Imports: connectors.base."""
