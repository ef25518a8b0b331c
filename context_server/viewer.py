"""What a viewer may see of runs, reviews and bundles: one model, deny by default.

Every route, page, CLI command and MCP tool that shows a run, a review, a bundle, a bundle
check or evidence builds its answer here, never from the stored rows directly. A view starts
from the fields that derive from no document (ids, agent, states, times, counts, who
approved) and *adds* each field derived from documents only when the viewer may read every
document it derives from:

- a bundle item (title, URL, text, ids, versions): its own document;
- everything a run made (its trigger, input, query, harness input and output, history and
  errors; a review's title, artifact, revisions, comments, target and shipping detail; a
  bundle's query): the run's documents, i.e. the document that triggered it, the document
  its input targets, and every item of its bundle.

A field added later to a stored row is therefore not shown until someone adds it here.

Readable means: the document's ACL in the store now grants the viewer, or, for a document
the store no longer has, the ACL it was cited with. A document known to neither is
unreadable (unknown ⇒ nobody). Who the viewer is:

- the admin (the server's token, or an admin CLI command without ``--as``) reads all;
- a user reads what their principals, resolved from today's memberships, are granted;
- an agent key reads, for each run or bundle, what its agent could read for that run's
  user today (by the agent's ``acting_as``), so revoked access is not served back to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from connectors.base import Acl, check_principal
from context_server.errors import NotFoundError, SpecError
from context_server.keys import Caller
from context_server.store.models import (
    AgentRun,
    AgentVersion,
    Bundle,
    BundleItem,
    Document,
    Review,
    ReviewEvent,
    as_utc,
)
from policies.access import Directory

#: What a listing shows instead of a title derived from documents the viewer may not read.
WITHHELD_TITLE = "(withheld)"

Reader = Callable[[Acl | None], bool]


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value else None


def _everything(_acl: Acl | None) -> bool:
    return True


def _nothing(_acl: Acl | None) -> bool:
    return False


@dataclass(frozen=True)
class Viewer:
    """Who is looking. ``kind`` ``admin`` sees everything; ``user`` and ``agent`` see what
    they may read (see the module docstring)."""

    kind: Literal["admin", "user", "agent"]
    subject: str = "admin"

    @classmethod
    def admin(cls) -> Viewer:
        return cls("admin")

    @classmethod
    def user(cls, principal: str) -> Viewer:
        """``user:NAME``; anything else is a ``SpecError`` naming what was given."""
        try:
            if not check_principal(principal).startswith("user:"):
                raise ValueError(f"{principal!r} is not a user: write user:NAME")
        except ValueError as exc:
            raise SpecError(str(exc)) from None
        return cls("user", principal)

    @classmethod
    def of(cls, caller: Caller) -> Viewer:
        """The viewer an API key or the admin token stands for."""
        if caller.kind == "admin":
            return cls.admin()
        if caller.kind == "agent":
            return cls("agent", caller.subject)
        return cls("user", caller.subject)

    @classmethod
    def parse(cls, as_user: str | None) -> Viewer:
        """A CLI's ``--as``: the admin when not given."""
        return cls.admin() if as_user is None else cls.user(as_user)

    @property
    def label(self) -> str:
        if self.kind == "agent":
            return f"agent:{self.subject}"
        return self.subject  # "admin", or the user principal


@dataclass
class Provenance:
    """The documents a run's products derive from, and the ACL each is readable by."""

    documents: dict[str, set[str]] = field(default_factory=dict)  # run id -> document ids
    acls: dict[str, Acl | None] = field(default_factory=dict)  # document id -> ACL

    def of(self, run_id: str | None) -> set[str]:
        return self.documents.get(run_id or "", set())


def reads(mode: str, user: frozenset[str], agent: frozenset[str]) -> Callable[[Acl], bool]:
    """Whether an ACL lets a request read, by ``acting_as``: the user's principals, the
    agent's own, or both."""

    def readable(acl: Acl) -> bool:
        if mode == "as_agent":
            return acl.grants(agent)
        if mode == "intersection":
            return acl.grants(user) and acl.grants(agent)
        return acl.grants(user)

    return readable


def agent_closure(directory: Directory, name: str, principals: Iterable[str]) -> frozenset[str]:
    """``agent:<name>`` and the agent's declared principals, with their groups."""
    return frozenset().union(*(directory.principals_for(p) for p in (f"agent:{name}", *principals)))


def _run_documents(run: AgentRun) -> set[str]:
    """Document ids a run's trigger and input name (the bundle's are added separately)."""
    out: set[str] = set()
    document = (run.trigger or {}).get("document") or {}
    if isinstance(document, dict) and document.get("id"):
        out.add(str(document["id"]))
    target = (run.input or {}).get("document_id")
    if target:
        out.add(str(target))
    return out


class Views:
    """Builds every view of runs, reviews and bundles (``runtime``: a ``Runtime``)."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.directory: Directory = runtime.directory

    # -- who reads what -------------------------------------------------------------------

    def reader(
        self, viewer: Viewer, *, on_behalf_of: str | None = None, agent: str | None = None
    ) -> Reader:
        """Whether ``viewer`` may read a document with this ACL, for the run or bundle made
        by ``agent`` for ``on_behalf_of``."""
        if viewer.kind == "admin":
            return _everything
        if viewer.kind == "user":
            principals = self.directory.principals_for(viewer.subject)
            return lambda acl: acl is not None and acl.grants(principals)
        if agent != viewer.subject:
            return _nothing
        return self._agent_reader(viewer.subject, on_behalf_of)

    def _agent_reader(self, name: str, on_behalf_of: str | None) -> Reader:
        try:
            spec = self.runtime.agents.get(name).spec
        except Exception:  # an agent whose file no longer validates reads nothing
            return _nothing
        user = self.directory.principals_for(on_behalf_of) if on_behalf_of else frozenset()
        own = agent_closure(self.directory, name, spec.principals)
        readable = reads(spec.acting_as, user, own)
        return lambda acl: acl is not None and readable(acl)

    def provenance(self, session: Session, runs: Iterable[AgentRun]) -> Provenance:
        """The documents each run's products derive from, with their ACLs: batched, as a
        listing asks this for a whole page."""
        runs = list(runs)
        out = Provenance()
        for run in runs:
            out.documents[run.id] = _run_documents(run)
        by_bundle = {run.bundle_id: run.id for run in runs if run.bundle_id}
        cited: dict[str, dict[str, Any]] = {}
        if by_bundle:
            for bundle_id, document_id, acl in session.execute(
                select(BundleItem.bundle_id, BundleItem.document_id, BundleItem.acl).where(
                    BundleItem.bundle_id.in_(list(by_bundle))
                )
            ):
                out.documents[by_bundle[bundle_id]].add(document_id)
                cited[document_id] = acl
        out.acls = self._acls(session, set().union(*out.documents.values()), cited)
        return out

    @staticmethod
    def _acls(
        session: Session, ids: set[str], cited: dict[str, dict[str, Any]]
    ) -> dict[str, Acl | None]:
        """The ACL each document is readable by: the store's now, else the cited one, else
        ``None`` (unknown: nobody)."""
        current: dict[str, dict[str, Any]] = {}
        if ids:
            rows = session.execute(select(Document.id, Document.acl).where(Document.id.in_(ids)))
            current = {document_id: acl for document_id, acl in rows}
        out: dict[str, Acl | None] = {}
        for document_id in ids:
            raw = current.get(document_id) or cited.get(document_id)
            out[document_id] = Acl.model_validate(raw) if raw is not None else None
        return out

    @staticmethod
    def unreadable(provenance: Provenance, run_id: str | None, reader: Reader) -> int:
        return sum(1 for d in provenance.of(run_id) if not reader(provenance.acls.get(d)))

    # -- runs -----------------------------------------------------------------------------

    @staticmethod
    def sees_run(viewer: Viewer, run: AgentRun) -> bool:
        """Which runs a viewer is shown at all: the admin all, an agent key its agent's,
        a user key those acting for its user."""
        if viewer.kind == "admin":
            return True
        if viewer.kind == "agent":
            return run.agent == viewer.subject
        return run.on_behalf_of == viewer.subject

    def list_runs(
        self,
        viewer: Viewer,
        state: str | None = None,
        agent: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Recent runs the viewer is shown, newest first (filtered before the limit)."""
        query = select(AgentRun).order_by(AgentRun.created_at.desc()).limit(limit)
        if state is not None:
            query = query.where(AgentRun.state == state)
        if agent is not None:
            query = query.where(AgentRun.agent == agent)
        if viewer.kind == "agent":
            query = query.where(AgentRun.agent == viewer.subject)
        elif viewer.kind == "user":
            query = query.where(AgentRun.on_behalf_of == viewer.subject)
        with self.runtime.sessions() as session:
            return self.runs(session, session.scalars(query).all(), viewer)

    def show_run(self, run_id: str, viewer: Viewer) -> dict[str, Any]:
        """One run as the viewer may see it; ``NotFoundError`` alike for a run that does
        not exist and one the viewer is not shown."""
        with self.runtime.sessions() as session:
            run = session.get(AgentRun, run_id)
            if run is None or not self.sees_run(viewer, run):
                raise NotFoundError(f"no run {run_id!r} visible here")
            return self.run(session, run, viewer)

    def runs(
        self, session: Session, runs: Sequence[AgentRun], viewer: Viewer
    ) -> list[dict[str, Any]]:
        provenance = self.provenance(session, runs)
        return [self._run(run, viewer, provenance, full=False) for run in runs]

    def run(self, session: Session, run: AgentRun, viewer: Viewer) -> dict[str, Any]:
        return self._run(run, viewer, self.provenance(session, [run]), full=True)

    def _run(
        self, run: AgentRun, viewer: Viewer, provenance: Provenance, *, full: bool
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "run_id": run.id,
            "agent": run.agent,
            "agent_version": run.agent_version,
            "state": run.state,
            "trigger_kind": run.trigger_kind,
            "on_behalf_of": run.on_behalf_of,
            "requested_by": run.requested_by,
            "attempts": run.attempts,
            "max_attempts": run.max_attempts,
            "bundle_id": run.bundle_id,
            "cancel_requested": run.cancel_requested,
            "created_at": _iso(run.created_at),
            "started_at": _iso(run.started_at),
            "finished_at": _iso(run.finished_at),
            "available_at": _iso(run.available_at),
            "lease_owner": run.lease_owner,
            "lease_expires_at": _iso(run.lease_expires_at),
        }
        reader = self.reader(viewer, on_behalf_of=run.on_behalf_of, agent=run.agent)
        hidden = self.unreadable(provenance, run.id, reader)
        out["withheld"] = _withheld(hidden, viewer) if hidden else None
        # Derived from what the run read: the trigger key names the triggering document,
        # errors may quote the template's variables or the harness's output.
        derived: dict[str, Any] = {"trigger_key": run.trigger_key, "error": run.error}
        if full:
            derived.update(
                trigger=run.trigger,
                input=run.input,
                query=run.query,
                harness_input=run.harness_input,
                harness_output=run.harness_output,
                history=run.history,
            )
        if hidden:
            derived = dict.fromkeys(derived)
            if full:
                derived["history"] = [_attempt_outline(a) for a in run.history or []]
        out.update(derived)
        return out

    # -- bundles --------------------------------------------------------------------------

    def bundle(self, session: Session, bundle: Bundle, viewer: Viewer) -> dict[str, Any]:
        """A stored bundle as ``viewer`` may see it: the items it may read, and how many
        more there are; the query only when it may read what the query was made from."""
        reader = self.reader(viewer, on_behalf_of=bundle.on_behalf_of, agent=bundle.agent)
        acls = self._acls(
            session,
            {i.document_id for i in bundle.items},
            {i.document_id: i.acl for i in bundle.items},
        )
        items = [i for i in bundle.items if reader(acls.get(i.document_id))]
        out: dict[str, Any] = {
            "bundle_id": bundle.id,
            "agent": bundle.agent,
            "agent_version": bundle.agent_version,
            "acting_as": bundle.acting_as,
            "on_behalf_of": bundle.on_behalf_of,
            "principals": bundle.principals,
            "sources": bundle.sources,
            "budget_tokens": bundle.budget_tokens,
            "used_tokens": sum(i.tokens for i in items),
            "key_id": bundle.key_id,
            "created_at": _iso(bundle.created_at),
            "withheld_items": len(bundle.items) - len(items),
            "query": None,
            "items": [item_json(i, include_acl=True) for i in items],
        }
        if self._query_readable(session, bundle, reader):
            out["query"] = bundle.query
        return out

    def _query_readable(self, session: Session, bundle: Bundle, reader: Reader) -> bool:
        """A bundle's query derives from the documents of the run that asked for it (a
        template over the trigger document); a bundle asked for directly, from nothing."""
        runs = session.scalars(select(AgentRun).where(AgentRun.bundle_id == bundle.id)).all()
        provenance = self.provenance(session, runs)
        return all(self.unreadable(provenance, run.id, reader) == 0 for run in runs)

    def check(self, session: Session, bundle: Bundle) -> dict[str, Any]:
        """For each served item: ``unchanged``, ``changed`` (a newer version exists),
        ``deleted``, or ``access_revoked`` (the bundle's principal may no longer read it,
        by the document's ACL and the group memberships of now). Unredacted: callers show
        it through ``checked``."""
        readable = self._bundle_reader_now(session, bundle)
        ids = {item.document_id for item in bundle.items}
        documents = {d.id: d for d in session.scalars(select(Document).where(Document.id.in_(ids)))}
        items = []
        for item in bundle.items:
            document = documents.get(item.document_id)
            current: int | None = None
            if document is None or document.deleted_at is not None:
                status = "deleted"
            else:
                current = document.version
                if not readable(Acl.model_validate(document.acl)):
                    status = "access_revoked"
                elif document.version != item.version:
                    status = "changed"
                else:
                    status = "unchanged"
            items.append(
                {
                    "rank": item.rank,
                    "document_id": item.document_id,
                    "chunk_id": item.chunk_id,
                    "title": item.title,
                    "served_version": item.version,
                    "current_version": current if status != "access_revoked" else None,
                    "status": status,
                }
            )
        counts = {s: 0 for s in ("unchanged", "changed", "deleted", "access_revoked")}
        for entry in items:
            counts[str(entry["status"])] += 1
        return {
            "bundle_id": bundle.id,
            "checked_at": datetime.now(UTC).isoformat(),
            "stale": counts["unchanged"] != len(items),
            "counts": counts,
            "items": items,
        }

    def _bundle_reader_now(self, session: Session, bundle: Bundle) -> Callable[[Acl], bool]:
        """Whether the bundle's principal could read an ACL today: principal sets are
        resolved again from the current memberships."""
        directory = self.directory
        user = directory.principals_for(bundle.on_behalf_of) if bundle.on_behalf_of else frozenset()
        agent = agent_closure(directory, bundle.agent, declared_principals(session, bundle))
        return reads(bundle.acting_as, user, agent)

    def checked(
        self, session: Session, bundle: Bundle, viewer: Viewer, check: dict[str, Any]
    ) -> dict[str, Any]:
        """A bundle check (``check``'s result) as ``viewer`` may see it: an item it may
        not read shows its rank and status only."""
        reader = self.reader(viewer, on_behalf_of=bundle.on_behalf_of, agent=bundle.agent)
        acls = self._acls(
            session,
            {i.document_id for i in bundle.items},
            {i.document_id: i.acl for i in bundle.items},
        )
        readable = {i.rank for i in bundle.items if reader(acls.get(i.document_id))}
        items = []
        for entry in check["items"]:
            if entry["rank"] in readable:
                items.append({**entry, "redacted": False})
            else:
                items.append({"rank": entry["rank"], "status": entry["status"], "redacted": True})
        return {**check, "items": items}

    # -- reviews --------------------------------------------------------------------------

    def review_summaries(
        self, session: Session, reviews: Sequence[Review], viewer: Viewer
    ) -> list[dict[str, Any]]:
        runs = {
            r.id: r
            for r in session.scalars(
                select(AgentRun).where(AgentRun.id.in_([v.run_id for v in reviews]))
            )
        }
        provenance = self.provenance(session, runs.values())
        out = []
        for review in reviews:
            reader = self.reader(viewer, on_behalf_of=review.on_behalf_of, agent=review.agent)
            hidden = self.unreadable(provenance, review.run_id, reader)
            if review.run_id not in runs and viewer.kind != "admin":
                hidden = max(hidden, 1)  # its run is gone: what it read is unknown
            listed = summary(review)
            listed["withheld"] = _withheld(hidden, viewer) if hidden else None
            if hidden:
                listed["title"] = WITHHELD_TITLE
            out.append(listed)
        return out

    def withheld(self, session: Session, review: Review, viewer: Viewer) -> str | None:
        """Why ``viewer`` may not see what the review's run made, or ``None``."""
        (listed,) = self.review_summaries(session, [review], viewer)
        withheld: str | None = listed["withheld"]
        return withheld

    def review(self, session: Session, review: Review, viewer: Viewer) -> dict[str, Any]:
        """The review with its artifact, revisions, history and evidence, as ``viewer``
        may see it."""
        run = session.get(AgentRun, review.run_id)
        out = self.review_summaries(session, [review], viewer)[0]
        hidden = out["withheld"] is not None
        out.update(
            approvals=approvals(review),
            ship=review.ship,
            content=None,
            content_withheld=f"withheld: {out['withheld']}" if hidden else None,
            revisions=[
                {
                    "number": r.number,
                    "author": r.author,
                    "created_at": _iso(r.created_at),
                    "diff": None if hidden else r.diff,
                }
                for r in review.revisions
            ],
            events=[event_json(e, detailed=not hidden) for e in review.events],
            run=None,
            target=None,
            ship_result=None,
            ship_error=None,
        )
        if run is not None:
            out["run"] = {
                "run_id": run.id,
                "attempts": run.attempts,
                "started_at": _iso(run.started_at),
                "finished_at": _iso(run.finished_at),
                "trigger": None,
                "input": None,
                "query": None,
            }
        if not hidden:
            out.update(
                content=review.revisions[-1].content,
                target=review.target,
                ship_result=review.ship_result,
                ship_error=review.ship_error,
            )
            if run is not None:
                out["run"].update(trigger=run.trigger, input=run.input, query=run.query)
        out["evidence"] = self.evidence(session, review, viewer, query_shown=not hidden)
        return out

    def evidence(
        self, session: Session, review: Review, viewer: Viewer, *, query_shown: bool
    ) -> dict[str, Any]:
        """The run's bundle, checked today: each item as ``viewer`` may see it."""
        bundle = session.get(Bundle, review.bundle_id) if review.bundle_id else None
        if bundle is None:
            return {"bundle_id": None, "stale": False, "counts": {}, "items": [], "redacted": 0}
        check = self.check(session, bundle)
        status = {item["rank"]: item for item in check["items"]}
        reader = self.reader(viewer, on_behalf_of=review.on_behalf_of, agent=review.agent)
        acls = self._acls(
            session,
            {i.document_id for i in bundle.items},
            {i.document_id: i.acl for i in bundle.items},
        )
        items: list[dict[str, Any]] = []
        for number, item in enumerate(bundle.items, 1):
            checked = status.get(item.rank, {})
            shown: dict[str, Any] = {
                "n": number,
                "redacted": True,
                "source": item.source,
                "status": checked.get("status"),
            }
            if reader(acls.get(item.document_id)):
                shown.update(
                    redacted=False,
                    document_id=item.document_id,
                    chunk_id=item.chunk_id,
                    title=item.title,
                    section=item.section,
                    url=item.url,
                    version=item.version,
                    content_hash=item.content_hash,
                    document_updated_at=_iso(item.document_updated_at),
                    retrieved_at=_iso(bundle.created_at),
                    text=item.text,
                    current_version=checked.get("current_version"),
                )
            items.append(shown)
        return {
            "bundle_id": bundle.id,
            "retrieved_at": _iso(bundle.created_at),
            "query": bundle.query if query_shown else None,
            "checked_at": check["checked_at"],
            "stale": check["stale"],
            "counts": check["counts"],
            "redacted": sum(1 for i in items if i["redacted"]),
            "items": items,
        }


def _withheld(count: int, viewer: Viewer) -> str:
    return (
        f"this draft was made from {count} document(s) {viewer.label} may not read; a "
        "reviewer who may read them all must decide"
    )


def _attempt_outline(attempt: dict[str, Any]) -> dict[str, Any]:
    """What an attempt's record says that no document does."""
    keep = ("attempt", "worker", "started_at", "finished_at", "seconds", "outcome")
    return {k: attempt[k] for k in keep if k in attempt}


def approvals(review: Review) -> list[dict[str, Any]]:
    """Distinct approvers of the current revision."""
    seen: dict[str, dict[str, Any]] = {}
    for event in review.events:
        if event.action == "approve" and event.revision == review.revision:
            seen.setdefault(event.actor, {"actor": event.actor, "at": _iso(event.at)})
    return list(seen.values())


def item_json(item: BundleItem, *, include_acl: bool) -> dict[str, Any]:
    citation: dict[str, Any] = {
        "source": item.source,
        "document_id": item.document_id,
        "chunk_id": item.chunk_id,
        "title": item.title,
        "section": item.section,
        "url": item.url,
        "version": item.version,
        "updated_at": _iso(item.document_updated_at),
    }
    if include_acl:
        citation["content_hash"] = item.content_hash
        citation["acl"] = item.acl
    return {
        "text": item.text,
        "score": round(item.score, 6),
        "tokens": item.tokens,
        "citation": citation,
    }


def summary(review: Review) -> dict[str, Any]:
    """A review's row in the queue. ``title`` derives from the run's documents: views
    replace it for a viewer who may not read them."""
    return {
        "id": review.id,
        "state": review.state,
        "agent": review.agent,
        "agent_version": review.agent_version,
        "run_id": review.run_id,
        "title": review.title,
        "on_behalf_of": review.on_behalf_of,
        "bundle_id": review.bundle_id,
        "revision": review.revision,
        "required": review.required,
        "approvers": review.approvers,
        "ship_kind": (review.ship or {}).get("kind", "none"),
        "created_at": _iso(review.created_at),
        "expires_at": _iso(review.expires_at),
        "deferred_until": _iso(review.deferred_until),
        "decided_at": _iso(review.decided_at),
        "shipped_at": _iso(review.shipped_at),
    }


def event_json(event: ReviewEvent, *, detailed: bool = True) -> dict[str, Any]:
    """A decision or note. Comments and details may quote the draft: shown only with it."""
    return {
        "at": _iso(event.at),
        "actor": event.actor,
        "action": event.action,
        "revision": event.revision,
        "comment": event.comment if detailed else None,
        "detail": event.detail if detailed else {},
    }


def declared_principals(session: Session, bundle: Bundle) -> list[str]:
    """The principals the agent file that served ``bundle`` declared."""
    row = session.get(AgentVersion, bundle.agent_version)
    return list(row.spec.get("principals", [])) if row is not None else []
