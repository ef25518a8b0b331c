"""What MCP costs over REST for the same context request, through a real server.

Starts the app (uvicorn, in a thread) over a synthetic drive with the real model and the
embedded index, then asks the same questions ``--requests`` times through
``POST /v1/context`` (httpx) and through the MCP tool ``search_context`` (the official
client, one session), and prints p50/p95 per request for each and the ratio.

    nice -n 10 python benchmarks/mcp_vs_rest.py [--requests 200] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("SCARF_NO_ANALYTICS", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import httpx2  # the MCP client's HTTP library
import uvicorn
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from context_server.api.app import create_app
from context_server.runtime import Runtime
from context_server.settings import Settings
from context_server.specs import PrincipalsSpec, SourceSpec

TOKEN = "bench-admin-token"
TOPICS = ["leave", "expenses", "security", "travel", "onboarding", "payroll", "hardware", "office"]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build(tmp: Path, docs: int) -> tuple[Settings, Runtime]:
    drive = tmp / "drive"
    for n in range(docs):
        topic = TOPICS[n % len(TOPICS)]
        path = drive / topic / f"{topic}-{n}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = " ".join(f"Rule {k} of the {topic} policy {n}: do step {k}." for k in range(12))
        path.write_text(f"# {topic.title()} policy {n}\n\n{text}\n")
    settings = Settings(home=tmp / "home", port=free_port())
    settings.agents_path.mkdir(parents=True)
    spec = {"name": "bench", "sources": ["drive"], "serves": ["group:staff"]}
    (settings.agents_path / "bench.yaml").write_text(yaml.safe_dump(spec))
    runtime = Runtime(settings)
    runtime.load_principals(PrincipalsSpec(groups={"staff": ["user:ann"]}))
    rules = [{"glob": "**", "allow": ["group:staff"]}]
    config = {"root": str(drive), "acl_rules": rules}
    runtime.add_source(SourceSpec(name="drive", kind="filesystem", config=config))
    runtime.sync("drive")
    return settings, runtime


async def over_mcp(url: str, questions: list[str]) -> list[float]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    times = []
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
        transport = streamable_http_client(f"{url}/mcp", http_client=http)
        async with Client(transport) as client:
            for q in questions:
                t0 = time.perf_counter()
                result = await client.call_tool(
                    "search_context", {"query": q, "on_behalf_of": "user:ann", "agent": "bench"}
                )
                times.append(time.perf_counter() - t0)
                assert not result.is_error, result
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings, runtime = build(Path(tmp), args.docs)
        app = create_app(settings, runtime=runtime, admin_token=TOKEN)
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{settings.port}"
        while not server.started:
            time.sleep(0.05)
        questions = [
            f"What does the {TOPICS[n % 8]} policy say about step {n % 12}?"
            for n in range(args.requests)
        ]
        rest = []
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            body = {"agent": "bench", "on_behalf_of": "user:ann", "query": "warm up"}
            http.post("/v1/context", json=body).raise_for_status()
            for q in questions:
                t0 = time.perf_counter()
                r = http.post("/v1/context", json={**body, "query": q})
                rest.append(time.perf_counter() - t0)
                r.raise_for_status()
        mcp = asyncio.run(over_mcp(url, questions))
        server.should_exit = True
        thread.join(timeout=30)
        runtime.close()
    result: dict[str, Any] = {
        "requests": args.requests,
        "rest_p50_ms": round(statistics.median(rest) * 1000, 1),
        "rest_p95_ms": round(pct(rest, 0.95) * 1000, 1),
        "mcp_p50_ms": round(statistics.median(mcp) * 1000, 1),
        "mcp_p95_ms": round(pct(mcp, 0.95) * 1000, 1),
        "mcp_over_rest_p50": round(statistics.median(mcp) / statistics.median(rest), 2),
    }
    print(json.dumps(result, indent=2) if args.json else result)


if __name__ == "__main__":
    main()
