"""Items too large to hold, in the connectors that read them: a JSON-lines line with no
newline for gigabytes (a dump gone wrong), a huge wiki page, a web API answer without end.
Each is refused (a ``too_large`` failure, or a ``SourceError`` for an API answer) after
reading at most its limit, and the rest goes on."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

from connectors.base import AclSpec
from connectors.jsonl.config import JsonlConfig
from connectors.jsonl.connector import JsonlConnector
from tests.contract.connector_contract import failures, run, upserts


def test_a_line_longer_than_the_limit_is_a_failure_and_never_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    huge = {"_id": "huge", "text": "x" * (8 * 1024 * 1024)}
    with path.open("w") as f:
        f.write(json.dumps({"_id": "a", "text": "first"}) + "\n")
        f.write(json.dumps(huge) + "\n")
        f.write(json.dumps({"_id": "b", "text": "after"}))  # no final newline
    limit = 64 * 1024
    config = JsonlConfig(path=path, acl=AclSpec(allow=["group:everyone"]), max_line_bytes=limit)
    tracemalloc.start()
    changes, _checkpoint = run(JsonlConnector(config), None)
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert sorted(upserts(changes)) == ["a", "b"]
    (failure,) = failures(changes).values()
    assert (failure.external_id, failure.reason) == ("line:2", "too_large")
    assert "max_line_bytes" in failure.detail
    assert peak < 2 * 1024 * 1024, peak  # the 8 MB line was never in memory


def test_a_line_of_exactly_the_limit_is_read(tmp_path: Path) -> None:
    limit = 2048
    line = json.dumps({"_id": "edge", "text": ""})
    line = json.dumps({"_id": "edge", "text": "y" * (limit - len(line))})
    assert len(line) == limit
    path = tmp_path / "docs.jsonl"
    path.write_text(line + "\n")
    config = JsonlConfig(path=path, acl=AclSpec(allow=["group:everyone"]), max_line_bytes=limit)
    changes, _ = run(JsonlConnector(config), None)
    assert list(upserts(changes)) == ["edge"] and not failures(changes)


def test_a_wiki_page_larger_than_the_limit_is_a_failure_never_read(tmp_path: Path) -> None:
    from connectors.markdown_wiki.config import MarkdownWikiConfig
    from connectors.markdown_wiki.connector import MarkdownWikiConnector

    root = tmp_path / "wiki"
    root.mkdir()
    (root / "small.md").write_text("# Small\n\nA page.")
    (root / "huge.md").write_bytes(b"# Huge\n\n" + b"word " * (2 * 1024 * 1024))
    config = MarkdownWikiConfig(
        root=root,
        base_url="https://wiki.example",
        default_acl=AclSpec(allow=["group:everyone"]),
        max_page_bytes=1024 * 1024,
    )
    tracemalloc.start()
    changes, _ = run(MarkdownWikiConnector(config), None)
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert list(upserts(changes)) == ["small.md"]
    (failure,) = failures(changes).values()
    assert (failure.external_id, failure.reason) == ("huge.md", "too_large")
    assert peak < 4 * 1024 * 1024, peak  # the 10 MB page was never read


def test_a_web_api_answer_larger_than_the_limit_is_refused_unread() -> None:
    import httpx
    import pytest

    from connectors.errors import SourceError
    from connectors.http import HttpClient

    sent: list[int] = []

    def endless() -> Iterator[bytes]:
        for _ in range(10_000):  # 640 MB if read to the end
            sent.append(1)
            yield b"x" * 65536

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/declared":
            return httpx.Response(200, headers={"content-length": str(1 << 30)}, content=b"")
        if request.url.path == "/small":
            return httpx.Response(200, json={"ok": True})
        return httpx.Response(200, content=endless())

    client = HttpClient(
        "https://api.example", transport=httpx.MockTransport(handler), max_response_bytes=1 << 20
    )
    assert client.get_json("/small") == {"ok": True}
    with pytest.raises(SourceError, match="max_response_bytes"):
        client.request("GET", "/declared")
    with pytest.raises(SourceError, match="max_response_bytes"):
        client.request("GET", "/streamed")
    assert len(sent) <= 17  # read up to the limit (1 MiB = 16 blocks), not to the end
