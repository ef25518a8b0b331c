"""Crash debris: a worker killed with kill -9 takes its command harness with it, what the
harness started is killed before the run's next attempt starts (no two attempts' harnesses
ever run at once), a run whose worker died on this machine is taken over at once instead
of after its lease, and stale ``.shipping-*.tmp`` files are removed at start-up.

Workers are real processes (a small driver around ``Worker.loop``, with a fake context
source so no model loads) sharing one SQLite store; the harness is a real command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from context_server.agents import load_agent_file
from context_server.runs import RunQueue
from context_server.runtime import Runtime
from context_server.settings import Settings
from context_server.shipping import ShipError, ShipOrder, ship
from context_server.store.models import AgentRun
from context_server.worker import Worker

REPO = Path(__file__).resolve().parents[2]

#: The harness: notes its pid and its child's, checks that no process of an earlier
#: attempt still lives (an overlap), leaves a child sleeping in its group, then works.
HARNESS = r"""
import json, os, subprocess, sys, time
marks = os.environ["MARKS"]

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

earlier = []
for name in sorted(os.listdir(marks)):
    if name.startswith("attempt-"):
        earlier += json.load(open(os.path.join(marks, name)))["pids"]
overlap = [pid for pid in earlier if alive(pid)]
child = subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
n = len([x for x in os.listdir(marks) if x.startswith("attempt-")]) + 1
with open(os.path.join(marks, f"attempt-{n}.json"), "w") as f:
    json.dump({"pids": [os.getpid(), child.pid], "overlap": overlap, "at": time.time()}, f)
json.load(sys.stdin)
time.sleep(float(os.environ.get("WORK_SECONDS", "0")) if n == 1 else 0.2)
print(json.dumps({"content": f"done by attempt {n}"}))
"""

#: A worker process: Worker.loop with a context source that answers no items.
DRIVER = r"""
import signal, sys, threading
from context_server.runtime import Runtime
from context_server.settings import Settings
from context_server.worker import Worker
from indexing.embed import FakeHashEmbedder

runtime = Runtime(Settings(), embedder=FakeHashEmbedder())
worker = Worker(runtime, lambda agent, user, query, budget: {"bundle_id": None, "items": []},
                poll=0.1)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
print("ready", flush=True)
worker.loop(stop)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            pytest.fail(f"{what} did not happen within {seconds}s")
        time.sleep(0.05)
    return time.monotonic() - started


@dataclass
class Deployment:
    tmp: Path
    env: dict[str, str]
    marks: Path
    runtime: Runtime
    workers: list[subprocess.Popen[bytes]]

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        env = dict(self.env, CONTEXT_SERVER_HOME=str(self.tmp / f"home-{name}"))
        with (self.tmp / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", DRIVER], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.workers.append(proc)
        return proc

    def enqueue(self) -> str:
        agent = load_agent_file(self.tmp / "agents" / "sleeper.yaml")
        done = RunQueue(self.runtime.sessions).enqueue(
            agent,
            trigger_kind="manual",
            trigger_key=f"manual:{time.time_ns()}",
            on_behalf_of="user:zoe",
            requested_by="test",
            input={"question": "q"},
        )
        return done.run_id

    def run(self, run_id: str) -> AgentRun:
        with self.runtime.sessions() as session:
            run = session.get(AgentRun, run_id)
            assert run is not None
            session.expunge(run)
            return run

    def attempts(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.marks.glob("attempt-*.json"))]


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    agents = tmp_path / "agents"
    agents.mkdir()
    (tmp_path / "harness.py").write_text(HARNESS)
    spec = {
        "name": "sleeper",
        "sources": ["drive"],
        "serves": ["user:zoe"],
        "context": {"query": "{{ input.question }}"},
        "harness": {"kind": "command", "command": [sys.executable, str(tmp_path / "harness.py")]},
        "review": {"approvers": ["user:lena"]},
        "ship": {"kind": "file", "dir": str(tmp_path / "outbox")},
        "max_attempts": 3,
    }
    (agents / "sleeper.yaml").write_text(yaml.safe_dump(spec))
    marks = tmp_path / "marks"
    marks.mkdir()
    env = dict(os.environ)
    env.update(
        CONTEXT_SERVER_DATABASE_URL=f"sqlite:///{tmp_path / 'store.sqlite3'}",
        CONTEXT_SERVER_AGENTS_DIR=str(agents),
        CONTEXT_SERVER_RUN_LEASE_SECONDS="60",
        PYTHONPATH=str(REPO),
        MARKS=str(marks),
        WORK_SECONDS="300",
    )
    settings = Settings(
        home=tmp_path / "home-test",
        database_url=env["CONTEXT_SERVER_DATABASE_URL"],
        agents_dir=agents,
    )
    runtime = Runtime(settings)
    d = Deployment(tmp_path, env, marks, runtime, [])
    try:
        yield d
    finally:
        for proc in d.workers:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        for attempt in d.attempts():  # never leave a sleeper behind, even when failing
            for pid in attempt["pids"]:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
        runtime.close()


def test_a_killed_worker_takes_its_harness_along_and_the_retry_never_overlaps(
    deployment: Deployment,
) -> None:
    d = deployment
    run_id = d.enqueue()
    first = d.start_worker("a")
    wait_for(lambda: len(d.attempts()) == 1, 60, "the first attempt's harness start")
    harness, grandchild = d.attempts()[0]["pids"]
    assert alive(harness) and alive(grandchild)

    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    seconds = wait_for(lambda: not alive(harness), 5, "the harness dying with its worker")
    assert seconds < 5

    # The next worker on this machine sees the dead worker at start-up: it kills what the
    # harness left (its child), and takes the run over at once, not after the 60 s lease.
    started = time.monotonic()
    d.start_worker("b")
    wait_for(lambda: d.run(run_id).state == "succeeded", 45, "the run succeeding")
    assert time.monotonic() - started < 45  # far below the 60 s lease
    assert not alive(grandchild)
    attempts = d.attempts()
    assert len(attempts) == 2
    assert attempts[1]["overlap"] == []  # nothing of attempt 1 ran when attempt 2 started
    run = d.run(run_id)
    assert run.attempts == 2
    outcomes = [h.get("outcome") for h in run.history]
    assert "worker_died" in outcomes and outcomes[-1] == "succeeded"


def test_a_takeover_after_the_lease_kills_the_previous_harness_first(
    deployment: Deployment,
) -> None:
    """A worker that is alive but stuck (stopped) loses its run when its lease runs out;
    the worker taking over kills the stuck attempt's harness group before starting its
    own, so the two never run at once."""
    d = deployment
    d.env["CONTEXT_SERVER_RUN_LEASE_SECONDS"] = "2"
    run_id = d.enqueue()
    first = d.start_worker("a")
    wait_for(lambda: len(d.attempts()) == 1, 60, "the first attempt's harness start")
    harness, grandchild = d.attempts()[0]["pids"]
    first.send_signal(signal.SIGSTOP)  # alive, but no heartbeat: the lease runs out
    try:
        d.start_worker("b")
        wait_for(lambda: d.run(run_id).state == "succeeded", 60, "the run succeeding")
        attempts = d.attempts()
        assert len(attempts) == 2
        assert attempts[1]["overlap"] == []
        assert not alive(harness) and not alive(grandchild)
    finally:
        first.send_signal(signal.SIGCONT)
    # The stuck worker, resumed, finds its run taken and records nothing over it.
    time.sleep(1.5)
    run = d.run(run_id)
    assert run.state == "succeeded" and run.attempts == 2


def test_stale_shipping_temp_files_are_removed_at_start_up(deployment: Deployment) -> None:
    d = deployment
    outbox = d.tmp / "outbox"
    outbox.mkdir()
    stale = outbox / ".shipping-abc123.tmp"
    stale.write_text("half an artifact")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    fresh = outbox / ".shipping-def456.tmp"  # a shipper writing right now: left alone
    fresh.write_text("being written")
    artifact = outbox / "shipped.md"
    artifact.write_text("a shipped artifact")
    os.utime(artifact, (old, old))
    Worker(d.runtime, lambda *a: {"bundle_id": None, "items": []}).step()
    assert not stale.exists()
    assert fresh.exists() and artifact.exists()


def test_a_failed_file_ship_leaves_no_temp_file(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    (outbox / "r1.md").write_text("other content")
    order = ShipOrder(
        review_id="r1",
        run_id="run",
        key="k",
        agent="a",
        title="t",
        content="new content",
        ship={"kind": "file", "dir": str(outbox)},
        output={"filename": "{{ review_id }}.md"},
        target=None,
        approvals=[],
        citations=[],
    )
    with pytest.raises(ShipError, match="exists with other content"):
        ship(order, lambda name: None)
    assert sorted(p.name for p in outbox.iterdir()) == ["r1.md"]


def test_the_death_signal_is_set_in_the_child() -> None:
    """The harness child asks the kernel for SIGKILL when its parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    probe = textwrap.dedent(
        """
        import ctypes, sys
        libc = ctypes.CDLL(None)
        sig = ctypes.c_int()
        libc.prctl(2, ctypes.byref(sig), 0, 0, 0)  # PR_GET_PDEATHSIG
        sys.stdin.read()
        print('{"content": "%d"}' % sig.value)
        """
    )
    from context_server.harness import CommandHarness, HarnessTask, run_command

    spec = CommandHarness(command=(sys.executable, "-c", probe))
    task = HarnessTask("a", "", "q", {}, {}, "markdown", {"items": []})
    seen: list[dict[str, Any]] = []
    result = run_command(spec, task, cancelled=lambda: False, base_dir=None, on_start=seen.append)
    assert result.content == str(int(signal.SIGKILL))
    assert seen and seen[0]["pid"] > 0 and seen[0]["started"]
