"""``FakeOpenAI``: a fake OpenAI-compatible chat-completions server on a real local port.

It answers ``POST /v1/chat/completions`` the way the API does, records every request, and
can be told to fail: queue replies with ``reply(...)`` (a status, a body, headers), and
when the queue is empty it answers ``answer`` (a string, or a function of the request
body). ::

    with FakeOpenAI() as llm:
        llm.reply(429, {"error": {"message": "slow down"}}, headers={"Retry-After": "0"})
        spec = OpenAIHarness(base_url=llm.url, model="fake-model")
        ...
        assert llm.requests[-1].json["model"] == "fake-model"

A plain ``http.server.ThreadingHTTPServer`` in a daemon thread, so unit, integration and
end-to-end tests (a subprocess pointed at ``llm.url``) can all use it.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.local_server import LocalServer

Answer = str | Callable[[dict[str, Any]], str]


@dataclass(frozen=True)
class Recorded:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    json: Any  # the decoded body, or None when it was not JSON

    @property
    def bearer(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # JSON-encoded unless bytes
    headers: dict[str, str] = field(default_factory=dict)


def completion(content: str | None, *, model: str = "fake-model", **extra: Any) -> dict[str, Any]:
    """A chat-completions response body with one choice."""
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
        **extra,
    }


class FakeOpenAI(LocalServer):
    """A fake OpenAI-compatible server; ``url`` is its base URL (ending ``/v1``)."""

    def __init__(
        self,
        answer: Answer = "A draft answer from the fake model [1].",
        *,
        model: str = "fake-model",
        api_key: str | None = None,
    ) -> None:
        """``api_key``: when set, a request without ``Authorization: Bearer <api_key>`` is
        answered 401 as the real API does."""
        self.answer = answer
        self.model = model
        self.api_key = api_key
        self.requests: list[Recorded] = []
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        super().__init__(self._handler(), "fake-openai")

    @property
    def url(self) -> str:
        return f"{self.origin}/v1"

    def reply(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        """Queue one reply; queued replies are used, in order, before ``answer``."""
        with self._lock:
            self._replies.append(Reply(status, body, headers or {}))

    def fail(
        self, status: int, message: str, *, times: int = 1, headers: dict[str, str] | None = None
    ) -> None:
        """Queue ``times`` OpenAI-style error replies."""
        for _ in range(times):
            self.reply(status, {"error": {"message": message, "type": "fake_error"}}, headers)

    # -- serving ---------------------------------------------------------------------------

    def _respond(self, request: Recorded) -> Reply:
        with self._lock:
            self.requests.append(request)
            queued = self._replies.popleft() if self._replies else None
        if queued is not None:
            return queued
        if request.method != "POST" or request.path.rstrip("/") != "/v1/chat/completions":
            return Reply(404, {"error": {"message": f"no route {request.method} {request.path}"}})
        if self.api_key is not None and request.bearer != self.api_key:
            return Reply(401, {"error": {"message": "Incorrect API key provided."}})
        body = request.json
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return Reply(400, {"error": {"message": "'messages' is a required property"}})
        content = self.answer(body) if callable(self.answer) else self.answer
        return Reply(200, completion(content, model=str(body.get("model") or self.model)))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    decoded = json.loads(raw) if raw else None
                except ValueError:
                    decoded = None
                recorded = Recorded(
                    method=self.command,
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    json=decoded,
                )
                reply = fake._respond(recorded)
                data = (
                    reply.body
                    if isinstance(reply.body, bytes)
                    else json.dumps(reply.body).encode("utf-8")
                )
                self.send_response(reply.status)
                if not isinstance(reply.body, bytes):
                    self.send_header("Content-Type", "application/json")
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: tests read ``fake.requests`` instead

        return Handler
