"""The app factory: builds settings-driven components and maps domain errors to statuses."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError

from connectors.errors import ConfigError, CredentialError, UnknownKindError
from context_server import __version__
from context_server.api.audit_trail import AuditTrail
from context_server.api.deps import authenticate
from context_server.api.limits import RequestLimits
from context_server.api.review_routes import router as reviews
from context_server.api.routes import admin, public, v1
from context_server.api.schemas import SafeJSONResponse
from context_server.deadline import DeadlineExceeded
from context_server.errors import ConflictError, ForbiddenError, NotFoundError, SpecError
from context_server.mcp_server import mount as mount_mcp
from context_server.runtime import Runtime
from context_server.settings import Settings
from context_server.web import install as install_web
from context_server.web.headers import SecurityHeaders
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
    (DeadlineExceeded, 503),
    # Text that cannot be encoded (a lone surrogate) reaching the store: bad input, even
    # where no request model refused it first.
    (UnicodeEncodeError, 422),
]

#: An input echoed in a validation error is cut to this many characters.
ECHOED_INPUT = 100


def _echo(value: Any) -> Any:
    """A refused input as the 422 shows it: short scalars whole, the rest cut or left out
    (a 10 MB field is never sent back)."""
    if isinstance(value, str):
        return value if len(value) <= ECHOED_INPUT else value[:ECHOED_INPUT] + "..."
    if value is None or isinstance(value, bool | int | float):
        return value
    return "(not shown)"


def validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    errors = []
    for error in exc.errors():
        shown = {k: v for k, v in error.items() if k not in ("input", "ctx", "url", "loc")}
        shown["loc"] = [_echo(part) for part in error.get("loc", ())]  # a dict key is input too
        if "input" in error:
            shown["input"] = _echo(error["input"])
        errors.append(shown)
    out: list[dict[str, Any]] = jsonable_encoder(errors)
    return out


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

    app = FastAPI(
        title="context-server",
        version=__version__,
        lifespan=lifespan,
        default_response_class=SafeJSONResponse,
    )
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
    # Outermost: the size limit for everything, the key check for /v1 before any body.
    app.add_middleware(
        RequestLimits,
        max_bytes=lambda: int(app.state.settings.max_request_bytes),
        authenticate=lambda token: authenticate(app.state.runtime, app.state.admin_token, token),
    )
    app.add_middleware(SecurityHeaders)  # on every response, the edge's refusals included

    for error, status in STATUS_BY_ERROR:

        async def handler(
            _request: Request, exc: Exception, status: int = status
        ) -> SafeJSONResponse:
            detail = str(exc)
            if isinstance(exc, UnicodeEncodeError):
                detail = "the request holds text that is not valid Unicode (a lone surrogate)"
            return SafeJSONResponse({"detail": detail, "error": type(exc).__name__}, status)

        app.add_exception_handler(error, handler)

    async def invalid(_request: Request, exc: Exception) -> SafeJSONResponse:
        assert isinstance(exc, RequestValidationError)
        return SafeJSONResponse({"detail": validation_errors(exc)}, 422)

    app.add_exception_handler(RequestValidationError, invalid)

    app.add_middleware(AuditTrail)  # outermost: sees 401/413/422 that never reach a route
    return app
