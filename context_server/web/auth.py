"""Who is looking at a page: login with an API key or by OIDC, the session, CSRF tokens.

The session never holds the key itself: it holds the key's id, kind and subject, and every
request checks again that the key still exists and is not revoked (so revoking a key logs
its browser sessions out at their next click). The admin token has no id; the session holds
a fingerprint of it, which stops matching when the server's token changes.

A single sign-on (OIDC) session has no key to re-check: it holds the user, the issuer that
vouched for them and an expiry — the ID token's ``exp`` or ``OIDC_SESSION_SECONDS`` after
the login, whichever comes first. After that, or when the configured issuer changes, the
next click asks for a new login.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import RedirectResponse, Response

from context_server.audit import note_caller
from context_server.keys import ADMIN, Caller
from context_server.runtime import Runtime
from context_server.settings import Settings
from context_server.store.models import ApiKey, AuditEvent
from context_server.web.oidc import Identity

CSRF_FIELD = "csrf"
OIDC_SESSION_SECONDS = 8 * 3600  # a working day, at most; a shorter ID token ends it sooner


class LoginRequired(Exception):
    """Raised by a page whose visitor is not (or no longer) logged in."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class CsrfError(Exception):
    """A form came without this session's CSRF token."""


@dataclass(frozen=True)
class Viewer:
    """The logged-in caller, and whether it may use the administrators' pages."""

    caller: Caller
    is_admin: bool

    @property
    def label(self) -> str:
        return "admin (server token)" if self.caller.kind == "admin" else self.caller.label


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:32]


def log_in(request: Request, token: str) -> str | None:
    """Start a session for ``token``; the reason it was refused, or ``None``."""
    token = token.strip()
    if not token:
        return "enter an API key"
    admin_token: str = request.app.state.admin_token
    if secrets.compare_digest(token.encode(), admin_token.encode()):
        caller, extra = ADMIN, {"admin_fp": _fingerprint(admin_token)}
    else:
        found = runtime_of(request).authenticate(token)
        if found is None:
            return "unknown or revoked key"
        if found.kind == "agent":
            return (
                f"this is agent {found.subject!r}'s key; agents use the API, not these pages. "
                "Log in with a user key (context-server keys create --user user:NAME)."
            )
        caller, extra = found, {}
    request.session.clear()  # a fresh session: nothing carried over from before the login
    request.session.update(kind=caller.kind, subject=caller.subject, key_id=caller.key_id, **extra)
    csrf_token(request)
    return None


def log_in_oidc(request: Request, identity: Identity, issuer: str) -> None:
    """Start a session for the user the provider vouched for (a user, never an admin token)."""
    expires = min(identity.expires_at, time.time() + OIDC_SESSION_SECONDS)
    request.session.clear()  # a fresh session: nothing carried over from before the login
    request.session.update(
        kind="user", subject=identity.subject, auth="oidc", issuer=issuer, expires=expires
    )
    csrf_token(request)
    with runtime_of(request).sessions() as db:
        db.add(
            AuditEvent(
                action="web_login",
                outcome="allowed",
                key_id=None,
                caller=identity.subject,
                agent=None,
                on_behalf_of=None,
                query=None,
                document_ids=[],
                bundle_id=None,
                detail=f"single sign-on via {issuer}",
            )
        )
        db.commit()


def log_out(request: Request) -> None:
    request.session.clear()


def _caller(request: Request) -> Caller:
    session: dict[str, Any] = request.session
    kind = session.get("kind")
    if kind is None:
        raise LoginRequired()
    if kind == "admin":
        admin_token: str = request.app.state.admin_token
        if session.get("admin_fp") != _fingerprint(admin_token):
            session.clear()
            raise LoginRequired("the server's admin token changed; log in again")
        return ADMIN
    if session.get("auth") == "oidc":
        return _oidc_caller(request, session)
    key_id, subject = session.get("key_id"), session.get("subject")
    with runtime_of(request).sessions() as db:
        row = db.get(ApiKey, key_id) if isinstance(key_id, str) else None
        valid = row is not None and row.revoked_at is None and row.subject == subject
    if not valid or kind != "user" or not isinstance(subject, str):
        session.clear()
        raise LoginRequired("your key was revoked; log in with another one")
    return Caller(kind="user", subject=subject, key_id=key_id)


def _oidc_caller(request: Request, session: dict[str, Any]) -> Caller:
    """A single sign-on session: valid until it expires or the issuer setting changes."""
    settings: Settings = request.app.state.settings
    subject, expires = session.get("subject"), session.get("expires")
    if session.get("issuer") != settings.oidc_issuer:
        session.clear()
        raise LoginRequired("the server's single sign-on settings changed; log in again")
    if not isinstance(expires, int | float) or time.time() >= expires:
        session.clear()
        raise LoginRequired("your single sign-on session expired; log in again")
    if session.get("kind") != "user" or not isinstance(subject, str):
        session.clear()
        raise LoginRequired()
    return Caller(kind="user", subject=subject)


def current_viewer(request: Request) -> Viewer:
    """The logged-in viewer; ``LoginRequired`` sends the browser to the login page."""
    caller = _caller(request)
    note_caller(caller)
    return Viewer(caller=caller, is_admin=is_admin(runtime_of(request), caller))


def is_admin(runtime: Runtime, caller: Caller) -> bool:
    """As ``deps.require_admin``: the admin token, or a user the policy lets administer."""
    if caller.kind == "admin":
        return True
    directory = runtime.directory
    return (
        caller.kind == "user"
        and directory.has_policy
        and directory.permits(caller.subject, "system", "administer")
    )


def csrf_token(request: Request) -> str:
    """This session's CSRF token, made on first use."""
    token = request.session.get(CSRF_FIELD)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session[CSRF_FIELD] = token
    return token


def check_csrf(request: Request, sent: str | None) -> None:
    expected = request.session.get(CSRF_FIELD)
    if not (
        isinstance(expected, str)
        and sent
        and secrets.compare_digest(sent.encode(), expected.encode())
    ):
        raise CsrfError("this form is missing its security token, or it expired")


def flash(request: Request, kind: str, text: str) -> None:
    """A message shown once, on the next page rendered for this session."""
    messages = list(request.session.get("flash", []))
    messages.append([kind, text])
    request.session["flash"] = messages


def take_flashes(request: Request) -> list[tuple[str, str]]:
    return [(k, t) for k, t in request.session.pop("flash", [])]


def login_redirect(request: Request, exc: Exception) -> Response:
    message = exc.message if isinstance(exc, LoginRequired) else ""
    if message:
        flash(request, "error", message)
    target = request.url.path
    if request.url.query:
        target += "?" + request.url.query
    if request.method != "GET":  # a form's target cannot be opened after the login
        target = "/ui/reviews"
    url = request.url_for("login_page").include_query_params(next=target)
    return RedirectResponse(str(url.path) + "?" + url.query, status_code=303)
