"""Workers as separate processes on the real PostgreSQL: many jobs run exactly once, a worker
killed mid-run loses its job to another, a crash between shipping and recording ships once.

A `serve` process owns the embedded index (real model) and answers the workers' context
requests; the workers are `context-server worker` processes, as deployed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import select

from context_server.agents import load_agent_file
from context_server.review import SHIP_LEASE, ReviewDesk
from context_server.runs import RunQueue
from context_server.runtime import Runtime
from context_server.settings import Settings
from context_server.store.models import AgentRun, Review
from tests.integration.test_cli import BIN, cli, free_port

pytestmark = [pytest.mark.postgres, pytest.mark.model]

SCRIPT = """
import json, os, sys, time
task = json.load(sys.stdin)
marker = os.environ.get("MARKER_DIR")
if marker:
    open(os.path.join(marker, task["input"]["n"]), "a").write(str(os.getpid()) + "\\n")
time.sleep(float(os.environ.get("WORK_SECONDS", "0")))
items = task["context"]["items"]
print(json.dumps({"content": f"answer {task['input']['n']} from {len(items)} items"}))
"""


@pytest.fixture
def deployment(tmp_path: Path, postgres_url: str) -> Iterator[dict[str, Any]]:
    share = tmp_path / "share"
    share.mkdir()
    (share / "leave.md").write_text("# Leave\n\nEvery employee has 27 days of paid leave.")
    (share / "office.md").write_text("# Office\n\nThe office opens at nine.")
    (tmp_path / "drive.yaml").write_text(
        "name: drive\nkind: filesystem\nconfig:\n  root: share\n  acl_rules:\n"
        '    - {glob: "**", allow: ["group:everyone"]}\n'
    )
    (tmp_path / "principals.yaml").write_text("groups:\n  everyone: [user:alice, user:lena]\n")
    agents = tmp_path / "agents"
    agents.mkdir()
    (tmp_path / "agent.py").write_text(SCRIPT)
    spec = {
        "name": "answerer",
        "sources": ["drive"],
        "serves": ["group:everyone"],
        "context": {"query": "leave question {{ input.n }}"},
        "harness": {"kind": "command", "command": [sys.executable, str(tmp_path / "agent.py")]},
        "review": {"approvers": ["user:lena"]},
        "ship": {"kind": "file", "dir": str(tmp_path / "outbox")},
        "max_attempts": 3,
    }
    (agents / "answerer.yaml").write_text(yaml.safe_dump(spec))
    markers = tmp_path / "markers"
    markers.mkdir()
    env = dict(os.environ)
    env.update(
        CONTEXT_SERVER_HOME=str(tmp_path / "home"),
        CONTEXT_SERVER_PORT=str(free_port()),
        CONTEXT_SERVER_DATABASE_URL=postgres_url,
        CONTEXT_SERVER_AGENTS_DIR=str(agents),
        CONTEXT_SERVER_RUN_WORKERS="0",
        CONTEXT_SERVER_RUN_LEASE_SECONDS="2",
        MARKER_DIR=str(markers),
    )
    env.pop("CONTEXT_SERVER_QDRANT_URL", None)
    cli(env, "principals", "load", str(tmp_path / "principals.yaml"))
    cli(env, "sources", "add", str(tmp_path / "drive.yaml"))
    cli(env, "sync", "drive")
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([str(BIN), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{env['CONTEXT_SERVER_PORT']}/healthz"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert server.poll() is None, (tmp_path / "serve.log").read_text()
        try:
            if httpx.get(url).status_code == 200 and (tmp_path / "home/server.json").exists():
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    settings = Settings(home=tmp_path / "home", database_url=postgres_url, agents_dir=agents)
    runtime = Runtime(settings)  # the store only: this process never opens the index
    try:
        yield {"env": env, "runtime": runtime, "markers": markers, "tmp": tmp_path, "spec": spec}
    finally:
        runtime.close()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        log.close()


def start_worker(env: dict[str, str], log: Path, **extra: str) -> subprocess.Popen[bytes]:
    with log.open("w") as sink:  # the child keeps its own descriptor
        return subprocess.Popen(
            [str(BIN), "worker"], env={**env, **extra}, stdout=sink, stderr=subprocess.STDOUT
        )


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def runs(runtime: Runtime) -> list[AgentRun]:
    with runtime.sessions() as s:
        return list(s.scalars(select(AgentRun)))


def enqueue(d: dict[str, Any], count: int) -> list[str]:
    agent = load_agent_file(Path(d["env"]["CONTEXT_SERVER_AGENTS_DIR"]) / "answerer.yaml")
    queue = RunQueue(d["runtime"].sessions)
    return [
        queue.enqueue(
            agent,
            trigger_kind="manual",
            trigger_key=f"manual:{n}",
            on_behalf_of="user:alice",
            requested_by="test",
            input={"n": str(n)},
        ).run_id
        for n in range(count)
    ]


def test_two_workers_run_fifty_jobs_each_exactly_once(deployment: dict[str, Any]) -> None:
    d = deployment
    ids = enqueue(d, 50)
    workers = [
        start_worker(d["env"], d["tmp"] / f"worker{n}.log", WORK_SECONDS="0.2") for n in range(2)
    ]
    try:
        wait_for(lambda: all(r.state == "succeeded" for r in runs(d["runtime"])), 240, "50 runs")
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            assert w.wait(timeout=60) == 0
    done = runs(d["runtime"])
    assert sorted(r.id for r in done) == sorted(ids)
    assert all(r.attempts == 1 for r in done), [
        (r.attempts, r.history, r.error) for r in done if r.attempts != 1
    ][:3]
    # each harness ran once per job: one marker line per job
    for n in range(50):
        assert len((d["markers"] / str(n)).read_text().splitlines()) == 1
    owners = {r.history[-1]["worker"].rsplit(":", 1)[0] for r in done}
    assert len(owners) == 2, owners  # both processes took jobs
    with d["runtime"].sessions() as s:
        reviews = s.scalars(select(Review)).all()
    assert sorted(r.run_id for r in reviews) == sorted(ids)


def test_a_worker_killed_mid_run_loses_the_job_to_another(deployment: dict[str, Any]) -> None:
    d = deployment
    (run_id,) = enqueue(d, 1)
    first = start_worker(d["env"], d["tmp"] / "first.log", WORK_SECONDS="30")
    marker = d["markers"] / "0"
    wait_for(marker.exists, 120, "the first worker to start the job")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    second = start_worker(d["env"], d["tmp"] / "second.log", WORK_SECONDS="0")
    try:
        wait_for(lambda: runs(d["runtime"])[0].state == "succeeded", 120, "the takeover")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0
    (run,) = runs(d["runtime"])
    assert run.attempts == 2
    # The second worker saw at start-up that the first one (same machine) was gone and
    # released its run at once: noted as worker_died, then taken over as usual.
    assert [h["outcome"] for h in run.history] == ["worker_died", "lease_expired", "succeeded"]
    assert len(marker.read_text().splitlines()) == 2  # started twice, finished once
    with d["runtime"].sessions() as s:
        assert len(s.scalars(select(Review).where(Review.run_id == run_id)).all()) == 1


CRASH = """
import os, sys
from context_server.review import ReviewDesk
from context_server.runtime import Runtime
from context_server.settings import Settings
runtime = Runtime(Settings())
desk = ReviewDesk(runtime)
desk.after_ship = lambda _id: os._exit(9)  # the process dies after shipping, before recording
desk.approve(sys.argv[1], "user:lena")
"""


def test_a_process_dying_between_shipping_and_recording_ships_once(
    deployment: dict[str, Any],
) -> None:
    d = deployment
    enqueue(d, 1)
    proc = subprocess.run(
        [str(BIN), "worker", "--until-idle", "--json"],
        env=d["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert json.loads(proc.stdout)["processed"] == 1, proc.stderr
    desk = ReviewDesk(d["runtime"])
    (review,) = desk.list_reviews()["reviews"]
    crashed = subprocess.run([sys.executable, "-c", CRASH, review["id"]], env=d["env"], timeout=120)
    assert crashed.returncode == 9
    outbox = d["tmp"] / "outbox"
    assert len(list(outbox.glob("*.md"))) == 1
    assert desk.show(review["id"])["state"] == "shipping"
    # a worker recovers the shipment once its lease is over; simulate the clock moving on
    later = ReviewDesk(d["runtime"], clock=lambda: datetime.now(UTC) + SHIP_LEASE * 2)
    assert later.ship_pending() == [review["id"]]
    shown = desk.show(review["id"])
    assert shown["state"] == "shipped" and shown["ship_result"]["already_shipped"] is True
    assert len(list(outbox.glob("*.md"))) == 1
    assert [e["action"] for e in shown["events"]] == ["submit", "approve", "ship"]
