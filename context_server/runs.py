"""The run queue: agent runs as jobs in the store, claimed by workers under a lease.

A worker claims a job by a compare-and-set UPDATE (``state`` and lease still as it read
them), so two workers never hold the same run, on SQLite or PostgreSQL; on PostgreSQL the
candidate rows are also read ``FOR UPDATE SKIP LOCKED`` so workers do not queue behind each
other. While it works, the worker renews its lease (a heartbeat). A worker that dies stops
renewing: when the lease expires, another worker takes the run over as its next attempt.
Every state change a worker makes is conditioned on still holding the lease, so a worker
that lost its lease (paused, partitioned) cannot overwrite its successor's result.

One run per trigger occurrence: ``(agent, trigger_key)`` is unique (``manual:<uuid>``,
``schedule:<slot>``, ``event:<document>:v<version>``, ``changes:<review>``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import CursorResult, and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from connectors.base import Acl
from context_server.agents import Agent
from context_server.errors import ConflictError, ForbiddenError, NotFoundError, SpecError
from context_server.keys import Caller
from context_server.routing import ContextRouter, Scope
from context_server.store.models import AgentRun, Document, Source, as_utc

RUN_STATES = ("queued", "running", "succeeded", "failed", "cancelled")

#: Retry delays grow from this, doubling per attempt, up to ``MAX_BACKOFF``.
BASE_BACKOFF = timedelta(seconds=5)
MAX_BACKOFF = timedelta(minutes=10)

Clock = Callable[[], datetime]
Beat = Literal["ok", "lost", "cancel"]


def _now() -> datetime:
    return datetime.now(UTC)


def backoff(attempt: int, base: timedelta = BASE_BACKOFF) -> timedelta:
    delay: timedelta = base * (2 ** max(0, attempt - 1))
    return min(MAX_BACKOFF, delay)


@dataclass(frozen=True)
class Enqueued:
    run_id: str
    created: bool  # False: this trigger occurrence already had its run

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "created": self.created}


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value else None


class RunQueue:
    def __init__(self, sessions: sessionmaker[Session], clock: Clock = _now) -> None:
        self.sessions = sessions
        self.clock = clock

    # -- producers ------------------------------------------------------------------------

    def enqueue(
        self,
        agent: Agent,
        *,
        trigger_kind: str,
        trigger_key: str,
        on_behalf_of: str | None,
        requested_by: str,
        input: dict[str, Any] | None = None,
        trigger: dict[str, Any] | None = None,
    ) -> Enqueued:
        """Queue a run of ``agent`` unless ``trigger_key`` already has one."""
        if not agent.spec.runnable:
            raise SpecError(
                f"agent {agent.spec.name!r} has no harness: it serves context but cannot run "
                "(add `harness: {kind: extractive}` and `review: {approvers: [...]}`)"
            )
        user = on_behalf_of or agent.spec.default_user()
        if user is None:
            raise SpecError(
                f"a run of {agent.spec.name!r} acts for a user: give --on-behalf-of user:NAME "
                "(or an `owner` in the agent file)"
            )
        run = AgentRun(
            id=str(uuid.uuid4()),
            agent=agent.spec.name,
            agent_version=agent.version,
            trigger_kind=trigger_kind,
            trigger_key=trigger_key,
            trigger=trigger or {"kind": trigger_kind},
            on_behalf_of=user,
            input=input or {},
            requested_by=requested_by,
            state="queued",
            attempts=0,
            max_attempts=agent.spec.max_attempts,
            available_at=self.clock(),
            cancel_requested=False,
            history=[],
            created_at=self.clock(),
        )
        with self.sessions() as session:
            session.add(run)
            try:
                session.commit()
                return Enqueued(run.id, True)
            except IntegrityError:
                session.rollback()
            existing = session.scalar(
                select(AgentRun.id).where(
                    AgentRun.agent == agent.spec.name, AgentRun.trigger_key == trigger_key
                )
            )
            if existing is None:  # not the duplicate: a genuine integrity problem
                raise ConflictError(f"cannot queue a run of {agent.spec.name!r}")
            return Enqueued(existing, False)

    # -- workers --------------------------------------------------------------------------

    def claim(self, worker: str, lease: timedelta) -> str | None:
        """Take the oldest runnable job (queued and due, or running with an expired lease)
        for ``worker``; its id, or ``None`` when there is none."""
        now = self.clock()
        claimable = or_(
            and_(AgentRun.state == "queued", AgentRun.available_at <= now),
            and_(AgentRun.state == "running", AgentRun.lease_expires_at < now),
        )
        with self.sessions() as session:
            query = (
                select(AgentRun.id, AgentRun.state, AgentRun.attempts, AgentRun.max_attempts)
                .where(claimable)
                .order_by(AgentRun.available_at, AgentRun.created_at)
                .limit(8)
            )
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            for run_id, state, attempts, max_attempts in session.execute(query).all():
                if state == "running" and attempts >= max_attempts:
                    # Its last attempt's worker died: no attempt left to take over.
                    self._abandon(session, run_id, now)
                    continue
                taken: CursorResult[Any] = session.execute(  # type: ignore[assignment]
                    update(AgentRun)
                    .where(AgentRun.id == run_id, claimable)
                    .values(
                        state="running",
                        lease_owner=worker,
                        lease_expires_at=now + lease,
                        heartbeat_at=now,
                        attempts=AgentRun.attempts + 1,
                        started_at=now,
                    )
                    .execution_options(synchronize_session=False)
                )
                if taken.rowcount == 1:
                    if state == "running":  # taken over: note the attempt that died
                        run = session.get(AgentRun, run_id)
                        assert run is not None
                        run.history = [
                            *run.history,
                            {
                                "attempt": attempts,
                                "outcome": "lease_expired",
                                "taken_over_by": worker,
                                "at": now.isoformat(),
                            },
                        ]
                    session.commit()
                    return str(run_id)
            session.commit()
        return None

    def _abandon(self, session: Session, run_id: str, now: datetime) -> None:
        run = session.get(AgentRun, run_id)
        if run is None or run.state != "running":
            return
        run.history = [
            *run.history,
            {"worker": run.lease_owner, "outcome": "lease_expired", "at": now.isoformat()},
        ]
        run.state = "failed"
        run.error = (
            f"the worker running attempt {run.attempts} of {run.max_attempts} stopped "
            "renewing its lease; no attempts left"
        )
        run.finished_at = now
        run.lease_owner = None

    def heartbeat(self, run_id: str, worker: str, lease: timedelta) -> Beat:
        """Renew ``worker``'s lease: ``lost`` when another worker has the run now,
        ``cancel`` when someone asked to cancel it."""
        now = self.clock()
        with self.sessions() as session:
            renewed: CursorResult[Any] = session.execute(  # type: ignore[assignment]
                update(AgentRun)
                .where(
                    AgentRun.id == run_id,
                    AgentRun.lease_owner == worker,
                    AgentRun.state == "running",
                )
                .values(lease_expires_at=now + lease, heartbeat_at=now)
                .execution_options(synchronize_session=False)
            )
            session.commit()
            if renewed.rowcount != 1:
                return "lost"
            cancel = session.scalar(select(AgentRun.cancel_requested).where(AgentRun.id == run_id))
        return "cancel" if cancel else "ok"

    def held(self, session: Session, run_id: str, worker: str) -> AgentRun | None:
        """The run, locked, if ``worker`` still holds it; ``None`` otherwise."""
        query = select(AgentRun).where(
            AgentRun.id == run_id, AgentRun.lease_owner == worker, AgentRun.state == "running"
        )
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update()
        return session.scalar(query)

    def release(
        self, run_id: str, worker: str, *, error: str, retryable: bool, cancelled: bool = False
    ) -> str | None:
        """End ``worker``'s attempt without a result: back to the queue after a backoff
        (``retryable`` with attempts left), else ``failed`` or ``cancelled``. The new
        state, or ``None`` if the lease was lost meanwhile."""
        now = self.clock()
        with self.sessions() as session:
            run = self.held(session, run_id, worker)
            if run is None:
                return None
            outcome = "cancelled" if cancelled else "error"
            run.history = [
                *run.history,
                {
                    "attempt": run.attempts,
                    "worker": worker,
                    "started_at": _iso(run.started_at),
                    "finished_at": now.isoformat(),
                    "outcome": outcome,
                    "error": error,
                },
            ]
            run.error = error
            run.lease_owner = None
            run.lease_expires_at = None
            if cancelled:
                run.state = "cancelled"
                run.finished_at = now
            elif retryable and run.attempts < run.max_attempts:
                run.state = "queued"
                run.available_at = now + backoff(run.attempts)
            else:
                run.state = "failed"
                run.finished_at = now
            session.commit()
            return run.state

    # -- everyone -------------------------------------------------------------------------

    def cancel(self, run_id: str) -> dict[str, Any]:
        """A queued run is cancelled at once; a running one is asked to stop (its worker
        sees that at its next heartbeat); a finished one cannot be."""
        with self.sessions() as session:
            run = self._get(session, run_id)
            if run.state == "queued":
                run.state = "cancelled"
                run.finished_at = self.clock()
                run.cancel_requested = True
            elif run.state == "running":
                run.cancel_requested = True
            else:
                raise ConflictError(
                    f"run {run_id} is {run.state}; only queued or running runs cancel"
                )
            session.commit()
            # What a cancel tells: nothing derived from what the run read (views show the rest).
            return {"run_id": run.id, "state": run.state, "cancel_requested": True}

    def pending(self) -> int:
        """Runs not finished (queued, or running somewhere)."""
        with self.sessions() as session:
            return len(
                session.scalars(
                    select(AgentRun.id).where(AgentRun.state.in_(("queued", "running")))
                ).all()
            )

    @staticmethod
    def _get(session: Session, run_id: str) -> AgentRun:
        run = session.get(AgentRun, run_id)
        if run is None:
            raise NotFoundError(f"no run {run_id!r}")
        return run


def manual_run(
    runtime: Any, caller: Caller, agent_name: str, user: str | None, data: dict[str, Any]
) -> dict[str, Any]:
    """Queue a manual run after checking, now, that the agent may act for the user and, when
    the input names a ``document_id`` (a comment's target), that the run may read it: a
    document it may not read is answered exactly like one that does not exist."""
    agent = runtime.agents.get(agent_name)
    if caller.kind == "agent" and caller.subject != agent_name:
        raise ForbiddenError(f"this key belongs to agent {caller.subject!r}")
    if caller.kind == "user":
        if user not in (None, caller.subject):
            raise ForbiddenError(f"this key belongs to {caller.subject}; not {user}")
        user = caller.subject
    user = user or agent.spec.default_user()
    if user is None:
        raise SpecError("give on_behalf_of: the user the run acts for")
    if not agent.spec.runnable:
        raise SpecError(f"agent {agent_name!r} has no harness; it serves context only")
    scope = ContextRouter(runtime).scope(Caller(kind="agent", subject=agent_name), agent_name, user)
    target = data.get("document_id")
    if target is not None:
        readable_target(runtime, scope, str(target))
    done = RunQueue(runtime.sessions).enqueue(
        agent,
        trigger_kind="manual",
        trigger_key=f"manual:{uuid.uuid4()}",
        on_behalf_of=user,
        requested_by=caller.label,
        input=data,
        trigger={"kind": "manual"},
    )
    return done.to_json()


def readable_target(runtime: Any, scope: Scope, document_id: str) -> Document:
    """The document ``document_id`` if the run's scope may read it (in one of its sources,
    its ACL granting the run's reader); else ``NotFoundError``, the same for a document
    that does not exist, so ids cannot be probed."""
    with runtime.sessions() as session:
        row = session.execute(
            select(Document, Source.name)
            .join(Source, Source.id == Document.source_id)
            .where(Document.id == document_id, Document.deleted_at.is_(None))
        ).first()
        if row is not None:
            document, source = row
            if source in scope.sources and scope.can_read(Acl.model_validate(document.acl)):
                session.expunge(document)
                found: Document = document
                return found
    raise NotFoundError(f"no document {document_id!r} readable here")
