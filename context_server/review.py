"""The review queue: a run's output waits here for human decisions, and ships only after
enough approvals, exactly once.

Who may decide on a review: a user who is among the agent's ``review.approvers`` (a group
counts for its members, through the directory) and whom the policy file, if there is one,
lets ``review`` the agent (``p, group:support-leads, agent:ticket-answerer, review``).
Every decision and every refusal goes to the audit log.

Evidence is the run's context bundle: its cited items, with the bundle check (changed,
deleted, access revoked since the run read them). Approving with stale evidence needs an
explicit override, which is recorded. A reviewer sees a citation they may not read today
redacted: its status and source, never its title, address or text.

Shipping: ``approved`` → ``shipping`` is a compare-and-set, so one process ships; a
``shipping`` review whose process died is shipped again after ``SHIP_LEASE`` (the
destination sees the same idempotency key and does not take it twice).
"""

from __future__ import annotations

import difflib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, func, or_, select, update
from sqlalchemy.orm import Session

from connectors import registry
from context_server.errors import ConflictError, ForbiddenError, NotFoundError, SpecError
from context_server.keys import ADMIN, Caller
from context_server.runs import RunQueue
from context_server.shipping import ShipError, ShipOrder, ship
from context_server.store.models import (
    AgentRun,
    AuditEvent,
    Bundle,
    Review,
    ReviewEvent,
    ReviewRevision,
    Source,
    as_utc,
)
from context_server.viewer import Viewer, Views, summary
from context_server.viewer import approvals as approvals_of

REVIEW_STATES = (
    "pending",
    "approved",
    "shipping",
    "shipped",
    "ship_failed",
    "rejected",
    "changes_requested",
    "expired",
)
#: A review left ``shipping`` this long by a process that died is shipped again.
SHIP_LEASE = timedelta(minutes=2)

Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value else None


class ReviewDesk:
    """Review operations over the runtime's store. ``runtime`` is a ``Runtime`` (typed
    loosely: the runtime builds the desk)."""

    def __init__(self, runtime: Any, clock: Clock = _now) -> None:
        self.runtime = runtime
        self.sessions = runtime.sessions
        self.clock = clock
        self.queue = RunQueue(runtime.sessions, clock)
        self.views = Views(runtime)
        #: Called after the destination took the artifact, before that is recorded: tests
        #: crash here to prove a recovery does not ship twice.
        self.after_ship: Callable[[str], None] = lambda _review_id: None

    # -- reading --------------------------------------------------------------------------

    def list_reviews(
        self,
        state: str | None = None,
        agent: str | None = None,
        older_than: timedelta | None = None,
        limit: int = 100,
        viewer: Viewer | str | None = None,
    ) -> dict[str, Any]:
        """Reviews, newest first, as ``viewer`` may see them (``viewer.Views``): titles of
        reviews made from documents they may not read are withheld."""
        if state is not None and state not in REVIEW_STATES:
            raise SpecError(f"unknown review state {state!r}; known: {', '.join(REVIEW_STATES)}")
        self.expire_due()
        query = select(Review).order_by(Review.created_at.desc()).limit(limit)
        if state is not None:
            query = query.where(Review.state == state)
        if agent is not None:
            query = query.where(Review.agent == agent)
        if older_than is not None:
            query = query.where(Review.created_at <= self.clock() - older_than)
        with self.sessions() as session:
            rows = session.scalars(query).all()
            counts = dict(
                session.execute(select(Review.state, func.count()).group_by(Review.state)).all()
            )
            return {
                "reviews": self.views.review_summaries(session, rows, _viewer(viewer)),
                "counts": {s: counts.get(s, 0) for s in REVIEW_STATES},
            }

    def show(self, review_id: str, viewer: Viewer | str | None = None) -> dict[str, Any]:
        """The review with its artifact, revisions, history and evidence, as ``viewer``
        may see it (a ``Viewer``, a user, or ``None``: the admin)."""
        self.expire_due()
        seen = _viewer(viewer)
        with self.sessions() as session:
            out = self.views.review(session, self._get(session, review_id), seen)
        if seen.kind == "user":
            out["may_review"] = (
                out["withheld"] is None and self.refusal(seen.subject, review_id) is None
            )
        return out

    def outcome(self, review_id: str) -> dict[str, Any]:
        """What a decision left: the review's summary with its shipping result. Cheap (no
        evidence check); for the admin's and deciders' eyes (a decider may read all the
        run read); callers that show the review to someone else call ``show``."""
        with self.sessions() as session:
            review = self._get(session, review_id)
            return {
                **summary(review),
                "ship_result": review.ship_result,
                "ship_error": review.ship_error,
            }

    def evidence(self, review_id: str, viewer: Viewer | str | None) -> dict[str, Any]:
        seen = _viewer(viewer)
        with self.sessions() as session:
            review = self._get(session, review_id)
            shown = self.views.withheld(session, review, seen) is None
            return self.views.evidence(session, review, seen, query_shown=shown)

    def visible(self, viewer: Viewer, review: dict[str, Any]) -> bool:
        """Whether a review (its summary) is listed for ``viewer`` at all: the admin every
        one, an agent its own, a user those made for them or that they may decide on."""
        if viewer.kind == "admin":
            return True
        if viewer.kind == "agent":
            return bool(review["agent"] == viewer.subject)
        return (
            review["on_behalf_of"] == viewer.subject
            or self.refusal(viewer.subject, review["id"]) is None
        )

    # -- who may decide -------------------------------------------------------------------

    def refusal(self, actor: str, review_id: str) -> str | None:
        """Why ``actor`` may not decide on the review, or ``None`` when they may."""
        with self.sessions() as session:
            review = self._get(session, review_id)
            return self._refusal(actor, review)

    def _refusal(self, actor: str, review: Review) -> str | None:
        if not actor.startswith("user:"):
            return f"only users review; {actor} is not a user"
        directory = self.runtime.directory
        if not directory.principals_for(actor) & set(review.approvers):
            return (
                f"{actor} may not review {review.agent}'s output (approvers: "
                f"{', '.join(review.approvers)})"
            )
        if not directory.permits(actor, f"agent:{review.agent}", "review"):
            return f"policy does not allow {actor} to review agent {review.agent!r}"
        return None

    # -- decisions ------------------------------------------------------------------------

    def approve(
        self,
        review_id: str,
        actor: str,
        *,
        comment: str = "",
        override_stale: bool = False,
        caller: Caller = ADMIN,
    ) -> dict[str, Any]:
        evidence = self.evidence(review_id, None)
        with self.sessions() as session:
            review = self._decidable(session, review_id, actor, "approve", caller)
            if evidence["stale"] and not override_stale:
                counts = {k: v for k, v in evidence["counts"].items() if v and k != "unchanged"}
                self._audit(session, caller, review, "approve", "denied", "stale evidence")
                session.commit()
                raise ConflictError(
                    "the evidence changed since the run read it ("
                    + ", ".join(f"{v} {k}" for k, v in counts.items())
                    + "); look at it again, then approve with override_stale "
                    "(CLI: --override-stale) to approve anyway"
                )
            if any(a["actor"] == actor for a in approvals_of(review)):
                raise ConflictError(f"{actor} already approved revision {review.revision}")
            detail: dict[str, Any] = {"stale": evidence["stale"]}
            if evidence["stale"]:
                detail.update(override_stale=True, evidence_counts=evidence["counts"])
            self._event(session, review, actor, "approve", comment, detail)
            session.flush()
            approvals = approvals_of(review)
            if len(approvals) >= review.required:
                review.state = "approved"
                review.decided_at = self.clock()
            self._audit(
                session,
                caller,
                review,
                "approve",
                "allowed",
                f"{actor}: {len(approvals)}/{review.required} approvals"
                + (" (stale evidence overridden)" if evidence["stale"] else ""),
            )
            session.commit()
            approved = review.state == "approved"
        if approved:
            self.ship_review(review_id)
        return self.outcome(review_id)

    def reject(
        self, review_id: str, actor: str, *, comment: str = "", caller: Caller = ADMIN
    ) -> dict[str, Any]:
        with self.sessions() as session:
            review = self._decidable(session, review_id, actor, "reject", caller)
            self._event(session, review, actor, "reject", comment)
            review.state = "rejected"
            review.decided_at = self.clock()
            self._audit(session, caller, review, "reject", "allowed", actor)
            session.commit()
        return self.outcome(review_id)

    def request_changes(
        self, review_id: str, actor: str, *, comment: str, caller: Caller = ADMIN
    ) -> dict[str, Any]:
        """Close this review and run the agent again with ``comment`` as extra input (an
        agent without a harness, which submitted through MCP, is not re-run: the comment
        waits on the review for it)."""
        if not comment.strip():
            raise SpecError("say what should change: a comment is required")
        with self.sessions() as session:
            review = self._decidable(session, review_id, actor, "request_changes", caller)
            run = session.get(AgentRun, review.run_id)
            assert run is not None
            comments = [*run.input.get("review_comments", []), comment]
            trigger = {**run.trigger, "kind": "changes", "review_id": review.id, "by": actor}
            run_input = {**run.input, "review_comments": comments}
            user, agent_name = run.on_behalf_of, review.agent
            self._event(session, review, actor, "request_changes", comment)
            review.state = "changes_requested"
            review.decided_at = self.clock()
            self._audit(session, caller, review, "request_changes", "allowed", actor)
            session.commit()
        agent = self.runtime.agents.get(agent_name)
        rerun_id = None
        if agent.spec.runnable:  # an external agent (MCP submit) reads the comment instead
            rerun_id = self.queue.enqueue(
                agent,
                trigger_kind="changes",
                trigger_key=f"changes:{review_id}",
                on_behalf_of=user,
                requested_by=actor,
                input=run_input,
                trigger=trigger,
            ).run_id
        out = self.outcome(review_id)
        out["rerun_id"] = rerun_id
        return out

    def comment(
        self, review_id: str, actor: str, *, comment: str, caller: Caller = ADMIN
    ) -> dict[str, Any]:
        if not comment.strip():
            raise SpecError("the comment is empty")
        with self.sessions() as session:
            review = self._decidable(session, review_id, actor, "comment", caller, open_only=False)
            self._event(session, review, actor, "comment", comment)
            self._audit(session, caller, review, "comment", "allowed", actor)
            session.commit()
        return self.outcome(review_id)

    def defer(
        self,
        review_id: str,
        actor: str,
        *,
        until: datetime | None = None,
        comment: str = "",
        caller: Caller = ADMIN,
    ) -> dict[str, Any]:
        """Leave it pending, noted as deferred (until a time, or until someone decides)."""
        with self.sessions() as session:
            review = self._decidable(session, review_id, actor, "defer", caller)
            review.deferred_until = until or review.expires_at
            self._event(session, review, actor, "defer", comment, {"until": _iso(until)})
            self._audit(session, caller, review, "defer", "allowed", actor)
            session.commit()
        return self.outcome(review_id)

    def edit(
        self, review_id: str, actor: str, *, content: str, comment: str = "", caller: Caller = ADMIN
    ) -> dict[str, Any]:
        """A new revision of the artifact; approvals of earlier revisions no longer count."""
        if not content.strip():
            raise SpecError("the edited artifact is empty")
        with self.sessions() as session:
            review = self._decidable(session, review_id, actor, "edit", caller)
            previous = review.revisions[-1].content
            if content == previous:
                raise ConflictError("the edit changes nothing")
            diff = "".join(
                difflib.unified_diff(
                    previous.splitlines(keepends=True),
                    content.splitlines(keepends=True),
                    f"revision {review.revision}",
                    f"revision {review.revision + 1}",
                )
            )
            review.revision += 1
            review.revisions.append(
                ReviewRevision(
                    number=review.revision,
                    content=content,
                    author=actor,
                    diff=diff,
                    created_at=self.clock(),
                )
            )
            self._event(session, review, actor, "edit", comment, {"lines": diff.count("\n")})
            self._audit(session, caller, review, "edit", "allowed", actor)
            session.commit()
        return self.outcome(review_id)

    def retry_ship(self, review_id: str, actor: str, caller: Caller = ADMIN) -> dict[str, Any]:
        """Ship a ``ship_failed`` review again (after fixing the destination)."""
        with self.sessions() as session:
            review = self._get(session, review_id)
            refusal = self._refusal(actor, review)
            if refusal is not None:
                self._audit(session, caller, review, "retry_ship", "denied", refusal)
                session.commit()
                raise ForbiddenError(refusal)
            if review.state != "ship_failed":
                raise ConflictError(f"review {review_id} is {review.state}, not ship_failed")
            review.state = "approved"
            self._event(session, review, actor, "retry_ship", "")
            self._audit(session, caller, review, "retry_ship", "allowed", actor)
            session.commit()
        self.ship_review(review_id)
        return self.outcome(review_id)

    # -- shipping -------------------------------------------------------------------------

    def ship_review(self, review_id: str) -> str:
        """Ship an approved review once; its state afterwards."""
        now = self.clock()
        with self.sessions() as session:
            claimed: CursorResult[Any] = session.execute(
                update(Review)
                .where(
                    Review.id == review_id,
                    or_(
                        Review.state == "approved",
                        (Review.state == "shipping") & (Review.ship_started_at < now - SHIP_LEASE),
                    ),
                )
                .values(
                    state="shipping",
                    ship_started_at=now,
                    ship_attempts=Review.ship_attempts + 1,
                )
                .execution_options(synchronize_session=False)
            )
            session.commit()
            review = self._get(session, review_id)
            if claimed.rowcount != 1:
                return review.state
            approvals = approvals_of(review)
            if len(approvals) < review.required:  # never: approve() is the only way in
                review.state = "pending"
                session.commit()
                raise ConflictError(f"review {review_id} lacks approvals; nothing shipped")
            order = self._order(session, review, approvals)
        try:
            result = ship(order, self._connector_for)
        except ShipError as exc:
            self._record_ship(review_id, None, str(exc))
            return "ship_failed"
        self.after_ship(review_id)
        self._record_ship(review_id, result, None)
        return "shipped"

    def ship_pending(self) -> list[str]:
        """Ship approved reviews nobody shipped yet, and recover abandoned shipments."""
        now = self.clock()
        with self.sessions() as session:
            ids = list(
                session.scalars(
                    select(Review.id).where(
                        or_(
                            Review.state == "approved",
                            (Review.state == "shipping")
                            & (Review.ship_started_at < now - SHIP_LEASE),
                        )
                    )
                )
            )
        return [i for i in ids if self.ship_review(i) in ("shipped", "ship_failed")]

    def _order(
        self, session: Session, review: Review, approvals: list[dict[str, Any]]
    ) -> ShipOrder:
        bundle = session.get(Bundle, review.bundle_id) if review.bundle_id else None
        citations = []
        if bundle is not None:
            citations = [
                {
                    "n": n,
                    "source": i.source,
                    "document_id": i.document_id,
                    "title": i.title,
                    "url": i.url,
                    "version": i.version,
                }
                for n, i in enumerate(bundle.items, 1)
            ]
        return ShipOrder(
            review_id=review.id,
            run_id=review.run_id,
            key=review.ship_key,
            agent=review.agent,
            title=review.title,
            content=review.revisions[-1].content,
            ship=review.ship or {"kind": "none"},
            output=review.output,
            target=review.target,
            approvals=approvals,
            citations=citations,
        )

    def _record_ship(
        self, review_id: str, result: dict[str, Any] | None, error: str | None
    ) -> None:
        with self.sessions() as session:
            review = self._get(session, review_id)
            if result is not None:
                review.state = "shipped"
                review.shipped_at = self.clock()
                review.ship_result = result
                review.ship_error = None
                self._event(session, review, "system", "ship", "", result)
            else:
                review.state = "ship_failed"
                review.ship_error = error
                self._event(session, review, "system", "ship_failed", error or "")
            self._audit(
                session,
                Caller(kind="admin", subject="system"),
                review,
                "ship",
                "allowed" if result is not None else "error",
                error or str(result),
            )
            session.commit()

    def _connector_for(self, source: str) -> object:
        with self.sessions() as session:
            row = session.scalar(select(Source).where(Source.name == source))
            if row is None:
                raise ShipError(f"no source named {source!r} to write back to")
            return registry.build(row.kind, row.config)

    # -- housekeeping ---------------------------------------------------------------------

    def expire_due(self) -> int:
        now = self.clock()
        with self.sessions() as session:
            due = session.scalars(
                select(Review).where(Review.state == "pending", Review.expires_at < now)
            ).all()
            for review in due:
                review.state = "expired"
                review.decided_at = now
                self._event(session, review, "system", "expire", "")
            session.commit()
            return len(due)

    # -- helpers --------------------------------------------------------------------------

    def _get(self, session: Session, review_id: str) -> Review:
        review = session.get(Review, review_id)
        if review is None:
            raise NotFoundError(f"no review {review_id!r}")
        return review

    def _decidable(
        self,
        session: Session,
        review_id: str,
        actor: str,
        action: str,
        caller: Caller,
        *,
        open_only: bool = True,
    ) -> Review:
        query = select(Review).where(Review.id == review_id)
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update()
        review = session.scalar(query)
        if review is None:
            raise NotFoundError(f"no review {review_id!r}")
        if caller.kind == "agent":
            refusal: str | None = "agents do not review; a user's key or the admin's may"
        elif caller.kind == "user" and caller.subject != actor:
            refusal = f"this key belongs to {caller.subject}; it may not decide as {actor}"
        else:
            refusal = self._refusal(actor, review)
        if refusal is None and actor.startswith("user:"):
            refusal = self.views.withheld(session, review, Viewer.user(actor))
        if refusal is not None:
            self._audit(session, caller, review, action, "denied", refusal)
            session.commit()
            raise ForbiddenError(refusal)
        if (
            review.state == "pending"
            and review.expires_at
            and as_utc(review.expires_at) < self.clock()
        ):
            review.state = "expired"
            self._event(session, review, "system", "expire", "")
            session.commit()
        if open_only and review.state != "pending":
            raise ConflictError(
                f"review {review_id} is {review.state}; only pending reviews take {action}"
            )
        return review

    def _event(
        self,
        session: Session,
        review: Review,
        actor: str,
        action: str,
        comment: str,
        detail: dict[str, Any] | None = None,
    ) -> None:
        review.events.append(
            ReviewEvent(
                actor=actor,
                action=action,
                revision=review.revision,
                comment=comment,
                detail=detail or {},
                at=self.clock(),
            )
        )

    def _audit(
        self,
        session: Session,
        caller: Caller,
        review: Review,
        action: str,
        outcome: str,
        detail: str,
    ) -> None:
        session.add(
            AuditEvent(
                action=f"review_{action}"[:30],
                outcome=outcome,
                key_id=caller.key_id,
                caller=caller.label,
                agent=review.agent,
                on_behalf_of=review.on_behalf_of,
                query=None,
                document_ids=[],
                bundle_id=review.bundle_id,
                detail=f"review {review.id}: {detail}",
            )
        )


def _viewer(viewer: Viewer | str | None) -> Viewer:
    if isinstance(viewer, Viewer):
        return viewer
    return Viewer.parse(viewer)


def new_review_id() -> str:
    return str(uuid.uuid4())
