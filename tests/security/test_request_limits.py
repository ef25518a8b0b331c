"""Bounded requests at the HTTP edge: a body over the size limit is refused with 413 before
it is parsed (by its Content-Length, or cut off while it streams in), a request without a
valid key is refused with 401 before its body is read, every field of every request model
is capped (422), an over-long query is never stored, and an expensive context request stops
at its deadline (503).

The socket tests speak raw HTTP/1.1 to uvicorn on a free port, so what the server read is
measured by what it let the client send, not by what a test client buffered."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func
from sqlalchemy import select as sql_select

from context_server.errors import SpecError
from context_server.keys import ADMIN as ADMIN_CALLER
from context_server.routing import ContextRouter
from context_server.store.models import AuditEvent, Bundle
from tests.security.edge_org import ADMIN, EdgeOrg, bearer, edge_org, serving

LIMIT = 64 * 1024  # max_request_bytes in these tests


@pytest.fixture
def org(tmp_path: Path) -> Iterator[EdgeOrg]:
    with edge_org(tmp_path, max_request_bytes=LIMIT) as o:
        yield o


@pytest.fixture
def url(org: EdgeOrg) -> Iterator[str]:
    with serving(org.app) as u:
        yield u


def context_body(query: str = "budget", **extra: Any) -> dict[str, Any]:
    return {"agent": "helpdesk", "on_behalf_of": "user:alice", "query": query, **extra}


# -- raw HTTP --------------------------------------------------------------------------------


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    return sock


def _status(sock: socket.socket, wait: float) -> int | None:
    """The status of a response already sent (or sent within ``wait`` s), else ``None``."""
    ready, _, _ = select.select([sock], [], [], wait)
    if not ready:
        return None
    head = sock.recv(65536)
    if not head:
        return None
    return int(head.split(b" ", 2)[1])


def stream(
    url: str, path: str, headers: dict[str, str], total: int, *, chunked: bool
) -> tuple[int | None, int]:
    """Send a body of ``total`` bytes in 16 KiB pieces, stopping as soon as the server
    answers (or stops reading); the status and how many body bytes went out."""
    sock = _connect(url)
    kind = "application/x-www-form-urlencoded" if path.startswith("/ui") else "application/json"
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {kind}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    piece, sent = b"[" + b"1," * 8191 + b"1", 0
    sock.settimeout(2)
    try:
        while sent < total:
            status = _status(sock, 0)
            if status is not None:
                return status, sent
            data = piece[: total - sent]
            frame = f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data
            try:
                sock.sendall(frame)
            except (TimeoutError, BrokenPipeError, ConnectionResetError):
                break  # the server stopped reading: its answer is waiting (or it hung up)
            sent += len(data)
        if chunked and sent >= total:
            sock.sendall(b"0\r\n\r\n")
        return _status(sock, 10), sent
    finally:
        sock.close()


def headers_only(url: str, path: str, headers: dict[str, str], declared: int) -> int | None:
    """Declare a body of ``declared`` bytes, send only 10 of them, and wait 3 s for an
    answer: a server that reads the body before authenticating never answers."""
    sock = _connect(url)
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {declared}")
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + b'{"agent":"')
        return _status(sock, 3)
    finally:
        sock.close()


# -- the size limit --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/context", "/v1/principals", "/mcp", "/ui/login"])
def test_a_declared_content_length_over_the_limit_is_refused_at_once(
    org: EdgeOrg, path: str
) -> None:
    r = org.client.post(
        path, content=b"x" * (LIMIT + 1), headers={**ADMIN, "Content-Type": "application/json"}
    )
    assert r.status_code == 413, r.text
    assert str(LIMIT) in r.json()["detail"]


def test_a_body_at_the_limit_is_parsed(org: EdgeOrg) -> None:
    body = json.dumps(context_body()).encode()
    padded = body[:-1] + b" " * (LIMIT - len(body)) + b"}"
    r = org.client.post(
        "/v1/context", content=padded, headers={**ADMIN, "Content-Type": "application/json"}
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path", ["/v1/context", "/mcp", "/ui/login"])
def test_a_chunked_body_is_cut_off_at_the_limit(org: EdgeOrg, url: str, path: str) -> None:
    status, sent = stream(url, path, ADMIN, 30 * 1024 * 1024, chunked=True)
    assert status == 413
    # what the server accepted before refusing, plus what the kernel's buffers held
    assert sent < 8 * 1024 * 1024, f"the server read {sent} bytes of a 30 MB body"


def test_a_big_body_without_a_key_is_refused_before_it_is_read(url: str) -> None:
    status, sent = stream(url, "/v1/context", {}, 30 * 1024 * 1024, chunked=True)
    assert status == 401
    assert sent < 8 * 1024 * 1024


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("csk_nope_nope"), {"Authorization": "Basic YTpi"}, bearer("")],
    ids=["none", "unknown", "basic", "empty"],
)
@pytest.mark.parametrize("path", ["/v1/context", "/v1/principals", "/v1/reviews/x/approve"])
def test_no_valid_key_is_answered_before_the_body_arrives(
    url: str, path: str, headers: dict[str, str]
) -> None:
    assert headers_only(url, path, headers, declared=LIMIT - 1) == 401


def test_a_valid_key_still_waits_for_its_body(org: EdgeOrg, url: str) -> None:
    assert headers_only(url, "/v1/context", bearer(org.keys["user"]), declared=1000) is None


def test_the_authenticated_caller_is_not_looked_up_twice(
    org: EdgeOrg, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = org.runtime.authenticate

    def counting(token: str) -> Any:
        calls.append(token)
        return real(token)

    monkeypatch.setattr(org.runtime, "authenticate", counting)
    r = org.client.get("/v1/sources", headers=bearer(org.keys["user"]))
    assert r.status_code == 200 and len(calls) == 1


# -- caps on every field ---------------------------------------------------------------------

LONG = "x" * 100_000
MANY = [f"s{i}" for i in range(5000)]

CAPPED: list[tuple[str, dict[str, Any]]] = [
    ("/v1/context", context_body(query=LONG)),
    ("/v1/context", {**context_body(), "agent": LONG}),
    ("/v1/context", {**context_body(), "on_behalf_of": "user:" + LONG}),
    ("/v1/context", {**context_body(), "filters": {"sources": MANY}}),
    ("/v1/context", {**context_body(), "filters": {"sources": [LONG]}}),
    ("/v1/search", {"query": LONG, "as": "user:alice"}),
    ("/v1/search", {"query": "x", "as": "user:" + LONG}),
    ("/v1/search", {"query": "x", "as": "user:alice", "sources": MANY}),
    ("/v1/sync", {"source": LONG}),
    ("/v1/keys", {"user": "user:" + LONG}),
    ("/v1/keys", {"agent": LONG}),
    ("/v1/agents/helpdesk/runs", {"on_behalf_of": "user:" + LONG}),
    ("/v1/agents/helpdesk/runs", {"input": {f"k{i}": "v" for i in range(5000)}}),
    ("/v1/agents/helpdesk/runs", {"input": {"question": LONG}}),
    ("/v1/agents/helpdesk/runs", {"input": {LONG: "v"}}),
    ("/v1/reviews/r1/approve", {"as": "user:alice", "comment": LONG}),
    ("/v1/reviews/r1/approve", {"as": "user:" + LONG}),
    ("/v1/reviews/r1/edit", {"as": "user:alice", "content": "y" * 60_000}),
    ("/v1/reviews/r1/defer", {"as": "user:alice", "comment": LONG}),
]


@pytest.fixture
def roomy(tmp_path: Path) -> Iterator[EdgeOrg]:
    """Room for the over-long fields to arrive (so the cap refuses them, not the body size);
    a small artifact cap to show it is a setting."""
    with edge_org(tmp_path, max_request_bytes=4 * 1024 * 1024, max_artifact_chars=50_000) as o:
        yield o


@pytest.mark.parametrize(
    ("path", "body"), CAPPED, ids=[f"{p}:{i}" for i, (p, _) in enumerate(CAPPED)]
)
def test_every_field_is_capped(roomy: EdgeOrg, path: str, body: dict[str, Any]) -> None:
    r = roomy.client.post(path, json=body, headers=ADMIN)
    assert r.status_code == 422, r.text[:500]
    detail = r.json()["detail"]
    # refused by the request model (or, for the artifact, by its setting), not later
    assert isinstance(detail, list) or "max_artifact_chars" in detail
    assert len(r.content) < 20_000, "the refusal echoes the whole input back"


def test_an_over_long_query_is_neither_answered_nor_stored(roomy: EdgeOrg) -> None:
    limit = roomy.settings.max_query_chars
    r = roomy.client.post(
        "/v1/context", json=context_body("budget " * (limit // 7 + 1)), headers=ADMIN
    )
    assert r.status_code == 422
    # whatever the entry (a worker's run, MCP), the router itself refuses it
    with pytest.raises(SpecError, match="max_query_chars"):
        ContextRouter(roomy.runtime).route(
            ADMIN_CALLER, "helpdesk", "user:alice", "b" * (limit + 1)
        )
    with roomy.runtime.sessions() as session:
        longest = session.scalar(sql_select(func.max(func.length(AuditEvent.query))))
        assert (longest or 0) <= limit
        assert session.scalar(sql_select(func.count()).select_from(Bundle)) == 0


def test_a_ten_megabyte_query_is_refused_by_size_by_default(tmp_path: Path) -> None:
    with edge_org(tmp_path) as o:
        started = time.monotonic()
        r = o.client.post("/v1/context", json=context_body("q" * 10_000_000), headers=ADMIN)
        assert r.status_code == 413
        assert time.monotonic() - started < 5
        with o.runtime.sessions() as session:
            assert session.scalar(sql_select(func.count()).select_from(Bundle)) == 0


# -- the deadline ----------------------------------------------------------------------------


def test_a_context_request_stops_at_its_deadline(tmp_path: Path) -> None:
    with edge_org(tmp_path, context_deadline_seconds=0.3) as o:
        embedder = o.runtime.embedder
        real = embedder.embed

        def slow(texts: Any) -> Any:
            time.sleep(0.6)
            return real(texts)

        embedder.embed = slow  # type: ignore[method-assign]
        started = time.monotonic()
        r = o.client.post("/v1/context", json=context_body(), headers=ADMIN)
        assert r.status_code == 503, r.text
        assert "deadline" in r.json()["detail"]
        assert time.monotonic() - started < 3
        with o.runtime.sessions() as session:
            assert session.scalar(sql_select(func.count()).select_from(Bundle)) == 0
        embedder.embed = real  # type: ignore[method-assign]
        assert o.client.post("/v1/context", json=context_body(), headers=ADMIN).status_code == 200
