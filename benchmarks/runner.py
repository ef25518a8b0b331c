"""The runner and the review queue: queue overhead, end-to-end runs, approval to shipment.

Prints, for the store given (SQLite in a temporary data dir by default; ``--postgres URL``
for PostgreSQL):
- queue: enqueue, and claim + record a result (no context, no harness), per second;
- runs: ``--runs N`` manual runs of an extractive agent over a small synthetic drive with the
  real model and the embedded index, by ``--threads`` worker threads: runs/s and the p50/p95
  of one run (context + harness + review, from the run's own record);
- reviews: approve → shipped into a folder, p50/p95 per review.

    nice -n 10 python benchmarks/runner.py [--runs 100] [--threads 1] [--postgres URL] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("SCARF_NO_ANALYTICS", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import yaml

from context_server.agents import load_agent_file
from context_server.review import ReviewDesk
from context_server.runs import RunQueue
from context_server.runtime import Runtime
from context_server.settings import Settings
from context_server.specs import PrincipalsSpec, SourceSpec
from context_server.store.models import AgentRun
from context_server.worker import Worker

TOPICS = ["leave", "expenses", "security", "travel", "onboarding", "payroll", "hardware", "office"]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def make_drive(root: Path, docs: int) -> None:
    for n in range(docs):
        topic = TOPICS[n % len(TOPICS)]
        text = " ".join(
            f"Policy {n} on {topic}: rule {k} says staff should follow step {k} for {topic}."
            for k in range(12)
        )
        path = root / topic / f"{topic}-{n}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# {topic.title()} policy {n}\n\n{text}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--queue-jobs", type=int, default=500)
    parser.add_argument("--postgres", help="SQLAlchemy URL of an empty PostgreSQL database")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        settings = Settings(home=home, database_url=args.postgres)
        settings.agents_path.mkdir(parents=True)
        make_drive(Path(tmp) / "drive", args.docs)
        spec = {
            "name": "bench",
            "sources": ["drive"],
            "serves": ["group:staff"],
            "context": {"query": "{{ input.question }}"},
            "harness": {"kind": "extractive"},
            "review": {"approvers": ["user:lead"]},
            "ship": {"kind": "file", "dir": str(Path(tmp) / "outbox")},
        }
        (settings.agents_path / "bench.yaml").write_text(yaml.safe_dump(spec))
        runtime = Runtime(settings)
        runtime.load_principals(PrincipalsSpec(groups={"staff": ["user:ann", "user:lead"]}))
        rules = [{"glob": "**", "allow": ["group:staff"]}]
        source = SourceSpec(
            name="drive",
            kind="filesystem",
            config={"root": str(Path(tmp) / "drive"), "acl_rules": rules},
        )
        runtime.add_source(source)
        runtime.sync("drive")
        agent = load_agent_file(settings.agents_path / "bench.yaml")
        queue = RunQueue(runtime.sessions)

        # -- queue overhead ---------------------------------------------------------------
        started = time.perf_counter()
        for n in range(args.queue_jobs):
            queue.enqueue(
                agent,
                trigger_kind="manual",
                trigger_key=f"q:{n}",
                on_behalf_of="user:ann",
                requested_by="bench",
            )
        enqueue_s = time.perf_counter() - started
        started = time.perf_counter()
        claimed = 0
        while (run_id := queue.claim("bench", timedelta(seconds=30))) is not None:
            queue.release(run_id, "bench", error="bench", retryable=False)
            claimed += 1
        claim_s = time.perf_counter() - started

        # -- end-to-end runs ----------------------------------------------------------------
        runtime.open_index()
        runtime.embedder.embed(["warm up"])
        ids = [
            queue.enqueue(
                agent,
                trigger_kind="manual",
                trigger_key=f"r:{n}",
                on_behalf_of="user:ann",
                requested_by="bench",
                input={
                    "question": f"What does the {TOPICS[n % 8]} policy say about step {n % 12}?"
                },
            ).run_id
            for n in range(args.runs)
        ]
        workers = [Worker(runtime, worker_id=f"bench-{t}", poll=0.05) for t in range(args.threads)]
        started = time.perf_counter()
        threads = [threading.Thread(target=w.until_idle) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        runs_s = time.perf_counter() - started
        with runtime.sessions() as s:
            done = [s.get(AgentRun, i) for i in ids]
        per_run = [
            r.history[-1]["seconds"] for r in done if r is not None and r.state == "succeeded"
        ]

        # -- approve and ship --------------------------------------------------------------
        desk = ReviewDesk(runtime)
        reviews = desk.list_reviews(state="pending", limit=1000)["reviews"]
        ship_times = []
        for review in reviews[: min(50, len(reviews))]:
            t0 = time.perf_counter()
            shown = desk.approve(review["id"], "user:lead")
            ship_times.append(time.perf_counter() - t0)
            assert shown["state"] == "shipped", shown["state"]
        runtime.close()

    result: dict[str, Any] = {
        "store": "postgresql" if args.postgres else "sqlite",
        "queue": {
            "jobs": args.queue_jobs,
            "enqueue_per_s": round(args.queue_jobs / enqueue_s, 1),
            "claim_and_record_per_s": round(claimed / claim_s, 1),
        },
        "runs": {
            "runs": args.runs,
            "threads": args.threads,
            "succeeded": len(per_run),
            "runs_per_s": round(args.runs / runs_s, 2),
            "run_p50_ms": round(statistics.median(per_run) * 1000, 1) if per_run else None,
            "run_p95_ms": round(pct(per_run, 0.95) * 1000, 1) if per_run else None,
        },
        "reviews": {
            "approved_and_shipped": len(ship_times),
            "approve_to_shipped_p50_ms": round(statistics.median(ship_times) * 1000, 1)
            if ship_times
            else None,
            "approve_to_shipped_p95_ms": round(pct(ship_times, 0.95) * 1000, 1)
            if ship_times
            else None,
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for section, figures in result.items():
            print(section, figures)


if __name__ == "__main__":
    main()
