"""Connectors: sources → SourceDocument streams. Imports: stdlib, pydantic, httpx."""
