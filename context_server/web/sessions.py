"""The web pages' sessions, held on the server (the ``web_sessions`` table).

The cookie carries only a random id (256 bits); the store keeps its SHA-256 and the
session's data (who logged in, the CSRF token, flash messages, a pending single sign-on).
So the cookie reveals nothing, a copy of the store opens no session, and ending a session
ends it for every copy of the cookie: "Log out" (the session's row is deleted), revoking
the key that logged in (``keys.revoke_key`` marks its rows revoked; the next request with
such a cookie is told why), or its expiry.

A new id is issued whenever who is logged in changes (a login, a logout), so an id planted
in a browser before the login is never the logged-in one (session fixation).

``ServerSessions`` is a pure ASGI middleware for ``/ui``: it puts the session's data in
``scope["session"]`` (what ``request.session`` reads) and writes it back, only when it
changed, as the response starts. Sessions of visitors who have not logged in (the login
page's CSRF token) last an hour; logged-in ones ``SESSION_MAX_AGE``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio.to_thread
from sqlalchemy import delete, update
from sqlalchemy.orm import Session, sessionmaker
from starlette.datastructures import MutableHeaders
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from context_server.store.models import WebSession, as_utc

SESSION_COOKIE = "context_server_session"
SESSION_MAX_AGE = 12 * 3600  # a working day: keys are re-checked on every request anyway
ANONYMOUS_MAX_AGE = 3600  # the login page's session, before anyone logged in
#: The session fields naming who is logged in: a change of any is a new session id.
IDENTITY = ("kind", "subject", "key_id", "auth", "issuer")
PREFIX = "/ui"
STATIC = "/ui/static/"  # the stylesheet needs no session (and no store round trip)
KEY_REVOKED = "your key was revoked; log in with another one"


def session_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class _Loaded:
    token: str | None  # the cookie's id, when it names a live session
    data: dict[str, Any]
    snapshot: str  # the data as loaded, to tell whether the request changed it
    identity: dict[str, Any]  # who was logged in, as loaded (``data`` is changed in place)


def _identity(data: dict[str, Any]) -> dict[str, Any]:
    return {k: data.get(k) for k in IDENTITY}


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, default=str)


class ServerSessions:
    def __init__(
        self,
        app: ASGIApp,
        *,
        store: Callable[[], sessionmaker[Session]],
        cookie: str = SESSION_COOKIE,
        max_age: int = SESSION_MAX_AGE,
        secure: bool = False,
    ) -> None:
        self.app = app
        self.store = store
        self.cookie = cookie
        self.max_age = max_age
        self.secure = secure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        pages = path == PREFIX or path.startswith(PREFIX + "/")
        if scope["type"] != "http" or not pages or path.startswith(STATIC):
            await self.app(scope, receive, send)
            return
        sent = self._cookie_value(scope)
        loaded = await anyio.to_thread.run_sync(self._load, sent)
        scope["session"] = loaded.data

        async def saving(message: Message) -> None:
            if message["type"] == "http.response.start":
                data = scope.get("session", {})
                header = await anyio.to_thread.run_sync(self._save, loaded, data, sent)
                if header is not None:
                    MutableHeaders(scope=message).append("set-cookie", header)
            await send(message)

        await self.app(scope, receive, saving)

    def _cookie_value(self, scope: Scope) -> str | None:
        for name, value in scope.get("headers", []):
            if name == b"cookie":
                found = cookie_parser(value.decode("latin-1")).get(self.cookie)
                if found:
                    return found
        return None

    # -- the store (in a worker thread) -----------------------------------------------------

    def _load(self, token: str | None) -> _Loaded:
        if token is None or len(token) > 128:
            return _Loaded(None, {}, _dump({}), _identity({}))
        with self.store()() as db:
            row = db.get(WebSession, session_hash(token))
            now = datetime.now(UTC)
            live = row is not None and row.revoked_at is None and as_utc(row.expires_at) > now
            data = dict(row.data) if live and row is not None else {}
            revoked = row is not None and row.revoked_at is not None
        if revoked:  # only a key's revocation marks a session (logouts delete theirs)
            fresh = {"flash": [["error", KEY_REVOKED]]}
            return _Loaded(None, fresh, _dump({}), _identity({}))
        return _Loaded(token if live else None, data, _dump(data), _identity(data))

    def _save(self, loaded: _Loaded, data: dict[str, Any], sent: str | None) -> str | None:
        """Write the session back if it changed; the Set-Cookie header to send, if any."""
        if _dump(data) == loaded.snapshot:
            # unchanged; a cookie naming no live session is cleared
            return self._expired() if sent is not None and loaded.token is None else None
        now = datetime.now(UTC)
        with self.store()() as db:
            if not data:  # emptied: logged out
                if loaded.token is not None:
                    self._drop(db, loaded.token)
                    db.commit()
                return self._expired()
            if loaded.token is not None and loaded.identity == _identity(data):
                db.execute(
                    update(WebSession)
                    .where(WebSession.id == session_hash(loaded.token))
                    .values(data=data)
                )
                db.commit()
                return None
            # a new session, or a new identity in it: a new id; the old one ends
            if loaded.token is not None:
                self._drop(db, loaded.token)
            db.execute(delete(WebSession).where(WebSession.expires_at < now))
            token = secrets.token_urlsafe(32)
            logged_in = data.get("kind") is not None
            max_age = self.max_age if logged_in else ANONYMOUS_MAX_AGE
            key_id = data.get("key_id")
            db.add(
                WebSession(
                    id=session_hash(token),
                    data=data,
                    key_id=key_id if isinstance(key_id, str) else None,
                    created_at=now,
                    expires_at=now + timedelta(seconds=max_age),
                )
            )
            db.commit()
        return self._header(token, max_age)

    @staticmethod
    def _drop(db: Session, token: str) -> None:
        """The session ends: its row goes, so no copy of its cookie opens it again."""
        db.execute(delete(WebSession).where(WebSession.id == session_hash(token)))

    def _header(self, value: str, max_age: int) -> str:
        parts = [f"{self.cookie}={value}", f"Path={PREFIX}", f"Max-Age={max_age}"]
        parts += ["HttpOnly", "SameSite=Lax"] + (["Secure"] if self.secure else [])
        return "; ".join(parts)

    def _expired(self) -> str:
        return self._header("", 0)
