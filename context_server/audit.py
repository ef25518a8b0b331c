"""The audit trail: reading and exporting ``audit_events`` (written by the router).

The table is append-only in the database (the migration installs triggers refusing UPDATE
and DELETE), so an export is a faithful copy of what happened.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from context_server.durations import parse_duration
from context_server.errors import SpecError
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
