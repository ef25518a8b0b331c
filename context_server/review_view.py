"""What a review looks like to whoever looks at it: its evidence (the run's bundle, checked
today, redacted per viewer), what is withheld from a viewer who may not read what the draft
was made from, and the summaries the queue lists.

The rule for a viewer: a document counts as readable by its ACL now, or by the ACL it was
cited with when it is gone from the store.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from connectors.base import Acl
from context_server.errors import NotFoundError
from context_server.keys import ADMIN
from context_server.routing import ContextRouter
from context_server.store.models import (
    AgentRun,
    Bundle,
    BundleItem,
    Document,
    Review,
    ReviewEvent,
    as_utc,
)


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value else None


def _grants(acl: dict[str, Any] | None, principals: Iterable[str]) -> bool:
    return acl is not None and Acl.model_validate(acl).grants(frozenset(principals))


def _get(session: Session, review_id: str) -> Review:
    review = session.get(Review, review_id)
    if review is None:
        raise NotFoundError(f"no review {review_id!r}")
    return review


class ReviewView:
    """Evidence and withholding over the runtime's store (``runtime``: a ``Runtime``)."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.sessions = runtime.sessions

    def withheld(self, review_id: str, viewer: str) -> str | None:
        """Why ``viewer`` may not see the artifact, or ``None``. The artifact is made from
        what the run read: whoever may not read one of its cited documents (or the document
        that triggered the run) sees neither the artifact nor its revisions, and may not
        decide on it; someone who can read them all must."""
        with self.sessions() as session:
            unreadable = self.unreadable(session, [_get(session, review_id)], viewer)
        count = unreadable.get(review_id, 0)
        if not count:
            return None
        return (
            f"withheld: this draft was made from {count} document(s) {viewer} may not "
            "read; a reviewer who may read them all must decide"
        )

    def unreadable(self, session: Session, reviews: list[Review], viewer: str) -> dict[str, int]:
        """For each review, how many documents its run read (cited items, the trigger
        document) ``viewer`` may not read today: by the document's ACL now, or the ACL it
        was cited with when it is gone. Batched: the queue asks this for a whole page."""
        principals = self.runtime.directory.principals_for(viewer)
        runs = {
            run.id: run
            for run in session.scalars(
                select(AgentRun).where(AgentRun.id.in_([r.run_id for r in reviews]))
            )
        }
        items = session.execute(
            select(BundleItem.bundle_id, BundleItem.document_id, BundleItem.acl).where(
                BundleItem.bundle_id.in_({r.bundle_id for r in reviews if r.bundle_id})
            )
        ).all()
        read: dict[str, set[str]] = {}
        cited_acl: dict[str, dict[str, Any]] = {}
        for bundle_id, document_id, acl in items:
            read.setdefault(bundle_id, set()).add(document_id)
            cited_acl[document_id] = acl
        triggers: dict[str, str] = {}
        for review in reviews:
            run = runs.get(review.run_id)
            document = ((run.trigger if run else None) or {}).get("document") or {}
            if document.get("id"):
                triggers[review.id] = str(document["id"])
        wanted = set(cited_acl) | set(triggers.values())
        current: dict[str, dict[str, Any]] = dict(
            session.execute(select(Document.id, Document.acl).where(Document.id.in_(wanted))).all()
        )

        def readable(document_id: str) -> bool:
            return _grants(current.get(document_id) or cited_acl.get(document_id), principals)

        out = {}
        for review in reviews:
            documents = set(read.get(review.bundle_id or "", set()))
            if review.id in triggers:
                documents.add(triggers[review.id])
            out[review.id] = sum(1 for d in documents if not readable(d))
        return out

    def evidence(self, review_id: str, viewer: str | None) -> dict[str, Any]:
        with self.sessions() as session:
            review = _get(session, review_id)
            bundle = session.get(Bundle, review.bundle_id) if review.bundle_id else None
            if bundle is None:
                return {"bundle_id": None, "stale": False, "counts": {}, "items": []}
            check = ContextRouter(self.runtime).check(ADMIN, bundle.id)
            status = {item["rank"]: item for item in check["items"]}
            documents = {
                d.id: d
                for d in session.scalars(
                    select(Document).where(Document.id.in_({i.document_id for i in bundle.items}))
                )
            }
            principals = (
                self.runtime.directory.principals_for(viewer) if viewer is not None else None
            )
            items = []
            for number, item in enumerate(bundle.items, 1):
                checked = status.get(item.rank, {})
                document = documents.get(item.document_id)
                acl = document.acl if document is not None else item.acl
                if principals is not None and not _grants(acl, principals):
                    items.append(
                        {
                            "n": number,
                            "redacted": True,
                            "source": item.source,
                            "status": checked.get("status"),
                        }
                    )
                    continue
                items.append(
                    {
                        "n": number,
                        "redacted": False,
                        "source": item.source,
                        "document_id": item.document_id,
                        "chunk_id": item.chunk_id,
                        "title": item.title,
                        "section": item.section,
                        "url": item.url,
                        "version": item.version,
                        "content_hash": item.content_hash,
                        "document_updated_at": _iso(item.document_updated_at),
                        "retrieved_at": _iso(bundle.created_at),
                        "text": item.text,
                        "status": checked.get("status"),
                        "current_version": checked.get("current_version"),
                    }
                )
            return {
                "bundle_id": bundle.id,
                "retrieved_at": _iso(bundle.created_at),
                "query": bundle.query,
                "checked_at": check["checked_at"],
                "stale": check["stale"],
                "counts": check["counts"],
                "redacted": sum(1 for i in items if i["redacted"]),
                "items": items,
            }


def withhold(shown: dict[str, Any], reason: str) -> None:
    """Blank what a review page shows of the artifact and of what the run read."""
    shown.update(content=None, content_withheld=reason, title="(withheld)")
    shown["revisions"] = [{**r, "diff": None} for r in shown["revisions"]]
    shown["events"] = [{**e, "detail": {}} if e["action"] == "ship" else e for e in shown["events"]]
    if shown.get("run"):
        shown["run"] = {**shown["run"], "trigger": None, "input": None, "query": None}
    shown["target"] = None
    shown["evidence"] = {**shown["evidence"], "query": None}


def summary(review: Review) -> dict[str, Any]:
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


def event_json(event: ReviewEvent) -> dict[str, Any]:
    return {
        "at": _iso(event.at),
        "actor": event.actor,
        "action": event.action,
        "revision": event.revision,
        "comment": event.comment,
        "detail": event.detail,
    }
