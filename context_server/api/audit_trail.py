"""The HTTP side of the audit promise: every request that serves or refuses context,
documents, bundles, runs or reviews leaves an audit row, whatever its status.

A pure ASGI middleware, outermost, so it also sees the answers that never reach a route (a
401 for a missing key, a 413 for a body too large, a 422 from validation). It opens a
``audit.RequestRecord`` for the request; authentication notes the caller in it and every
audit row the domain writes marks it audited (the router's rows say what was served or why
it was refused). When the response is complete and nothing was written, this writes a plain
row: the route family, the outcome by status, and for an error its message.
"""

from __future__ import annotations

import json
import re

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from context_server.audit import record_request, request_record

#: Path prefix → audit action. Anything else (health, admin routes, static files) is not a
#: request for context or for what was made from it.
FAMILIES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^/v1/context$"), "context"),
    (re.compile(r"^/v1/documents(/|$)"), "document"),
    (re.compile(r"^/v1/bundles/[^/]+/check$"), "bundle_check"),
    (re.compile(r"^/v1/bundles(/|$)"), "bundle"),
    (re.compile(r"^/v1/agents/[^/]+/runs$"), "run_request"),
    (re.compile(r"^/v1/runs(/|$)"), "run"),
    (re.compile(r"^/v1/reviews(/|$)"), "review"),
    (re.compile(r"^/ui/reviews(/|$)"), "web_review"),
    (re.compile(r"^/mcp(/|$)"), "mcp"),
]

#: How much of an error answer is kept as the row's detail.
_DETAIL_BYTES = 1000


def family(path: str) -> str | None:
    for pattern, action in FAMILIES:
        if pattern.match(path):
            return action
    return None


def _error_detail(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body[:_DETAIL_BYTES].decode("utf-8", "replace")
    detail = parsed.get("detail", parsed) if isinstance(parsed, dict) else parsed
    text = detail if isinstance(detail, str) else json.dumps(detail, ensure_ascii=True)
    return text[:_DETAIL_BYTES]


class AuditTrail:
    """Wraps the app. Rows go to the store of ``app.state.runtime``, read per request (the
    app builds its runtime at start-up)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        action = family(scope.get("path", "")) if scope["type"] == "http" else None
        if action is None:
            await self.app(scope, receive, send)
            return
        status = 500
        error = bytearray()

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and status >= 400:
                error.extend(message.get("body", b"")[: _DETAIL_BYTES - len(error)])
            await send(message)

        with request_record() as record:
            try:
                await self.app(scope, receive, sending)
            finally:
                if not record.audited:
                    detail = f"{scope.get('method', '')} {scope.get('path', '')} → {status}"
                    if status >= 400 and error:
                        detail += f": {_error_detail(bytes(error))}"
                    runtime = getattr(scope["app"].state, "runtime", None)
                    if runtime is not None:
                        await anyio.to_thread.run_sync(
                            record_request, runtime.sessions, record, action, status, detail
                        )
