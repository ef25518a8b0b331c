"""GitHub sync throughput: real issues, a local fake GitHub REST API, the real pipeline.

Serves ../shared/data/tickets-github/huggingface-datasets-issues.jsonl (GitHub REST issue
objects, one per line) from an HTTP server on 127.0.0.1 that speaks the part of the API the
connector uses (``Link`` pagination, ``since``/``sort``/``direction``, ``Date`` headers,
comments), then syncs it through Runtime → Pipeline with the real embedding model and
prints documents/s and chunks/s for the first sync, and the time of an unchanged
incremental re-sync. The export holds no comment bodies: the comments endpoint answers an
empty list (the requests are still made for every issue with a comment count).

    python benchmarks/sync_github.py [--limit N] [--pull-requests] [--backend B] [--json]

``--limit N`` syncs the first N documents of the file (the pull requests between them are
served and skipped, as on GitHub, unless ``--pull-requests``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

os.environ.setdefault("SCARF_NO_ANALYTICS", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "tickets-github" / "huggingface-datasets-issues.jsonl"
FULL_NAME = "huggingface/datasets"
TOKEN = "bench-token-not-a-secret"
TOKEN_ENV = "BENCH_GITHUB_TOKEN"


def load(limit: int | None, pull_requests: bool) -> tuple[list[dict[str, Any]], int]:
    """The served issue objects (in file order) and how many of them the connector keeps."""
    served: list[dict[str, Any]] = []
    kept = 0
    with DATA.open(encoding="utf-8") as f:
        for line in f:
            if limit is not None and kept >= limit:
                break
            issue = json.loads(line)
            served.append(issue)
            if pull_requests or not issue.get("pull_request"):
                kept += 1
    return served, kept


class FakeGitHub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, issues: list[dict[str, Any]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.issues = issues
        self.requests = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeGitHub

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)  # adds Date, which the connector's cursor follows
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.requests += 1
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._send(401, {"message": "Bad credentials"})
            return
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query))
        path = url.path.rstrip("/")
        base = f"/repos/{FULL_NAME}"
        if path == "/rate_limit":
            core = {"limit": 5000, "used": 0, "remaining": 5000, "reset": int(time.time()) + 3600}
            self._send(200, {"resources": {"core": core}, "rate": core})
        elif path == base:
            owner = {"login": "huggingface", "type": "Organization"}
            repo = {"full_name": FULL_NAME, "private": False, "visibility": "public"}
            self._send(200, {**repo, "owner": owner})
        elif path == f"{base}/issues":
            self._page(self._issues(params), params, url.path)
        elif path.startswith(f"{base}/issues/") and path.endswith("/comments"):
            self._page([], params, url.path)
        else:
            self._send(404, {"message": "Not Found"})

    def _issues(self, params: dict[str, str]) -> list[dict[str, Any]]:
        items = self.server.issues
        if "since" in params:
            items = [i for i in items if i["updated_at"] >= params["since"]]
        key = "updated_at" if params.get("sort") == "updated" else "created_at"
        return sorted(items, key=lambda i: (i[key], i["number"]))

    def _page(self, items: list[dict[str, Any]], params: dict[str, str], path: str) -> None:
        per_page = int(params.get("per_page", 30))
        page = int(params.get("page", 1))
        headers = {}
        if page * per_page < len(items):
            query = urlencode({**params, "page": str(page + 1)})
            headers["Link"] = f'<{self.server.url}{path}?{query}>; rel="next"'
        self._send(200, items[(page - 1) * per_page : page * per_page], headers)


def connector_alone(config: dict[str, Any]) -> tuple[float, int]:
    """The connector's own cost: listing, comments requests, text and hashes; no pipeline."""
    from connectors import registry
    from connectors.base import Upsert

    connector = registry.build("github", config)
    started = time.perf_counter()
    documents = 0
    for change in connector.sync(None):
        if isinstance(change, Upsert):
            change.document.read()
            documents += 1
    return time.perf_counter() - started, documents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="documents to sync")
    parser.add_argument("--pull-requests", action="store_true", help="sync pull requests too")
    parser.add_argument("--backend", default="auto")
    parser.add_argument(
        "--connector-only", action="store_true", help="time the connector alone (no model)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not DATA.exists():
        print(f"skipped: {DATA} is absent (third-party evaluation data)", file=sys.stderr)
        return

    from context_server.runtime import Runtime
    from context_server.settings import Settings
    from context_server.specs import SourceSpec
    from indexing.embed import MiniLMEmbedder
    from indexing.parse import parse

    served, kept = load(args.limit, args.pull_requests)
    server = FakeGitHub(served)
    thread = threading.Thread(target=server.serve_forever, name="fake-github", daemon=True)
    thread.start()
    os.environ[TOKEN_ENV] = TOKEN
    config: dict[str, Any] = {
        "base_url": server.url,
        "repositories": [FULL_NAME],
        "token": {"env": TOKEN_ENV},
        "include_pull_requests": args.pull_requests,
    }
    try:
        connector_s, documents = connector_alone(config)
        connector_requests = server.requests
        if args.connector_only:
            print(
                f"connector alone: {documents} documents in {connector_s:.2f}s "
                f"({documents / connector_s:.0f} docs/s, {connector_requests} requests)"
            )
            return
        server.requests = 0
        with tempfile.TemporaryDirectory() as tmp:
            embedder = MiniLMEmbedder(backend=args.backend)
            embedder.embed(["warm up the model"])  # model load is not ingest
            parse(b"# Warm up\n\nspaCy loads once.", filename="w.md", mime_type=None, max_bytes=99)
            runtime = Runtime(Settings(home=Path(tmp) / "home"), embedder=embedder)
            runtime.add_source(
                SourceSpec(
                    name="datasets-issues",
                    kind="github",
                    config=config,
                )
            )
            runtime.open_index()  # opening the index is start-up, not ingest
            first = runtime.sync("datasets-issues")[0].report
            first_requests = server.requests
            again = runtime.sync("datasets-issues")[0].report
            runtime.close()
    finally:
        server.shutdown()
        server.server_close()

    figures = {
        "corpus": f"{DATA.name} ({len(served)} objects served, {kept} kept)",
        "backend": embedder.backend,
        "documents": first.documents_seen,
        "upserted": first.upserted,
        "failed": first.failed,
        "chunks": first.chunks_embedded,
        "http_requests": first_requests,
        "first_sync_s": round(first.seconds, 2),
        "docs_per_s": round(first.documents_seen / first.seconds, 1),
        "chunks_per_s": round(first.chunks_embedded / first.seconds, 1),
        "connector_alone_s": round(connector_s, 2),
        "incremental_resync_s": round(again.seconds, 3),
        "incremental_resync_requests": server.requests - first_requests,
        "incremental_resync_reembedded": again.chunks_embedded,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for key, value in figures.items():
        print(f"{key:30} {value}")


if __name__ == "__main__":
    main()
