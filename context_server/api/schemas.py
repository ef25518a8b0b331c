"""Response models of the context API: they document the JSON in OpenAPI (agents generate
clients from it) and, as FastAPI response models, keep anything unlisted out of answers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field
from starlette.responses import JSONResponse

from context_server.errors import SpecError
from context_server.settings import MAX_ARTIFACT_CHARS, MAX_QUERY_CHARS

# -- what requests may carry -----------------------------------------------------------------
#
# Every string and list field of every request model is capped: a request is bounded by its
# fields, not only by the body size (CONTEXT_SERVER_MAX_REQUEST_BYTES). The caps follow the
# store's columns (names 100, principals 255) so that nothing valid here fails there.


def valid_unicode(text: str) -> str:
    """JSON can carry a lone surrogate (``"\\ud800"``), which no store, log or response
    can encode: refused here as bad input, not met later as a 500."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            "the text holds a lone UTF-16 surrogate (e.g. \\ud800), which is not valid Unicode"
        ) from None
    return text


Utf8 = AfterValidator(valid_unicode)
#: An agent's or a source's name.
Name = Annotated[str, Field(min_length=1, max_length=100), Utf8]
#: A principal as text, e.g. ``user:alice`` (checked for its form where it is used).
PrincipalText = Annotated[str, Field(min_length=1, max_length=255), Utf8]
QueryText = Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS), Utf8]
Label = Annotated[str, Field(max_length=255), Utf8]
Comment = Annotated[str, Field(max_length=10_000), Utf8]
Artifact = Annotated[str, Field(min_length=1, max_length=MAX_ARTIFACT_CHARS), Utf8]


def within_calendar(moment: datetime) -> datetime:
    """A time every computation can handle: in UTC it stays within years 2..9998 (the
    calendar's own edges overflow when converted or shifted)."""
    try:
        utc = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except OverflowError:
        utc = None
    if utc is None or not 2 <= utc.year <= 9998:
        raise ValueError("the time must lie between the years 2 and 9998")
    return moment


#: A time in a request (``updated_after``, ``until``).
Moment = Annotated[datetime, AfterValidator(within_calendar)]
#: At most this many sources may be named in one request.
MAX_LIST = 100
SourceNames = Annotated[list[Name], Field(max_length=MAX_LIST)]
#: A run's input: a few named values that fill the agent's query template.
InputKey = Annotated[str, Field(min_length=1, max_length=100), Utf8]
InputText = Annotated[str, Field(max_length=MAX_QUERY_CHARS), Utf8]
InputValue = (
    InputText | int | float | bool | None | Annotated[list[InputText], Field(max_length=MAX_LIST)]
)
RunInput = Annotated[dict[InputKey, InputValue], Field(max_length=50)]


def check_artifact(text: str, limit: int) -> None:
    """``max_artifact_chars`` (a setting, at most the model's ceiling) for an artifact."""
    if len(text) > limit:
        raise SpecError(
            f"the artifact has {len(text)} characters; at most {limit} (max_artifact_chars)"
        )


class SafeJSONResponse(JSONResponse):
    """JSON whose text is always encodable: a lone surrogate in a message (an echoed
    input, a name) is written as its ``\\uXXXX`` escape instead of failing the response."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(
            content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
        )
        return text.encode("utf-8", errors="backslashreplace")


# -- what answers carry ----------------------------------------------------------------------


class ErrorResponse(BaseModel):
    """Every refusal: ``detail`` says what and why (a list of field problems for a
    request that does not validate); ``error`` names the domain error, when there is one."""

    detail: str | list[dict[str, Any]]
    error: str | None = None


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


#: The refusals every keyed route may answer (documented in the OpenAPI schema).
KEY_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("The body is not JSON text (e.g. not UTF-8)."),
    401: _error("No bearer key, or an unknown or revoked one (refused before the body is read)."),
    403: _error("The key may not do this."),
    404: _error("No such thing visible to this key."),
    409: _error("The operation collides with the current state."),
    413: _error("The body is larger than CONTEXT_SERVER_MAX_REQUEST_BYTES."),
    422: _error("The request is not valid (a field, a name, a principal, a duration)."),
    503: _error("The index is busy or unreachable, or the request passed its deadline."),
}
ADMIN_RESPONSES = KEY_RESPONSES
NDJSON: dict[str, Any] = {
    "content": {
        "application/x-ndjson": {
            "schema": {"type": "string", "description": "JSON objects, one per line."}
        }
    }
}


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
