"""Jira sync throughput: real issues, served by a local fake Jira, through the real pipeline.

Serves ../shared/data/tickets-jira/*.csv (columns issuekey,title,description,storypoint) as
Jira Cloud REST API v3 responses from a real HTTP server on 127.0.0.1 in a thread: the
enhanced search (POST /rest/api/3/search/jql, nextPageToken pages) with ADF descriptions
built from the CSV text, project roles, group members and /myself. Then it syncs them with
the `jira` connector through the Runtime (real embedding model, real index) and prints
documents/s and chunks/s for the first sync, and the time of an unchanged re-sync.

Projects are taken round-robin, so a subset still spans every project. Usage:

    nice -n 10 python benchmarks/sync_jira.py [--limit N] [--page-size N] [--json]

Skips (exit 0, with a message) when the data folder is absent.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import re
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import zip_longest
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

os.environ.setdefault("SCARF_NO_ANALYTICS", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "tickets-jira"
TOKEN_ENV = "BENCH_JIRA_TOKEN"
TOKEN = "bench-token"
EMAIL = "bench@example.com"
API = "/rest/api/3"
_CODE = re.compile(r"\{(code|noformat)(?::[^}]*)?\}(.*?)\{\1\}", re.DOTALL)
_MARKUP = re.compile(r"\{html\}|<[^>]+>")


def read_issues(limit: int) -> list[dict[str, str]]:
    """Up to ``limit`` CSV rows, round-robin over the project files."""
    csv.field_size_limit(sys.maxsize)
    files = sorted(DATA.glob("*.csv"))
    readers = [
        csv.DictReader(f.open(encoding="utf-8", errors="replace", newline="")) for f in files
    ]
    rows: list[dict[str, str]] = []
    for batch in zip_longest(*readers):
        rows.extend(r for r in batch if r and r.get("issuekey"))
        if len(rows) >= limit:
            break
    return rows[:limit]


def text_nodes(text: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text}] if text else []


def to_adf(description: str) -> dict[str, Any]:
    """ADF for a CSV description: {code}/{noformat} blocks become code blocks, the rest
    paragraphs split on blank lines or runs of spaces (the export flattened newlines)."""
    content: list[dict[str, Any]] = []

    def prose(chunk: str) -> None:
        chunk = _MARKUP.sub(" ", chunk)
        for para in re.split(r"\n\s*\n|\s{3,}", chunk):
            para = " ".join(para.split())
            if para:
                content.append({"type": "paragraph", "content": text_nodes(para)})

    last = 0
    for match in _CODE.finditer(description):
        prose(description[last : match.start()])
        code = match.group(2).strip("\n ")
        if code:
            content.append({"type": "codeBlock", "attrs": {}, "content": text_nodes(code)})
        last = match.end()
    prose(description[last:])
    return {"type": "doc", "version": 1, "content": content}


class FakeJira:
    """Issues from the CSV rows, answered in Jira Cloud's shapes."""

    def __init__(self, rows: list[dict[str, str]], base: str) -> None:
        start = datetime(2020, 1, 1, tzinfo=UTC)
        self.issues: list[dict[str, Any]] = []
        self.projects: set[str] = set()
        for n, row in enumerate(rows):
            key = row["issuekey"].strip()
            project = key.rsplit("-", 1)[0]
            self.projects.add(project)
            updated = start + timedelta(minutes=n)
            self.issues.append(
                {
                    "id": str(10000 + n),
                    "key": key,
                    "self": f"{base}{API}/issue/{10000 + n}",
                    "fields": {
                        "summary": row.get("title", "").strip(),
                        "description": to_adf(row.get("description") or ""),
                        "comment": {"comments": [], "maxResults": 0, "total": 0, "startAt": 0},
                        "status": {"name": "Closed", "id": "6"},
                        "issuetype": {"name": "Story", "id": "10001"},
                        "priority": {"name": "Major", "id": "3"},
                        "labels": [f"storypoint-{row.get('storypoint', '').strip()}"],
                        "project": {"id": "1", "key": project, "name": project},
                        "reporter": {"accountId": "bench-reporter", "displayName": "Reporter"},
                        "security": None,
                        "updated": updated.strftime("%Y-%m-%dT%H:%M:%S.000+0000"),
                    },
                }
            )
        self.requests = 0

    def search(self, body: dict[str, Any]) -> dict[str, Any]:
        found = self.issues
        since = re.search(r'updated >= "([^"]+)"', body["jql"])
        if since:  # /myself says UTC, so the JQL time is UTC
            floor = datetime.strptime(since.group(1), "%Y/%m/%d %H:%M").replace(tzinfo=UTC)
            found = [i for i in found if datetime.fromisoformat(i["fields"]["updated"]) >= floor]
        fields = set(body.get("fields", []))
        size = min(int(body.get("maxResults", 50)), 5000 if fields <= {"key"} else 100)
        token = body.get("nextPageToken")
        start = int(base64.b64decode(token)) if token else 0
        page = [
            {**i, "fields": {k: v for k, v in i["fields"].items() if k in fields}}
            for i in found[start : start + size]
        ]
        result: dict[str, Any] = {"issues": page, "isLast": start + size >= len(found)}
        if not result["isLast"]:
            result["nextPageToken"] = base64.b64encode(str(start + size).encode()).decode()
        return result

    def answer(self, method: str, path: str, query: dict[str, str], body: Any) -> Any:
        self.requests += 1
        route = path.removeprefix(API)
        if route == "/myself":
            return {"accountId": "bench", "displayName": "Bench", "timeZone": "UTC"}
        if method == "POST" and route == "/search/jql":
            return self.search(body)
        if m := re.fullmatch(r"/project/([A-Z0-9_]+)", route):
            return {"id": "1", "key": m[1], "name": m[1]}
        if m := re.fullmatch(r"/project/([A-Z0-9_]+)/role", route):
            return {"Developers": f"{API}/project/{m[1]}/role/10360"}
        if m := re.fullmatch(r"/project/([A-Z0-9_]+)/role/(\d+)", route):
            group = f"{m[1].lower()}-developers"
            actor = {"name": group, "displayName": group, "groupId": f"gid-{group}"}
            return {
                "name": "Developers",
                "id": 10360,
                "actors": [
                    {
                        "id": 1,
                        "type": "atlassian-group-role-actor",
                        "name": group,
                        "displayName": group,
                        "actorGroup": actor,
                    },
                ],
            }
        if route == "/group/member":
            return {
                "startAt": 0,
                "maxResults": 50,
                "total": 1,
                "isLast": True,
                "values": [{"accountId": "bench-reader", "displayName": "Reader"}],
            }
        return None


def serve(fake_holder: dict[str, FakeJira]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, method: str) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            payload = fake_holder["fake"].answer(method, url.path, query, body)
            data = json.dumps(payload if payload is not None else {"errorMessages": ["no"]})
            self.send_response(200 if payload is not None else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data.encode())))
            self.end_headers()
            self.wfile.write(data.encode())

        def do_GET(self) -> None:
            self._reply("GET")

        def do_POST(self) -> None:
            self._reply("POST")

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=300, help="issues to serve (default 300)")
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not DATA.is_dir() or not any(DATA.glob("*.csv")):
        print(f"skipped: {DATA} is absent (the tickets-jira data set)", file=sys.stderr)
        return

    from context_server.runtime import Runtime
    from context_server.settings import Settings
    from context_server.specs import SourceSpec
    from indexing.embed import MiniLMEmbedder
    from indexing.parse import parse

    rows = read_issues(args.limit)
    holder: dict[str, FakeJira] = {}
    server = serve(holder)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    holder["fake"] = FakeJira(rows, base)
    os.environ[TOKEN_ENV] = TOKEN
    try:
        with tempfile.TemporaryDirectory() as tmp:
            embedder = MiniLMEmbedder(backend=args.backend)
            embedder.embed(["warm up the model"])  # model load is not ingest
            parse(
                b"# Warm up\n\nThe parser loads once.",
                filename="w.md",
                mime_type=None,
                max_bytes=99,
            )
            runtime = Runtime(Settings(home=Path(tmp) / "home"), embedder=embedder)
            runtime.add_source(
                SourceSpec(
                    name="jira-bench",
                    kind="jira",
                    config={
                        "base_url": base,
                        "email": EMAIL,
                        "api_token": {"env": TOKEN_ENV},
                        "page_size": args.page_size,
                    },
                )
            )
            runtime.open_index()
            started = time.perf_counter()
            first = runtime.sync("jira-bench")[0]
            wall = time.perf_counter() - started
            again = runtime.sync("jira-bench")[0].report
            runtime.close()
    finally:
        server.shutdown()

    report = first.report
    figures = {
        "corpus": f"{DATA} ({len(rows)} issues, {len(holder['fake'].projects)} projects)",
        "backend": embedder.backend,
        "documents": report.documents_seen,
        "failed": report.failed,
        "chunks": report.chunks_embedded,
        "sync_s": round(report.seconds, 2),
        "sync_wall_s_with_memberships": round(wall, 2),
        "docs_per_s": round(report.documents_seen / report.seconds, 1),
        "chunks_per_s": round(report.chunks_embedded / report.seconds, 1),
        "unchanged_resync_s": round(again.seconds, 3),
        "unchanged_resync_reembedded": again.chunks_embedded,
        "http_requests": holder["fake"].requests,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for key, value in figures.items():
        print(f"{key:30} {value}")


if __name__ == "__main__":
    main()
