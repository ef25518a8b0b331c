"""The app factory: builds settings-driven components and maps domain errors to statuses."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from connectors.errors import ConfigError, CredentialError, UnknownKindError
from context_server import __version__
from context_server.api.audit_trail import AuditTrail
from context_server.api.review_routes import router as reviews
from context_server.api.routes import admin, public, v1
from context_server.errors import ConflictError, ForbiddenError, NotFoundError, SpecError
from context_server.mcp_server import mount as mount_mcp
from context_server.runtime import Runtime
from context_server.settings import Settings
from context_server.web import install as install_web
from indexing.errors import EmbedderMismatchError, IndexLockedError, IndexUnavailableError

# The only place HTTP statuses meet domain errors.
STATUS_BY_ERROR: list[tuple[type[Exception], int]] = [
    (NotFoundError, 404),
    (ForbiddenError, 403),
    (ConflictError, 409),
    (EmbedderMismatchError, 409),
    (SpecError, 422),
    (ConfigError, 422),
    (UnknownKindError, 422),
    (CredentialError, 502),
    (IndexLockedError, 503),
    (IndexUnavailableError, 503),
]


def create_app(
    settings: Settings | None = None,
    *,
    runtime: Runtime | None = None,
    admin_token: str | None = None,
) -> FastAPI:
    """Build the app. ``runtime`` is built from ``settings`` at start-up unless given."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = runtime is None
        app.state.runtime = runtime or Runtime(settings)
        try:
            async with mcp.running():  # the MCP session manager lives as long as the app
                yield
        finally:
            if owned:
                app.state.runtime.close()

    app = FastAPI(title="context-server", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.admin_token = admin_token or secrets.token_urlsafe(32)
    if runtime is not None:
        app.state.runtime = runtime
    app.include_router(public)
    app.include_router(v1)
    app.include_router(admin)
    app.include_router(reviews)
    mcp = mount_mcp(app, settings)  # /mcp: the same keys and rules as the REST API
    install_web(app, settings)  # before any catch-all mount: /ui pages, static files, sessions

    for error, status in STATUS_BY_ERROR:

        async def handler(_request: Request, exc: Exception, status: int = status) -> JSONResponse:
            return JSONResponse({"detail": str(exc), "error": type(exc).__name__}, status)

        app.add_exception_handler(error, handler)
    app.add_middleware(AuditTrail)  # outermost: sees 401/413/422 that never reach a route
    return app
