"""The HTTP edge, in front of everything the app serves (the API, ``/mcp``, ``/ui``): a
request body larger than ``max_request_bytes`` is refused with 413 before anything parses
it, and a ``/v1`` request without a valid bearer key is refused with 401 before its body is
read.

The size limit holds twice: a declared ``Content-Length`` over it is refused at once; a body
without one (chunked) is counted as it streams in and cut off at the limit, so no body is
ever held whole. The key is looked up once (in a worker thread: it reads the store); the
caller is left in the ASGI scope under ``CALLER_KEY`` for ``deps.get_caller`` to reuse.

A pure ASGI middleware (no ``BaseHTTPMiddleware``): it must see the body's messages one by
one. May import ``context_server.keys``; the app factory installs it outermost.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio.to_thread
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from context_server.keys import Caller

#: Where the authenticated caller waits in the ASGI scope (read by ``deps.get_caller``).
CALLER_KEY = "context_server.caller"

#: Routes under /v1 that need no key.
OPEN_PATHS = frozenset({"/v1/healthz"})

MISSING_KEY = (
    "missing bearer key: send `Authorization: Bearer <key>` "
    "(create one with `context-server keys create`)"
)
BAD_KEY = "unknown or revoked key"


class BodyTooLarge(Exception):
    """Raised from ``receive`` once a streamed body passes the limit."""


def too_large_detail(limit: int) -> str:
    return (
        f"the request body is larger than {limit} bytes (CONTEXT_SERVER_MAX_REQUEST_BYTES); "
        "send less"
    )


async def _json(send: Send, status: int, body: dict[str, Any], **headers: str) -> None:
    data = json.dumps(body).encode()  # ASCII: our own messages, escaped
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    raw.append((b"connection", b"close"))  # the rest of a refused body is never read
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


class RequestLimits:
    """The size limit for every request, the key check for ``/v1`` before the body."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: Callable[[], int],
        authenticate: Callable[[str], Caller | None],
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.authenticate = authenticate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes()
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _json(send, 400, {"detail": "Content-Length is not a number"})
                return
            if length > limit:
                await _json(send, 413, {"detail": too_large_detail(limit)})
                return
        path: str = scope.get("path", "")
        if path.startswith("/v1/") and path not in OPEN_PATHS:
            refusal, caller = await self._check_key(headers)
            if caller is None:
                await _json(send, 401, {"detail": refusal}, **{"WWW-Authenticate": "Bearer"})
                return
            scope[CALLER_KEY] = caller
        await self._bounded(scope, receive, send, limit)

    async def _check_key(self, headers: Headers) -> tuple[str, Caller | None]:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return MISSING_KEY, None
        caller = await anyio.to_thread.run_sync(self.authenticate, token)
        return BAD_KEY, caller

    async def _bounded(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Run the app with a ``receive`` that counts; past the limit, answer 413 whatever
        the app made of the error (a handler may catch it and answer otherwise)."""
        received = 0
        exceeded = False
        started = False

        async def counting() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise BodyTooLarge()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge()
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # our 413 replaces whatever the app answers
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting, guarded)
        except BodyTooLarge:
            pass
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await _json(send, 413, {"detail": too_large_detail(limit)})
