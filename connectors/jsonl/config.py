"""Declared configuration of the ``jsonl`` connector.

Every line of the file is one JSON object: a document. The id, title and text are read
from the fields named here. The ACL is the source-wide ``acl`` unless ``acl_field`` names a
per-line object of the same shape, which then replaces it for that line.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from connectors.base import AclSpec, ConnectorConfig


class JsonlConfig(ConnectorConfig):
    path: Path = Field(description="The JSON-lines file; relative to the source YAML's folder.")
    id_field: str = Field(default="_id", description="Field holding the document's id.")
    title_field: str = Field(
        default="title", description="Field holding the title (optional per line; else the id)."
    )
    text_fields: list[str] = Field(
        default_factory=lambda: ["text"],
        min_length=1,
        description="Fields whose strings make the text, in order, joined by blank lines.",
    )
    url_template: str | None = Field(
        default=None,
        description="A document's URL, '{id}' replaced by its id, e.g. https://x/{id}.",
    )
    acl: AclSpec = Field(description="Who may read every document (required).")
    acl_field: str | None = Field(
        default=None,
        description="Field of a per-line {allow, deny, public} object that replaces `acl`.",
    )
    max_line_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="A longer line is a `too_large` failure, never read whole into memory.",
    )

    @field_validator("url_template")
    @classmethod
    def _url_template(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                v.format(id="x")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(
                    f"bad url_template {v!r}: the only placeholder allowed is {{id}} ({exc})"
                ) from None
        return v
