"""The audit trail: reading and exporting ``audit_events``, and the record that makes sure
every request for context, documents, bundles, runs and reviews leaves a row, allowed or
refused (``request_record``; the HTTP layer's ``api/audit_trail.py`` closes it).

The table is append-only in the database (the migration installs triggers refusing UPDATE
and DELETE), so an export is a faithful copy of what happened.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event as orm_event
from sqlalchemy import select
from sqlalchemy.orm import Session

from context_server.durations import parse_duration
from context_server.errors import SpecError
from context_server.keys import Caller
from context_server.store.models import AuditEvent, as_utc

_BATCH = 1000


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """An ISO date or time (``2026-11-01``, ``2026-11-01T08:00:00+00:00``; naive is UTC),
    or a duration back from now (``7d``, ``12h``)."""
    try:
        return (now or datetime.now(UTC)) - parse_duration(text)
    except ValueError:
        pass
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise SpecError(
            f"bad time {text!r}: an ISO date or time (2026-11-01, 2026-11-01T08:00:00Z) "
            "or a duration back from now (7d, 12h)"
        ) from None
    try:
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except OverflowError:  # an offset at the calendar's edge (0001-01-01T00:00+01:00)
        raise SpecError(f"bad time {text!r}: outside the calendar") from None


def event_json(event: AuditEvent) -> dict[str, object]:
    at = as_utc(event.at)
    return {
        "id": event.id,
        "at": at.isoformat(),
        "action": event.action,
        "outcome": event.outcome,
        "key_id": event.key_id,
        "caller": event.caller,
        "agent": event.agent,
        "on_behalf_of": event.on_behalf_of,
        "query": event.query,
        "document_ids": list(event.document_ids),
        "bundle_id": event.bundle_id,
        "detail": event.detail,
    }


def export(
    session: Session, since: datetime | None = None, until: datetime | None = None
) -> Iterator[dict[str, object]]:
    """Events in the order they happened, read in batches (the log may be large)."""
    after = 0
    while True:
        query = select(AuditEvent).where(AuditEvent.id > after)
        if since is not None:
            query = query.where(AuditEvent.at >= since)
        if until is not None:
            query = query.where(AuditEvent.at < until)
        batch = session.scalars(query.order_by(AuditEvent.id).limit(_BATCH)).all()
        for event in batch:
            yield event_json(event)
        if len(batch) < _BATCH:
            return
        after = batch[-1].id
        session.expunge_all()


# -- one row for every request that serves or refuses context, documents, bundles, runs and
# reviews. The domain writes rich rows (what was served, why it was refused); the request
# record notices them, and the HTTP layer writes a plain row for a request that ended
# without one (a read of a run, a 401, a 413, a 422 that never reached the domain).


@dataclass
class RequestRecord:
    """What one HTTP request has told the audit trail so far."""

    caller: Caller | None = None
    audited: bool = False


_current: ContextVar[RequestRecord | None] = ContextVar("audit_request", default=None)


@contextmanager
def request_record() -> Iterator[RequestRecord]:
    """Open the record of the request being served (worker threads see the same record:
    they run in a copy of this context, which holds the same object)."""
    record = RequestRecord()
    token = _current.set(record)
    try:
        yield record
    finally:
        _current.reset(token)


def note_caller(caller: Caller) -> None:
    """The request was authenticated as ``caller``."""
    record = _current.get()
    if record is not None:
        record.caller = caller


@orm_event.listens_for(AuditEvent, "after_insert")
def _noted(_mapper: Any, _connection: Any, _target: AuditEvent) -> None:
    record = _current.get()
    if record is not None:
        record.audited = True


def outcome_of(status: int) -> str:
    """An HTTP status as an audit outcome."""
    if status < 400:
        return "allowed"
    return {
        401: "unauthenticated",
        403: "denied",
        404: "not_found",
        409: "conflict",
        413: "too_large",
        422: "invalid",
        429: "throttled",
    }.get(status, "error" if status >= 500 else "refused")


def record_request(
    sessions: Callable[[], Session],
    record: RequestRecord,
    action: str,
    status: int,
    detail: str,
) -> None:
    """Write the row of a request the domain did not audit."""
    caller = record.caller
    with sessions() as session:
        session.add(
            AuditEvent(
                action=action[:30],
                outcome=outcome_of(status),
                key_id=caller.key_id if caller else None,
                caller=caller.label if caller else "unauthenticated",
                agent=caller.subject if caller and caller.kind == "agent" else None,
                on_behalf_of=None,
                query=None,
                document_ids=[],
                bundle_id=None,
                detail=detail[:2000],
            )
        )
        session.commit()
