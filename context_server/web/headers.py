"""Security headers on every response the app sends: the pages under ``/ui`` and the API.

The pages load only their own stylesheet and have no inline script or style, so the
Content-Security-Policy can be strict: everything from this origin only, no framing
(``frame-ancestors 'none'``, and ``X-Frame-Options: DENY`` for older browsers), no
plugins, no ``<base>`` rewriting. Referrers are never sent (review URLs name reviews), and
browsers must not sniff a type other than the one sent. The interactive API docs
(``/docs``, ``/redoc``) load their scripts from a CDN, so they get every header but the CSP.

A pure ASGI middleware; headers the app set itself are kept.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = "default-src 'self'; frame-ancestors 'none'; object-src 'none'; base-uri 'none'"
HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
#: FastAPI's interactive docs: their HTML loads Swagger UI / ReDoc from a CDN.
DOCS = ("/docs", "/redoc")


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        docs = any(path == d or path.startswith(d + "/") for d in DOCS)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers.setdefault(name, value)
                if not docs:
                    headers.setdefault("Content-Security-Policy", CSP)
            await send(message)

        await self.app(scope, receive, with_headers)
