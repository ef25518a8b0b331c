"""Context routing: the right context for one agent run, and its provenance.

``ContextRouter.route`` turns ``{agent, on_behalf_of, query, budget}`` into a bundle:

1. **Who may ask.** The agent's file must validate; an agent key may act only as its own
   agent, a user key only for its own user. The user must be one the agent ``serves``
   (themselves or a group they are in), and the policy file, when there is one, must
   allow ``act_for`` and ``read`` on each source. Refusals are ``ForbiddenError`` (403)
   and are audited like answers.
2. **What it may read.** The principal sets follow ``acting_as``: the user's closure, the
   agent's own, or both at once (intersection). They, the permitted sources and the
   freshness limit go *inside* the index query; nothing is filtered afterwards.
3. **What fits.** Hybrid search returns candidates; each is checked against the store
   (the chunk still exists at that version), near-duplicates are dropped (word-shingle
   Jaccard), and the rest are packed greedily by score into the token budget (each chunk's
   tokens were counted by the embedding model's tokenizer when it was made).
4. **What was served.** The bundle is stored with the exact items, document versions and
   ACLs, the principal sets, the agent file's version and the query; an audit event
   records the request. ``check`` later tells, per item, whether the document changed,
   was deleted, or is no longer readable by the bundle's principals.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from connectors.base import Acl, check_principal
from context_server import deadline
from context_server.agents import MAX_BUDGET_TOKENS, Agent, spec_json
from context_server.errors import ForbiddenError, NotFoundError, SpecError
from context_server.keys import Caller
from context_server.packing import Shingles, pack, shingles
from context_server.runtime import Runtime
from context_server.store.models import (
    AgentVersion,
    AuditEvent,
    Bundle,
    BundleItem,
    Chunk,
    Document,
    Source,
    as_utc,
)
from context_server.viewer import Viewer, Views, agent_closure, item_json, reads
from indexing.index import AccessFilter, Hit

#: Candidates fetched from the index before de-duplication and packing.
CANDIDATES = 50


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value else None


@dataclass(frozen=True)
class ContextFilters:
    sources: tuple[str, ...] | None = None
    updated_after: datetime | None = None


@dataclass(frozen=True)
class Scope:
    """What one request may read: principal sets, sources, freshness."""

    agent: Agent
    on_behalf_of: str
    user: frozenset[str]
    agent_principals: frozenset[str]
    sources: tuple[str, ...]
    updated_after: datetime | None

    def access(self) -> AccessFilter:
        after = self.updated_after.timestamp() if self.updated_after else None
        sources = frozenset(self.sources)
        mode = self.agent.spec.acting_as
        if mode == "as_agent":
            return AccessFilter(self.agent_principals, sources, updated_after=after)
        also = self.agent_principals if mode == "intersection" else None
        return AccessFilter(self.user, sources, also=also, updated_after=after)

    def principals_json(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {"user": sorted(self.user)}
        if self.agent.spec.acting_as != "on_behalf_of":
            out["agent"] = sorted(self.agent_principals)
        return out

    def can_read(self, acl: Acl) -> bool:
        """The store-side twin of ``access()``'s ACL part."""
        return reads(self.agent.spec.acting_as, self.user, self.agent_principals)(acl)


@dataclass
class _Candidate:
    hit: Hit
    document: Document
    chunk: Chunk
    tokens: int
    shingles: Shingles = field(default_factory=frozenset)


class ContextRouter:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    # -- scope ----------------------------------------------------------------------------

    def scope(
        self,
        caller: Caller,
        agent_name: str,
        on_behalf_of: str,
        filters: ContextFilters | None = None,
    ) -> Scope:
        """Everything ``caller`` may read through ``agent_name`` for ``on_behalf_of``, or
        ``ForbiddenError`` saying why not."""
        agent = self.runtime.agents.get(agent_name)
        spec = agent.spec
        try:
            if not check_principal(on_behalf_of).startswith("user:"):
                raise ValueError(f"on_behalf_of must be a user (user:<name>), not {on_behalf_of!r}")
        except ValueError as exc:
            raise SpecError(str(exc)) from exc
        if caller.kind == "agent" and caller.subject != spec.name:
            raise ForbiddenError(
                f"this key belongs to agent {caller.subject!r}; it may not act as {spec.name!r}"
            )
        if caller.kind == "user" and caller.subject != on_behalf_of:
            raise ForbiddenError(
                f"this key belongs to {caller.subject}; it may not ask on behalf of {on_behalf_of}"
            )
        directory = self.runtime.directory
        user = directory.principals_for(on_behalf_of)
        me = spec.own_principal()
        if not user & set(spec.serves):
            raise ForbiddenError(
                f"agent {spec.name!r} does not serve {on_behalf_of} "
                f"(it serves {', '.join(spec.serves) or 'nobody'})"
            )
        if not directory.permits(me, on_behalf_of, "act_for"):
            raise ForbiddenError(
                f"policy does not allow agent {spec.name!r} to act for {on_behalf_of}"
            )
        allowed = [s for s in spec.sources if directory.permits(me, f"source:{s}", "read")]
        filters = filters or ContextFilters()
        if filters.sources is not None:
            for name in filters.sources:
                if name not in spec.sources:
                    raise ForbiddenError(
                        f"agent {spec.name!r} may not draw from source {name!r} "
                        f"(its sources: {', '.join(spec.sources)})"
                    )
                if name not in allowed:
                    raise ForbiddenError(
                        f"policy does not allow agent {spec.name!r} to read source {name!r}"
                    )
            allowed = [s for s in allowed if s in filters.sources]
        elif not allowed:
            raise ForbiddenError(f"policy allows agent {spec.name!r} to read none of its sources")
        agent_principals: frozenset[str] = frozenset()
        if spec.acting_as != "on_behalf_of":
            agent_principals = agent_closure(directory, spec.name, spec.principals)
        updated_after = filters.updated_after
        max_age = spec.max_age_delta()
        if max_age is not None:
            limit = datetime.now(UTC) - max_age
            updated_after = max(limit, as_utc(updated_after) if updated_after else limit)
        return Scope(
            agent=agent,
            on_behalf_of=on_behalf_of,
            user=user,
            agent_principals=agent_principals,
            sources=tuple(allowed),
            updated_after=as_utc(updated_after) if updated_after else None,
        )

    # -- context --------------------------------------------------------------------------

    def route(
        self,
        caller: Caller,
        agent_name: str,
        on_behalf_of: str,
        query: str,
        budget_tokens: int | None = None,
        filters: ContextFilters | None = None,
    ) -> dict[str, Any]:
        if not query.strip():
            raise SpecError("the query is empty")
        limit = self.runtime.settings.max_query_chars
        if len(query) > limit:  # refused before it is embedded, stored or audited
            raise SpecError(
                f"the query has {len(query)} characters; at most {limit} (max_query_chars)"
            )
        if budget_tokens is not None and not 1 <= budget_tokens <= MAX_BUDGET_TOKENS:
            raise SpecError(f"budget_tokens must be between 1 and {MAX_BUDGET_TOKENS}")
        try:
            scope = self.scope(caller, agent_name, on_behalf_of, filters)
        except (ForbiddenError, NotFoundError, SpecError) as exc:
            self._audit_refusal(caller, "context", agent_name, on_behalf_of, query, exc)
            raise
        budget = budget_tokens or scope.agent.spec.budget_tokens
        deadline.check("the search")
        hits = self.runtime.search_hits(query, scope.access(), CANDIDATES) if scope.sources else []
        deadline.check("packing")
        with self.runtime.sessions() as session:
            candidates = self._candidates(session, scope, hits)
            kept, duplicates = pack(candidates, budget)
            deadline.check("storing the bundle")
            bundle = self._store_bundle(session, caller, scope, query, budget, kept)
            session.add(
                AuditEvent(
                    action="context",
                    outcome="allowed",
                    key_id=caller.key_id,
                    caller=caller.label,
                    agent=scope.agent.spec.name,
                    on_behalf_of=on_behalf_of,
                    query=query,
                    document_ids=sorted({c.document.id for c in kept}),
                    bundle_id=bundle.id,
                    detail=f"{len(kept)} items, {duplicates} near-duplicates dropped",
                )
            )
            session.commit()
            out = bundle_json(bundle)
        out["candidates"] = len(candidates)
        out["near_duplicates_dropped"] = duplicates
        return out

    def _candidates(self, session: Session, scope: Scope, hits: list[Hit]) -> list[_Candidate]:
        """Hits whose chunk is still in the store at the indexed version. The ACL was
        applied inside the query; the store's ACL is checked again only as a guard against
        an index that lags the store (a hit failing it is dropped, never served)."""
        if not hits:
            return []
        chunk_ids = [h.payload.chunk_id for h in hits]
        rows = session.execute(
            select(Chunk, Document)
            .join(Document, Document.id == Chunk.document_id)
            .where(Chunk.id.in_(chunk_ids), Document.deleted_at.is_(None))
        ).all()
        found = {chunk.id: (chunk, document) for chunk, document in rows}
        out = []
        for hit in hits:
            pair = found.get(hit.payload.chunk_id)
            if pair is None:
                continue
            chunk, document = pair
            if str(document.version) != hit.payload.version:
                continue
            if not scope.can_read(Acl.model_validate(document.acl)):
                continue
            out.append(
                _Candidate(
                    hit=hit,
                    document=document,
                    chunk=chunk,
                    # counted by the model's tokenizer when the chunk was made
                    tokens=chunk.tokens,
                    shingles=shingles(chunk.text),
                )
            )
        return out

    def _store_bundle(
        self,
        session: Session,
        caller: Caller,
        scope: Scope,
        query: str,
        budget: int,
        kept: list[_Candidate],
    ) -> Bundle:
        agent = scope.agent
        if session.get(AgentVersion, agent.version) is None:
            try:  # concurrent first requests of a new version race to record it
                with session.begin_nested():
                    session.add(
                        AgentVersion(
                            version=agent.version, name=agent.spec.name, spec=spec_json(agent)
                        )
                    )
            except IntegrityError:
                pass  # another request recorded it first
        bundle = Bundle(
            id=str(uuid.uuid4()),
            agent=agent.spec.name,
            agent_version=agent.version,
            on_behalf_of=scope.on_behalf_of,
            acting_as=agent.spec.acting_as,
            principals=scope.principals_json(),
            sources=list(scope.sources),
            query=query,
            budget_tokens=budget,
            used_tokens=sum(c.tokens for c in kept),
            key_id=caller.key_id,
            created_at=datetime.now(UTC),
        )
        bundle.items = [
            BundleItem(
                rank=rank,
                document_id=c.document.id,
                chunk_id=c.chunk.id,
                source=c.hit.payload.source,  # the source's name, as indexed
                title=c.document.title,
                section=c.chunk.section,
                url=c.document.url,
                version=c.document.version,
                content_hash=c.document.content_hash,
                document_updated_at=c.document.updated_at or c.document.indexed_at,
                acl=dict(c.document.acl),
                score=float(c.hit.score),
                tokens=c.tokens,
                text=c.chunk.text,
            )
            for rank, c in enumerate(kept)
        ]
        session.add(bundle)
        session.flush()
        return bundle

    # -- bundles --------------------------------------------------------------------------

    def _visible_bundle(self, session: Session, caller: Caller, bundle_id: str) -> Bundle:
        bundle = session.get(Bundle, bundle_id)
        visible = bundle is not None and (
            caller.kind == "admin"
            or (caller.kind == "agent" and bundle.agent == caller.subject)
            or (caller.kind == "user" and bundle.on_behalf_of == caller.subject)
        )
        if bundle is None or not visible:
            # The same answer whether it does not exist or is someone else's.
            raise NotFoundError(f"no bundle {bundle_id!r} visible to this key")
        return bundle

    def bundle(self, caller: Caller, bundle_id: str, as_user: str | None = None) -> dict[str, Any]:
        """A stored bundle as the caller (or, for the admin, ``as_user``) may see it
        (``viewer.Views.bundle``)."""
        viewer = _looking(caller, as_user)
        with self.runtime.sessions() as session:
            bundle = self._visible_bundle(session, caller, bundle_id)
            return Views(self.runtime).bundle(session, bundle, viewer)

    def check(self, caller: Caller, bundle_id: str, as_user: str | None = None) -> dict[str, Any]:
        """For each served item: ``unchanged``, ``changed``, ``deleted`` or
        ``access_revoked`` since it was served (``viewer.Views.check``); items the caller
        (or ``as_user``) may not read show their rank and status only."""
        viewer = _looking(caller, as_user)
        with self.runtime.sessions() as session:
            bundle = self._visible_bundle(session, caller, bundle_id)
            views = Views(self.runtime)
            return views.checked(session, bundle, viewer, views.check(session, bundle))

    # -- documents ------------------------------------------------------------------------

    def document(
        self,
        caller: Caller,
        document_id: str,
        agent_name: str | None = None,
        on_behalf_of: str | None = None,
    ) -> dict[str, Any]:
        """One document with its chunks, if the same rules as for context let the caller
        read it (through ``agent_name`` for ``on_behalf_of``). A document it may not read
        is reported as not found: its existence is not disclosed."""
        if caller.kind == "agent":
            agent_name = agent_name or caller.subject
        if caller.kind == "user":
            on_behalf_of = on_behalf_of or caller.subject
        readable: Callable[[Acl], bool] | None = None  # None: the admin, unrestricted
        sources: set[str] | None = None
        if agent_name is not None:
            if on_behalf_of is None:
                raise SpecError("on_behalf_of is required to read through an agent")
            try:
                scope = self.scope(caller, agent_name, on_behalf_of)
            except (ForbiddenError, NotFoundError, SpecError) as exc:
                self._audit_refusal(caller, "document", agent_name, on_behalf_of, None, exc)
                raise
            readable, sources = scope.can_read, set(scope.sources)
        elif on_behalf_of is not None:
            if caller.kind == "user" and on_behalf_of != caller.subject:
                raise ForbiddenError(
                    f"this key belongs to {caller.subject}; it may not read for {on_behalf_of}"
                )
            try:
                check_principal(on_behalf_of)
            except ValueError as exc:  # a malformed principal is bad input (422)
                raise SpecError(str(exc)) from exc
            principals = self.runtime.directory.principals_for(on_behalf_of)

            def readable(acl: Acl) -> bool:
                return acl.grants(principals)

        with self.runtime.sessions() as session:
            row = session.execute(
                select(Document, Source.name)
                .join(Source, Source.id == Document.source_id)
                .where(Document.id == document_id, Document.deleted_at.is_(None))
            ).first()
            ok = row is not None
            if row is not None:
                document, source = row
                in_scope = sources is None or source in sources
                ok = in_scope and (readable is None or readable(Acl.model_validate(document.acl)))
            session.add(
                AuditEvent(
                    action="document",
                    outcome="allowed" if ok else "not_found",
                    key_id=caller.key_id,
                    caller=caller.label,
                    agent=agent_name,
                    on_behalf_of=on_behalf_of,
                    query=None,
                    document_ids=[document_id] if ok else [],
                    bundle_id=None,
                )
            )
            session.commit()
            if row is None or not ok:
                raise NotFoundError(f"no document {document_id!r} readable here")
            return {
                "document_id": document.id,
                "source": source,
                "title": document.title,
                "url": document.url,
                "version": document.version,
                "updated_at": _iso(document.updated_at or document.indexed_at),
                "mime_type": document.mime_type,
                "author": document.author,
                "metadata": document.doc_metadata,
                "chunks": [
                    {
                        "chunk_id": c.id,
                        "ordinal": c.ordinal,
                        "section": c.section,
                        "tokens": c.tokens,
                        "text": c.text,
                    }
                    for c in document.chunks
                ],
            }

    # -- audit ----------------------------------------------------------------------------

    def _audit_refusal(
        self,
        caller: Caller,
        action: str,
        agent: str,
        on_behalf_of: str | None,
        query: str | None,
        exc: Exception,
    ) -> None:
        with self.runtime.sessions() as session:
            session.add(
                AuditEvent(
                    action=action,
                    # refused by the rules, or not a valid request (unknown agent, ...)
                    outcome="denied" if isinstance(exc, ForbiddenError) else "invalid",
                    key_id=caller.key_id,
                    caller=caller.label,
                    agent=agent,
                    on_behalf_of=on_behalf_of,
                    query=query,
                    document_ids=[],
                    bundle_id=None,
                    detail=str(exc),
                )
            )
            session.commit()


def _looking(caller: Caller, as_user: str | None) -> Viewer:
    """Who a read is shown to: the caller, or the user the admin names."""
    if as_user is None:
        return Viewer.of(caller)
    if caller.kind != "admin":
        raise ForbiddenError(f"only the admin may look as another user; this is {caller.label}")
    return Viewer.user(as_user)


def bundle_json(bundle: Bundle) -> dict[str, Any]:
    """The bundle just served, as the context API answers it (its caller asked for it)."""
    return {
        "bundle_id": bundle.id,
        "agent": bundle.agent,
        "agent_version": bundle.agent_version,
        "on_behalf_of": bundle.on_behalf_of,
        "query": bundle.query,
        "budget_tokens": bundle.budget_tokens,
        "used_tokens": bundle.used_tokens,
        "created_at": _iso(bundle.created_at),
        "items": [item_json(item, include_acl=False) for item in bundle.items],
    }
