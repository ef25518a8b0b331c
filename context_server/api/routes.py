"""Routes of the foundation API: health, sources, sync, principals, search."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from context_server.api.deps import AdminDep, RuntimeDep
from context_server.runtime import SearchMode
from context_server.specs import PrincipalsSpec, SourceSpec

public = APIRouter()
v1 = APIRouter(prefix="/v1", dependencies=[AdminDep])


@public.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@v1.get("/sources")
def list_sources(runtime: RuntimeDep) -> dict[str, Any]:
    return {"sources": [s.to_json() for s in runtime.list_sources()]}


@v1.post("/sources")
def add_source(spec: SourceSpec, runtime: RuntimeDep) -> dict[str, Any]:
    """Relative paths in ``config`` are not resolved here: send absolute ones."""
    return runtime.add_source(spec).to_json()


@v1.get("/sources/{name}/failures")
def source_failures(name: str, runtime: RuntimeDep) -> dict[str, Any]:
    """Documents the source's last sync could not ingest, with reasons."""
    return {"source": name, "failures": runtime.failures(name)}


class SyncRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str | None = Field(default=None, description="One source; all when omitted.")


@v1.post("/sync")
def sync(body: SyncRequest, runtime: RuntimeDep) -> dict[str, Any]:
    return {"runs": [r.to_json() for r in runtime.sync(body.source)]}


@v1.put("/principals")
def load_principals(spec: PrincipalsSpec, runtime: RuntimeDep) -> dict[str, int]:
    return runtime.load_principals(spec)


@v1.get("/principals/{principal}")
def principal_closure(principal: str, runtime: RuntimeDep) -> dict[str, Any]:
    return {"principal": principal, "principals": sorted(runtime.principals_for(principal))}


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    query: str = Field(min_length=1)
    as_: str = Field(alias="as", description="The principal searching, e.g. user:alice.")
    k: int = Field(default=10, ge=1, le=100)
    sources: list[str] | None = None
    mode: SearchMode = Field(default="hybrid", description="dense, keyword or hybrid.")


@v1.post("/search")
def search(body: SearchRequest, runtime: RuntimeDep) -> dict[str, Any]:
    results = runtime.search(body.query, body.as_, body.k, body.sources, body.mode)
    return {"results": [r.to_json() for r in results]}
