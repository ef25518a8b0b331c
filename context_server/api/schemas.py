"""Response models of the context API: they document the JSON in OpenAPI (agents generate
clients from it) and, as FastAPI response models, keep anything unlisted out of answers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class Citation(BaseModel):
    source: str
    document_id: str
    chunk_id: str
    title: str
    section: str | None
    url: str | None
    version: int = Field(description="The document's version when served (1, 2, ...).")
    updated_at: str | None = Field(description="When the document last changed (ISO 8601).")


class ContextItem(BaseModel):
    text: str
    score: float
    tokens: int = Field(description="Tokens of `text` by the embedding model's tokenizer.")
    citation: Citation


class ContextResponse(BaseModel):
    bundle_id: str
    agent: str
    agent_version: str = Field(description="SHA-256 of the agent file that routed the request.")
    on_behalf_of: str | None
    query: str
    budget_tokens: int
    used_tokens: int
    created_at: str | None
    items: list[ContextItem]
    candidates: int = Field(description="Permitted search hits considered before packing.")
    near_duplicates_dropped: int


class Acl(BaseModel):
    users: list[str]
    groups: list[str]
    public: bool
    deny: list[str]


class ServedCitation(Citation):
    content_hash: str
    acl: Acl = Field(description="The document's ACL when it was served.")


class ServedItem(BaseModel):
    text: str
    score: float
    tokens: int
    citation: ServedCitation


class BundleResponse(BaseModel):
    bundle_id: str
    agent: str
    agent_version: str
    acting_as: str
    on_behalf_of: str | None
    principals: dict[str, list[str]] = Field(
        description="The resolved principal sets the search ran with."
    )
    sources: list[str]
    query: str | None = Field(
        description="Withheld (null) when it was made from a document the caller may not read."
    )
    budget_tokens: int
    used_tokens: int = Field(description="Tokens of the items shown.")
    key_id: str | None
    created_at: str | None
    withheld_items: int = Field(
        description="Items served that the caller may not read today (not shown)."
    )
    items: list[ServedItem]


class CheckedItem(BaseModel):
    rank: int
    status: Literal["unchanged", "changed", "deleted", "access_revoked"]
    redacted: bool = Field(
        description="The caller may not read this item today: only rank and status are shown."
    )
    document_id: str | None = None
    chunk_id: str | None = None
    title: str | None = None
    served_version: int | None = None
    current_version: int | None = None


class CheckResponse(BaseModel):
    bundle_id: str
    checked_at: str
    stale: bool
    counts: dict[str, int]
    items: list[CheckedItem]


class DocumentChunk(BaseModel):
    chunk_id: str
    ordinal: int
    section: str | None
    tokens: int
    text: str


class DocumentResponse(BaseModel):
    document_id: str
    source: str
    title: str
    url: str | None
    version: int
    updated_at: str | None
    mime_type: str | None
    author: str | None
    metadata: dict[str, Any] = Field(description="Source-specific fields (labels, status, ...).")
    chunks: list[DocumentChunk]


class KeyInfo(BaseModel):
    id: str
    kind: Literal["agent", "user"]
    subject: str
    label: str
    created_at: str
    last_used_at: str | None
    revoked_at: str | None


class CreatedKey(KeyInfo):
    key: str = Field(description="The bearer key. Shown only in this response.")


class KeyList(BaseModel):
    keys: list[KeyInfo]
