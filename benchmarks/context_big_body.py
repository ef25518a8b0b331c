"""``POST /v1/context`` latency while 1 MB request bodies are in flight.

A scratch org (synthetic handbook pages in a folder, synced through the real pipeline), an
agent, a user key, and the real app served by uvicorn on a local port: the body limit,
authentication before the body and the field caps all run as in production. It measures
context requests from one client:

1. alone (the baseline);
2. while another client sends 1 MB bodies (a 1 MB query, with a valid key), ten a second
   by default (``--flood-per-second``), one at a time;
3. the same without a key.

and prints p50/p95 of each phase, their ratio to the baseline, how the 1 MB requests were
answered (status, median time) and the server process's peak RSS. Figures depend on the
machine: compare the ratios.

    .venv/bin/python benchmarks/context_big_body.py [--requests 200] [--fake-embedder]
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from context_server.api.app import create_app
from context_server.runtime import Runtime
from context_server.settings import Settings

TOKEN = "bench-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
TOPICS = ["leave", "travel", "expenses", "security", "onboarding", "benefits", "hardware"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_share(root: Path, pages: int) -> None:
    for i in range(pages):
        topic = TOPICS[i % len(TOPICS)]
        body = " ".join(
            f"The {topic} policy section {j} says staff member {i} follows rule {i * j % 97}."
            for j in range(12)
        )
        path = root / topic / f"page-{i:04d}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# {topic.title()} {i}\n\n{body}\n")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def phase(client: httpx.Client, key: str, n: int) -> list[float]:
    out = []
    headers = {"Authorization": f"Bearer {key}"}
    for i in range(n):
        body = {"agent": "helper", "on_behalf_of": "user:ann", "query": f"{TOPICS[i % 7]} rule"}
        started = time.perf_counter()
        r = client.post("/v1/context", json=body, headers=headers)
        out.append(time.perf_counter() - started)
        assert r.status_code == 200, r.text
    return out


def flood(
    url: str,
    key: str | None,
    per_second: float,
    stop: threading.Event,
    seen: list[tuple[int, float]],
) -> None:
    """Send 1 MB bodies at ``per_second`` (one at a time: each waits for its answer) until
    ``stop``; the same load before and after a change, whatever each costs."""
    payload = json.dumps(
        {"agent": "helper", "on_behalf_of": "user:ann", "query": "x" * (1 << 20)}
    ).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    with httpx.Client(base_url=url, timeout=120) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                status = client.post("/v1/context", content=payload, headers=headers).status_code
            except httpx.HTTPError:
                status = -1  # the server closed the connection on a body it refused
            seen.append((status, time.perf_counter() - started))
            stop.wait(max(0.0, 1 / per_second - (time.perf_counter() - started)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--fake-embedder", action="store_true", help="hashing fake, not MiniLM")
    parser.add_argument("--flood-per-second", type=float, default=10.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        home, share = Path(scratch) / "home", Path(scratch) / "share"
        write_share(share, args.pages)
        settings = Settings(home=home)
        settings.agents_path.mkdir(parents=True)
        agent = {
            "name": "helper",
            "description": "answers staff questions",
            "sources": ["handbook"],
            "serves": ["group:staff"],
        }
        (settings.agents_path / "helper.yaml").write_text(yaml.safe_dump(agent))
        embedder = None
        if args.fake_embedder:
            from indexing.embed import FakeHashEmbedder

            embedder = FakeHashEmbedder()
        runtime = Runtime(settings, embedder=embedder)
        port = free_port()
        app = create_app(settings, runtime=runtime, admin_token=TOKEN)
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=url, timeout=300) as client:
                client.put(
                    "/v1/principals", json={"groups": {"staff": ["user:ann"]}}, headers=ADMIN
                ).raise_for_status()
                source = {
                    "name": "handbook",
                    "kind": "filesystem",
                    "config": {
                        "root": str(share),
                        "acl_rules": [{"glob": "**", "allow": ["group:staff"]}],
                    },
                }
                client.post("/v1/sources", json=source, headers=ADMIN).raise_for_status()
                client.post("/v1/sync", json={}, headers=ADMIN).raise_for_status()
                key = client.post("/v1/keys", json={"user": "user:ann"}, headers=ADMIN).json()[
                    "key"
                ]
                phase(client, key, 20)  # warm the model, the pools, the caches
                rows: list[dict[str, Any]] = []
                baseline = phase(client, key, args.requests)
                rows.append({"phase": "alone", "times": baseline, "flood": []})
                for label, flood_key in (
                    ("1 MB bodies, keyed", key),
                    ("1 MB bodies, no key", None),
                ):
                    stop, seen = threading.Event(), []
                    flooder = threading.Thread(
                        target=flood, args=(url, flood_key, args.flood_per_second, stop, seen)
                    )
                    flooder.start()
                    time.sleep(0.5)
                    times = phase(client, key, args.requests)
                    stop.set()
                    flooder.join()
                    rows.append({"phase": label, "times": times, "flood": seen})
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            runtime.close()

    base_p95 = percentile(baseline, 95)
    print(
        f"POST /v1/context, {args.requests} requests per phase, {args.pages} pages, "
        f"1 MB bodies at up to {args.flood_per_second:g}/s"
    )
    print(f"{'phase':24} {'p50 ms':>8} {'p95 ms':>8} {'p95/alone':>10}  1 MB requests answered")
    for row in rows:
        p50, p95 = percentile(row["times"], 50) * 1000, percentile(row["times"], 95) * 1000
        flood_seen: list[tuple[int, float]] = row["flood"]
        answered = ""
        if flood_seen:
            statuses = Counter(status for status, _ in flood_seen)
            median = statistics.median(t for _, t in flood_seen) * 1000
            answered = f"{len(flood_seen)}: {dict(statuses)}, median {median:.1f} ms"
        print(f"{row['phase']:24} {p50:8.1f} {p95:8.1f} {p95 / 1000 / base_p95:10.2f}  {answered}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the server process: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
