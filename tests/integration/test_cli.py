"""The `context-server` command as a user runs it: real model, real index, real processes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes.uvicorn_server import free_port

BIN = Path(sys.executable).parent / "context-server"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = dict(os.environ)
    e.update(
        CONTEXT_SERVER_HOME=str(tmp_path / "home"),
        CONTEXT_SERVER_PORT=str(free_port()),
    )
    e.pop("CONTEXT_SERVER_DATABASE_URL", None)
    e.pop("CONTEXT_SERVER_QDRANT_URL", None)
    return e


@pytest.fixture
def org(tmp_path: Path) -> Path:
    root = tmp_path / "org"
    (root / "share" / "finance").mkdir(parents=True)
    (root / "share" / "finance" / "budget.md").write_text(
        "# Budget 2027\n\nThe marketing budget for 2027 is 42,000 EUR, approved in October."
    )
    (root / "share" / "broken.pdf").write_bytes(b"%PDF-1.7 truncated")
    (root / "share" / "welcome.md").write_text(
        "# Welcome\n\nThe office in Lyon opens at nine. Coffee is free."
    )
    (root / "drive.yaml").write_text(
        "name: drive\nkind: filesystem\nconfig:\n  root: share\n  acl_rules:\n"
        '    - {glob: "finance/**", allow: ["group:finance"]}\n'
        '    - {glob: "**", allow: ["group:everyone"]}\n'
    )
    (root / "principals.yaml").write_text(
        "groups:\n  everyone: [user:carol, group:finance]\n  finance: [user:alice]\n"
    )
    return root


def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


@pytest.mark.model
def test_add_sync_search_without_a_server(env: dict[str, str], org: Path) -> None:
    assert json.loads(cli(env, "principals", "load", str(org / "principals.yaml"), "--json").stdout)
    added = json.loads(cli(env, "sources", "add", str(org / "drive.yaml"), "--json").stdout)
    assert added["name"] == "drive"
    report = json.loads(cli(env, "sync", "drive", "--json").stdout)
    for key in ("documents_seen", "upserted", "unchanged", "deleted", "failed", "chunks_embedded"):
        assert key in report
    assert (report["documents_seen"], report["upserted"], report["failed"]) == (3, 2, 1)
    assert report["failures"][0]["external_id"] == "broken.pdf"
    again = json.loads(cli(env, "sync", "drive", "--json").stdout)
    assert (again["unchanged"], again["chunks_embedded"], again["failed"]) == (2, 0, 1)
    failures = json.loads(cli(env, "sources", "failures", "drive", "--json").stdout)["failures"]
    assert [(f["external_id"], f["reason"]) for f in failures] == [("broken.pdf", "corrupt")]

    def top(who: str) -> list[dict[str, object]]:
        out = cli(env, "search", "marketing budget 2027", "--as", who, "-k", "3", "--json").stdout
        results: list[dict[str, object]] = json.loads(out)["results"]
        return results

    alice = top("user:alice")
    assert alice[0]["title"] == "budget.md"
    assert {"document_id", "title", "source", "url", "chunk_id", "text", "score"} <= set(alice[0])
    assert all(r["title"] != "budget.md" for r in top("user:carol"))
    listed = json.loads(cli(env, "sources", "list", "--json").stdout)["sources"]
    assert listed[0]["documents"] == 2


def test_bad_input_gets_a_clear_error(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: drive\nkind: filesystem\nconfig: {root: /no/such/dir, colour: red}\n")
    proc = cli(env, "sources", "add", str(bad), "--json", check=False)
    assert proc.returncode == 1
    assert "colour" in json.loads(proc.stdout)["error"]
    proc = cli(env, "sources", "add", str(tmp_path / "missing.yaml"), check=False)
    assert proc.returncode == 1 and "no such file" in proc.stderr
    bad.write_text("groups: {finance: [alice]}\n")
    proc = cli(env, "principals", "load", str(bad), check=False)
    assert proc.returncode == 1 and "user:<name>" in proc.stderr
    proc = cli(env, "sync", "nope", "--json", check=False)
    assert proc.returncode == 1 and "no source named 'nope'" in json.loads(proc.stdout)["error"]


@pytest.fixture
def server(env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    log = tmp_path / "serve.log"
    with (
        log.open("w") as sink,
        subprocess.Popen(
            [str(BIN), "serve"], env=env, stdout=sink, stderr=subprocess.STDOUT, text=True
        ) as proc,
    ):
        url = f"http://127.0.0.1:{env['CONTEXT_SERVER_PORT']}/healthz"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"serve exited: {log.read_text()}")
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        yield proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)


@pytest.mark.model
def test_commands_go_through_a_running_server(
    env: dict[str, str], org: Path, server: subprocess.Popen[str]
) -> None:
    home = Path(env["CONTEXT_SERVER_HOME"])
    info = json.loads((home / "server.json").read_text())
    assert info["pid"] == server.pid
    assert oct((home / "server.json").stat().st_mode & 0o777) == "0o600"
    cli(env, "principals", "load", str(org / "principals.yaml"))
    cli(env, "sources", "add", str(org / "drive.yaml"))
    report = json.loads(cli(env, "sync", "--json").stdout)["runs"][0]
    assert report["upserted"] == 2
    failures = cli(env, "sources", "failures", "drive", "--reason", "corrupt").stdout
    assert "broken.pdf" in failures
    out = cli(env, "search", "office opens", "--as", "user:carol", "--json").stdout
    assert json.loads(out)["results"][0]["title"] == "welcome.md"

    second = cli(env, "serve", check=False)
    assert second.returncode == 1 and "already runs" in second.stderr

    server.send_signal(signal.SIGINT)
    server.wait(timeout=30)
    assert not (home / "server.json").exists()
    # with the server gone, the CLI opens the index itself again
    out = cli(env, "search", "office opens", "--as", "user:carol", "--json").stdout
    assert json.loads(out)["results"][0]["title"] == "welcome.md"


AGENT = """\
name: helpdesk
description: Answers staff questions
sources: [drive]
acting_as: on_behalf_of
serves: ["group:everyone"]
budget_tokens: 500
"""


@pytest.mark.model
def test_agents_keys_context_bundles_and_audit_through_a_server(
    env: dict[str, str], org: Path, server: subprocess.Popen[str]
) -> None:
    agents = Path(env["CONTEXT_SERVER_HOME"]) / "agents"
    agents.mkdir()
    (agents / "helpdesk.yaml").write_text(AGENT)
    listed = json.loads(cli(env, "agents", "list", "--json").stdout)
    assert [a["name"] for a in listed["agents"]] == ["helpdesk"] and listed["invalid"] == []
    cli(env, "principals", "load", str(org / "principals.yaml"))
    cli(env, "sources", "add", str(org / "drive.yaml"))
    cli(env, "sync")

    created = json.loads(cli(env, "keys", "create", "--agent", "helpdesk", "--json").stdout)
    key = created["key"]
    # the key works against the server's HTTP API directly, as an agent would use it
    url = f"http://127.0.0.1:{env['CONTEXT_SERVER_PORT']}"
    body = {"agent": "helpdesk", "on_behalf_of": "user:alice", "query": "marketing budget"}
    r = httpx.post(f"{url}/v1/context", json=body, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    assert r.json()["items"][0]["citation"]["title"] == "budget.md"
    r = httpx.post(
        f"{url}/v1/context",
        json={**body, "on_behalf_of": "user:stranger"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 403

    out = cli(
        env,
        "context",
        "marketing budget",
        "--agent",
        "helpdesk",
        "--on-behalf-of",
        "user:carol",
        "--json",
    ).stdout
    bundle = json.loads(out)
    assert all(i["citation"]["title"] != "budget.md" for i in bundle["items"])
    assert bundle["used_tokens"] <= 500
    shown = json.loads(cli(env, "bundles", "show", bundle["bundle_id"], "--json").stdout)
    assert shown["principals"]["user"] == ["group:everyone", "user:carol"]
    check = json.loads(cli(env, "bundles", "check", bundle["bundle_id"], "--json").stdout)
    assert check["stale"] is False
    doc_id = bundle["items"][0]["citation"]["document_id"]
    doc = json.loads(
        cli(
            env,
            "documents",
            "show",
            doc_id,
            "--agent",
            "helpdesk",
            "--on-behalf-of",
            "user:carol",
            "--json",
        ).stdout
    )
    assert doc["document_id"] == doc_id and doc["chunks"]

    keys = json.loads(cli(env, "keys", "list", "--json").stdout)["keys"]
    assert [k["id"] for k in keys] == [created["id"]] and "key" not in keys[0]
    cli(env, "keys", "revoke", created["id"])
    r = httpx.post(f"{url}/v1/context", json=body, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 401

    lines = cli(env, "audit", "export", "--since", "1h").stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert [(e["action"], e["outcome"], e["caller"]) for e in events] == [
        ("context", "allowed", "agent:helpdesk"),
        ("context", "denied", "agent:helpdesk"),
        ("context", "allowed", "admin"),
        ("bundle", "allowed", "admin"),
        ("bundle_check", "allowed", "admin"),
        ("document", "allowed", "admin"),
        ("context", "unauthenticated", "unauthenticated"),  # the revoked key's request
    ]


def test_agent_files_are_validated_with_clear_errors(env: dict[str, str], tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(AGENT)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: Bad Name\nsources: []\nacting_as: sometimes\nmax_age: forever\n")
    proc = cli(env, "agents", "validate", str(good), str(bad), "--json", check=False)
    assert proc.returncode == 1
    files = json.loads(proc.stdout)["files"]
    assert files[0] == {"path": str(good), "valid": True, "name": "helpdesk"}
    error = files[1]["error"]
    for field in ("name", "sources", "acting_as", "max_age"):
        assert field in error
    assert cli(env, "agents", "validate", str(good)).returncode == 0
    schema = json.loads(cli(env, "agents", "schema").stdout)
    assert "acting_as" in schema["properties"]
    proc = cli(env, "keys", "create", "--json", check=False)
    assert proc.returncode == 1 and "exactly one" in json.loads(proc.stdout)["error"]


def test_connectors_list_sources_status_and_worker_once(env: dict[str, str], org: Path) -> None:
    listed = json.loads(cli(env, "connectors", "list", "--json").stdout)["connectors"]
    kinds = {c["kind"]: c for c in listed}
    assert set(kinds) >= {
        "filesystem",
        "jsonl",
        "github",
        "jira",
        "confluence",
        "mediawiki",
        "markdown_wiki",
        "google_drive",
    }
    assert all("error" not in c for c in listed), listed
    assert "repositories" in kinds["github"]["config_schema"]["properties"]

    nightly = org / "nightly.yaml"
    nightly.write_text((org / "drive.yaml").read_text() + 'schedule: "0 3 * * *"\n')
    cli(env, "sources", "add", str(nightly))
    status = json.loads(cli(env, "sources", "status", "--json").stdout)["sources"]
    assert status[0]["schedule"] == "0 3 * * *" and status[0]["next_run"].endswith("03:00:00+00:00")
    assert status[0]["last_sync"] is None
    # nothing is due before 03:00: the worker has nothing to do
    assert json.loads(cli(env, "worker", "--once", "--json").stdout) == {
        "syncs": [],
        "processed": 0,
        "pending": 0,
    }
    # a source that never synced is due at once; a runs-only worker leaves it alone
    hourly = org / "hourly.yaml"
    hourly.write_text((org / "drive.yaml").read_text() + "schedule: every 1h\n")
    cli(env, "sources", "add", str(hourly))
    assert json.loads(cli(env, "worker", "--once", "--runs-only", "--json").stdout)["syncs"] == []
    assert (
        json.loads(cli(env, "sources", "status", "--json").stdout)["sources"][0]["last_sync"]
        is None
    )
    bad = org / "bad.yaml"
    bad.write_text((org / "drive.yaml").read_text() + "schedule: sometimes\n")
    proc = cli(env, "sources", "add", str(bad), "--json", check=False)
    assert proc.returncode == 1 and "bad schedule" in json.loads(proc.stdout)["error"]


@pytest.mark.model
def test_worker_syncs_due_sources_and_stops_on_sigterm(
    env: dict[str, str], org: Path, tmp_path: Path
) -> None:
    hourly = org / "hourly.yaml"
    hourly.write_text((org / "drive.yaml").read_text() + "schedule: every 1h\n")
    cli(env, "sources", "add", str(hourly))
    log = tmp_path / "worker.log"
    with (
        log.open("w") as sink,
        subprocess.Popen(
            [str(BIN), "worker"], env=env, stdout=sink, stderr=subprocess.STDOUT, text=True
        ) as proc,
    ):
        home = Path(env["CONTEXT_SERVER_HOME"])
        deadline = time.monotonic() + 180
        synced = False
        while time.monotonic() < deadline and not synced:
            time.sleep(1)
            assert proc.poll() is None, log.read_text()
            # the worker owns the index; read the store directly
            with sqlite3.connect(home / "store.sqlite3") as db:
                rows = db.execute("select status from sync_runs").fetchall()
            synced = rows == [("completed",)]
        assert synced, log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
    status = json.loads(cli(env, "sources", "status", "--json").stdout)["sources"][0]
    assert status["last_sync"]["status"] == "completed"
    assert status["next_run"] > status["last_sync"]["started_at"]
