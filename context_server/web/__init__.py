"""Server-rendered pages for reviewers and administrators, under ``/ui``.

The pages are a view over the same objects the API uses (``ReviewDesk``, ``Runtime``); they
decide nothing themselves. ``install(app, settings)`` adds the routes, the static files and
the signed session cookie. May import the rest of ``context_server``; nothing imports it but
the app factory.
"""

from __future__ import annotations

import secrets

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.middleware.sessions import SessionMiddleware

from context_server.settings import Settings
from context_server.web.auth import LoginRequired, login_redirect
from context_server.web.pages import STATIC_DIR, router

__all__ = ["install"]

SESSION_COOKIE = "context_server_session"
SESSION_MAX_AGE = 12 * 3600  # a working day: keys are re-checked on every request anyway


def install(app: FastAPI, settings: Settings) -> None:
    """The ``/ui`` pages, ``/ui/static`` and the session cookie (HttpOnly, SameSite=Lax)."""
    secret = settings.session_secret
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret.get_secret_value() if secret else secrets.token_urlsafe(32),
        session_cookie=SESSION_COOKIE,
        max_age=SESSION_MAX_AGE,
        same_site="lax",
        https_only=False,  # `serve` speaks plain HTTP; a TLS proxy in front adds Secure
    )
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
    app.add_exception_handler(LoginRequired, login_redirect)
