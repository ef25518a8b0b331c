"""Server-rendered pages for reviewers and administrators, under ``/ui``.

The pages are a view over the same objects the API uses (``ReviewDesk``, ``Runtime``); they
decide nothing themselves. ``install(app, settings)`` adds the routes, the static files, the
server-side sessions (``web.sessions``); the app factory adds the security headers
(``web.headers``) outermost, for every response. May
import the rest of ``context_server``; nothing imports it but the app factory.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from context_server.settings import Settings
from context_server.web.auth import LoginRequired, login_redirect
from context_server.web.pages import STATIC_DIR, router
from context_server.web.sessions import SESSION_COOKIE, SESSION_MAX_AGE, ServerSessions

__all__ = ["SESSION_COOKIE", "SESSION_MAX_AGE", "install"]


def install(app: FastAPI, settings: Settings) -> None:
    """The ``/ui`` pages, ``/ui/static`` and the session cookie (an opaque id; HttpOnly,
    SameSite=Lax, Path=/ui)."""
    app.add_middleware(
        ServerSessions,
        store=lambda: app.state.runtime.sessions,
        max_age=SESSION_MAX_AGE,
        secure=False,  # `serve` speaks plain HTTP; a TLS proxy in front adds Secure
    )
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
    app.add_exception_handler(LoginRequired, login_redirect)
