"""API keys: created for an agent or a user, shown once, stored as a hash, revocable.

A key reads ``csk_<id>_<secret>``. ``id`` is public (it names the key in listings, audit
events and revocation); only the SHA-256 of ``secret`` is stored. Secrets are 256 random
bits, so a plain hash is enough (no password stretching needed) and lookups stay O(1).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from connectors.base import check_principal
from context_server.errors import NotFoundError, SpecError
from context_server.store.models import ApiKey, WebSession, as_utc

PREFIX = "csk"
KeyKind = Literal["agent", "user"]

#: ``last_used_at`` is written at most this often per key (not on every request).
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class Caller:
    """Who is calling: the admin (the server's own token, or the CLI in-process), an
    agent's key, or a user's key."""

    kind: Literal["admin", "agent", "user"]
    subject: str  # "admin", the agent's name, or user:<name>
    key_id: str | None = None

    @property
    def label(self) -> str:
        if self.kind == "agent":
            return f"agent:{self.subject}"
        return self.subject


ADMIN = Caller(kind="admin", subject="admin")


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _split(token: str) -> tuple[str, str] | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def key_json(row: ApiKey) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "subject": row.subject,
        "label": row.label,
        "created_at": row.created_at.isoformat(),
        "last_used_at": row.last_used_at.isoformat() if row.last_used_at else None,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
    }


def create_key(session: Session, kind: KeyKind, subject: str, label: str = "") -> dict[str, Any]:
    """A new key for ``subject`` (an agent's name, or ``user:<name>``); the returned
    ``key`` is the only time the secret is seen."""
    if kind == "user":
        try:
            if not check_principal(subject).startswith("user:"):
                raise ValueError(f"{subject!r} is not a user principal (user:<name>)")
        except ValueError as exc:
            raise SpecError(str(exc)) from exc
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    row = ApiKey(id=key_id, secret_hash=_hash(secret), kind=kind, subject=subject, label=label)
    session.add(row)
    session.commit()
    return {"key": f"{PREFIX}_{key_id}_{secret}", **key_json(row)}


def list_keys(session: Session) -> list[dict[str, Any]]:
    rows = session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id))
    return [key_json(r) for r in rows]


def revoke_key(session: Session, key_id: str) -> dict[str, Any]:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFoundError(f"no key with id {key_id!r} (`keys list` shows them)")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        # its web sessions end with it (the pages also re-check the key on every request)
        revoke_key_sessions(session, key_id, row.revoked_at)
        session.commit()
    return key_json(row)


def revoke_key_sessions(session: Session, key_id: str, at: datetime) -> None:
    """End the web sessions logged in with ``key_id`` (the caller commits)."""
    session.execute(
        update(WebSession)
        .where(WebSession.key_id == key_id, WebSession.revoked_at.is_(None))
        .values(revoked_at=at)
    )


def authenticate(session: Session, token: str) -> Caller | None:
    """The caller a bearer token stands for, or ``None`` (unknown, malformed, revoked)."""
    parts = _split(token)
    if parts is None:
        return None
    key_id, secret = parts
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return None
    if not secrets.compare_digest(row.secret_hash, _hash(secret)):
        return None
    now = datetime.now(UTC)
    last = row.last_used_at
    if last is None or now - as_utc(last) > LAST_USED_RESOLUTION:
        row.last_used_at = now
        session.commit()
    kind: Literal["agent", "user"] = "agent" if row.kind == "agent" else "user"
    return Caller(kind=kind, subject=row.subject, key_id=row.id)
