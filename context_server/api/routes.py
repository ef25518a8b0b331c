"""Routes: health, the context API (any key), and administration (the admin token)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from context_server import deadline
from context_server.agents import MAX_BUDGET_TOKENS
from context_server.api.deps import AdminDep, CallerDep, RouterDep, RuntimeDep, administers
from context_server.api.schemas import (
    ADMIN_RESPONSES,
    KEY_RESPONSES,
    MAX_LIST,
    NDJSON,
    BundleResponse,
    CheckResponse,
    ContextResponse,
    CreatedKey,
    DocumentResponse,
    KeyInfo,
    KeyList,
    Label,
    Moment,
    Name,
    PrincipalText,
    QueryText,
    SourceNames,
)
from context_server.audit import parse_time
from context_server.routing import ContextFilters
from context_server.runtime import SearchMode
from context_server.specs import PrincipalsSpec, SourceSpec

public = APIRouter()
v1 = APIRouter(prefix="/v1", responses=KEY_RESPONSES)  # every route takes a caller (a key)
admin = APIRouter(prefix="/v1", dependencies=[AdminDep], responses=ADMIN_RESPONSES)

#: An id or name in a path or query (ids are UUIDs or hex; names are at most 100).
Ident = Annotated[str, Path(max_length=255)]
QueryName = Annotated[str | None, Query(max_length=100)]
QueryPrincipal = Annotated[str | None, Query(max_length=255)]


@public.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


# -- context (agent and user keys) ----------------------------------------------------------


class Filters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: SourceNames | None = Field(
        default=None, description="Narrow to these of the agent's sources."
    )
    updated_after: Moment | None = Field(
        default=None, description="Only documents updated at or after this time."
    )


class ContextRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent: Name = Field(description="The declared agent whose profile routes the request.")
    on_behalf_of: PrincipalText = Field(description="The user the agent acts for, e.g. user:alice.")
    query: QueryText = Field(
        description="What the agent needs context for (CONTEXT_SERVER_MAX_QUERY_CHARS may "
        "lower the limit)."
    )
    budget_tokens: int | None = Field(default=None, ge=1, le=MAX_BUDGET_TOKENS)
    filters: Filters | None = None


AsUser = Annotated[
    str | None,
    Query(alias="as", description="Admin only: show it as this user (user:NAME) would see it."),
]


@v1.post(
    "/context",
    response_model=ContextResponse,
    responses={503: {"description": "The request passed its deadline and was stopped."}},
)
def context(body: ContextRequest, caller: CallerDep, router: RouterDep) -> dict[str, Any]:
    """Cited items for one agent run, packed into the token budget, stored as a bundle.
    The request must finish within CONTEXT_SERVER_CONTEXT_DEADLINE_SECONDS: past it, it
    stops with 503 and stores nothing."""
    filters = None
    if body.filters is not None:
        sources = tuple(body.filters.sources) if body.filters.sources is not None else None
        filters = ContextFilters(sources=sources, updated_after=body.filters.updated_after)
    with deadline.within(router.runtime.settings.context_deadline_seconds):
        return router.route(
            caller, body.agent, body.on_behalf_of, body.query, body.budget_tokens, filters
        )


@v1.get("/bundles/{bundle_id}", response_model=BundleResponse)
def get_bundle(
    bundle_id: Ident, caller: CallerDep, router: RouterDep, as_: AsUser = None
) -> dict[str, Any]:
    """A stored bundle: the items and versions served, principals, profile version; items
    the caller may no longer read are left out (``withheld_items`` counts them)."""
    return router.bundle(caller, bundle_id, as_)


@v1.get("/bundles/{bundle_id}/check", response_model=CheckResponse)
def check_bundle(
    bundle_id: Ident, caller: CallerDep, router: RouterDep, as_: AsUser = None
) -> dict[str, Any]:
    """Per item: unchanged, changed, deleted, or access_revoked since it was served."""
    return router.check(caller, bundle_id, as_)


@v1.get("/documents/{document_id}", response_model=DocumentResponse)
def get_document(
    document_id: Ident,
    caller: CallerDep,
    router: RouterDep,
    agent: QueryName = None,
    on_behalf_of: QueryPrincipal = None,
) -> dict[str, Any]:
    """A document and its chunks, scoped like context: 404 when not readable."""
    return router.document(caller, document_id, agent, on_behalf_of)


@v1.get("/sources")
def list_sources(runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    """Each source's status: documents, chunks, last sync with its counts. A failed sync's
    message (it may quote paths or a vendor's answer) and the process that ran it are
    shown to administrators only."""
    sources = [s.to_json() for s in runtime.list_sources()]
    if not administers(runtime, caller):
        for source in sources:
            if source["last_sync"]:
                source["last_sync"] = {**source["last_sync"], "error": None, "owner": None}
    return {"sources": sources}


# -- administration (the admin token) ---------------------------------------------------


@admin.post("/sources")
def add_source(spec: SourceSpec, runtime: RuntimeDep) -> dict[str, Any]:
    """Relative paths in ``config`` are not resolved here: send absolute ones."""
    return runtime.add_source(spec).to_json()


@admin.get("/sources/{name}/failures")
def source_failures(name: Ident, runtime: RuntimeDep) -> dict[str, Any]:
    """Documents the source's last sync could not ingest, with reasons."""
    return {"source": name, "failures": runtime.failures(name)}


class SyncRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: Name | None = Field(default=None, description="One source; all when omitted.")


@admin.post("/sync")
def sync(body: SyncRequest, runtime: RuntimeDep) -> dict[str, Any]:
    return {"runs": [r.to_json() for r in runtime.sync(body.source)]}


@admin.put("/principals")
def load_principals(spec: PrincipalsSpec, runtime: RuntimeDep) -> dict[str, int]:
    return runtime.load_principals(spec)


@admin.get("/principals/{principal}")
def principal_closure(principal: Ident, runtime: RuntimeDep) -> dict[str, Any]:
    return {"principal": principal, "principals": sorted(runtime.principals_for(principal))}


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    query: QueryText
    as_: PrincipalText = Field(alias="as", description="The principal searching, e.g. user:alice.")
    k: int = Field(default=10, ge=1, le=MAX_LIST)
    sources: SourceNames | None = None
    mode: SearchMode = Field(default="hybrid", description="dense, keyword or hybrid.")


@admin.post("/search")
def search(body: SearchRequest, runtime: RuntimeDep) -> dict[str, Any]:
    results = runtime.search(body.query, body.as_, body.k, body.sources, body.mode)
    return {"results": [r.to_json() for r in results]}


@admin.get("/agents")
def list_agents(runtime: RuntimeDep) -> dict[str, Any]:
    """Declared agents with their versions, and files that do not validate."""
    return runtime.list_agents()


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent: Name | None = Field(default=None, description="The agent the key acts as.")
    user: PrincipalText | None = Field(default=None, description="The user the key acts for.")
    label: Label = ""

    @model_validator(mode="after")
    def _one(self) -> KeyRequest:
        if (self.agent is None) == (self.user is None):
            raise ValueError("give exactly one of agent or user")
        return self


@admin.post("/keys", response_model=CreatedKey)
def create_key(body: KeyRequest, runtime: RuntimeDep) -> dict[str, Any]:
    """The response is the only time the key is shown."""
    kind: Literal["agent", "user"] = "agent" if body.agent is not None else "user"
    subject = body.agent if body.agent is not None else body.user
    assert subject is not None
    return runtime.create_key(kind, subject, body.label)


@admin.get("/keys", response_model=KeyList)
def list_keys(runtime: RuntimeDep) -> dict[str, Any]:
    return {"keys": runtime.list_keys()}


@admin.delete("/keys/{key_id}", response_model=KeyInfo)
def revoke_key(key_id: Ident, runtime: RuntimeDep) -> dict[str, Any]:
    return runtime.revoke_key(key_id)


@admin.get(
    "/audit",
    response_class=StreamingResponse,
    responses={200: {"description": "One audit event per line, oldest first.", **NDJSON}},
)
def audit_export(
    runtime: RuntimeDep,
    since: str | None = Query(
        default=None, max_length=64, description="ISO time, or a duration like 7d."
    ),
    until: str | None = Query(
        default=None, max_length=64, description="ISO time, or a duration like 1h."
    ),
) -> StreamingResponse:
    """Audit events as JSON lines, oldest first."""
    start = parse_time(since) if since else None
    end = parse_time(until) if until else None

    def lines() -> Iterator[str]:
        for event in runtime.audit_export(start, end):
            yield json.dumps(event) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")
