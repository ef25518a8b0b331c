"""Withholding on every read path: a viewer never receives a field derived from a document it
may not read, whichever route, page, CLI command or MCP tool it asks through.

The org: a handbook page everyone reads and a finance note only finance reads. Two agents
make drafts from the finance note for users who may not read it:

- ``insider`` reads as itself (``as_agent``, with finance among its own principals) for
  anyone;
- ``answerer`` reads for its user, alice (finance), who then leaves finance.

Each read path is asked as those users, and the answer must not contain anything derived
from the finance note: its title, external id, document id, URL, text, or the draft made
from it. A real store (SQLite and PostgreSQL), the embedded index, the fake hashing embedder
(named so), the official MCP client over a real port.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from context_server.api.app import create_app
from context_server.runtime import Runtime
from context_server.settings import Settings
from context_server.worker import Worker
from indexing.embed import FakeHashEmbedder
from indexing.pipeline import document_id
from tests.orgs import org_settings, seed, write_files

TOKEN = "withholding-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
SECRET_TEXT = "SAPPHIRE-ALLOWANCE"
SECRET_PATH = "finance/contractor-allowance.md"
FILES = {
    "handbook/leave.md": "# Leave\n\nEvery employee has 27 days of paid leave per year.",
    SECRET_PATH: f"# Contractors\n\nThe {SECRET_TEXT} for contractors is 12 leave days.",
}
RULES = [
    {"glob": "finance/**", "allow": ["group:finance"]},
    {"glob": "**", "allow": ["group:everyone"]},
]
PRINCIPALS = {
    "groups": {
        "everyone": ["group:finance", "group:leads", "user:zoe", "user:alice"],
        "finance": ["user:alice"],
        "leads": ["user:lena"],
    }
}
WITHOUT_ALICE = {
    "groups": {
        "everyone": ["group:finance", "group:leads", "user:zoe", "user:alice"],
        "finance": [],
        "leads": ["user:lena"],
    }
}


def agent(name: str, acting_as: str, outbox: Path, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "description": "Drafts answers about leave",
        "sources": ["drive"],
        "acting_as": acting_as,
        "serves": ["group:everyone"],
        "owner": "user:lena",
        "context": {"query": "{{ input.question }}"},
        "harness": {"kind": "extractive"},
        "output": {"kind": "markdown"},
        "review": {"approvers": ["group:leads", "group:everyone"], "required": 1},
        "ship": {"kind": "file", "dir": str(outbox)},
    }
    spec.update(extra)
    return spec


@dataclass
class Org:
    client: TestClient
    runtime: Runtime
    settings: Settings
    secret_id: str
    secret_url: str
    share: Path

    def key(self, **body: str) -> dict[str, str]:
        r = self.client.post("/v1/keys", json=body, headers=ADMIN)
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['key']}"}

    def run(self, agent: str, user: str, **input: Any) -> str:
        body = {"on_behalf_of": user, "input": {"question": "contractor leave days", **input}}
        r = self.client.post(f"/v1/agents/{agent}/runs", json=body, headers=ADMIN)
        assert r.status_code == 200, r.text
        run_id: str = r.json()["run_id"]
        Worker(self.runtime, poll=0.05).until_idle()
        return run_id

    def admin_view(self, run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        run = self.client.get(f"/v1/runs/{run_id}", headers=ADMIN).json()
        listing = self.client.get("/v1/reviews", headers=ADMIN).json()["reviews"]
        (review,) = [r for r in listing if r["run_id"] == run_id]
        return run, review

    def markers(self) -> list[str]:
        """Strings that can only come from the finance note."""
        return [SECRET_TEXT, SECRET_PATH, "contractor-allowance", self.secret_id, self.secret_url]


@pytest.fixture
def org(tmp_path: Path, database_url: str) -> Iterator[Org]:
    share = write_files(tmp_path / "share", FILES)
    settings = org_settings(tmp_path, database_url)
    outbox = tmp_path / "outbox"
    for spec in (
        agent("insider", "as_agent", outbox, principals=["group:finance"]),
        agent("answerer", "on_behalf_of", outbox),
    ):
        (settings.agents_path / f"{spec['name']}.yaml").write_text(yaml.safe_dump(spec))
    runtime = Runtime(settings, embedder=FakeHashEmbedder())
    with TestClient(create_app(settings, runtime=runtime, admin_token=TOKEN)) as client:
        seed(client, ADMIN, principals=PRINCIPALS, share=share, rules=RULES)
        secret_id = document_id("drive", SECRET_PATH)
        url = (share / SECRET_PATH).resolve().as_uri()
        yield Org(client, runtime, settings, secret_id, url, share)
    runtime.close()


def leaks(org: Org, answer: object) -> list[str]:
    text = answer if isinstance(answer, str) else json.dumps(answer)
    return [m for m in org.markers() if m in text]


def rest_reads(org: Org, headers: dict[str, str], run_id: str, review_id: str) -> dict[str, Any]:
    """Every REST read of a run, its bundle, its review and their listings."""
    run = org.client.get(f"/v1/runs/{run_id}", headers=ADMIN).json()
    bundle_id = run["bundle_id"]
    out: dict[str, Any] = {}
    for path in (
        "/v1/runs",
        f"/v1/runs/{run_id}",
        f"/v1/bundles/{bundle_id}",
        f"/v1/bundles/{bundle_id}/check",
        "/v1/reviews",
        f"/v1/reviews/{review_id}",
    ):
        r = org.client.get(path, headers=headers)
        out[path] = (
            r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
        )
    return out


def test_the_admin_sees_the_finance_note_in_both_drafts(org: Org) -> None:
    """The scenario is real: the drafts and bundles do carry the finance note."""
    for agent_name, user in (("insider", "user:zoe"), ("answerer", "user:alice")):
        run_id = org.run(agent_name, user)
        run, _review = org.admin_view(run_id)
        assert SECRET_TEXT in json.dumps(run["harness_output"]), agent_name
        bundle = org.client.get(f"/v1/bundles/{run['bundle_id']}", headers=ADMIN).json()
        assert org.secret_id in {i["citation"]["document_id"] for i in bundle["items"]}


def test_rest_never_shows_a_user_what_an_as_agent_run_read_for_them(org: Org) -> None:
    run_id = org.run("insider", "user:zoe")
    _run, review = org.admin_view(run_id)
    zoe = org.key(user="user:zoe")
    answers = rest_reads(org, zoe, run_id, review["id"])
    found = {path: leaks(org, answer) for path, answer in answers.items()}
    assert not any(found.values()), found
    # what she may see is still there: the run, its state, the review waiting
    shown = answers[f"/v1/runs/{run_id}"]
    assert shown["run_id"] == run_id and shown["state"] == "succeeded"
    assert shown["harness_output"] is None and shown["withheld"]
    bundle = answers[f"/v1/bundles/{shown['bundle_id']}"]
    assert bundle["withheld_items"] >= 1 and bundle["query"] is None
    checked = answers[f"/v1/bundles/{shown['bundle_id']}/check"]["items"]
    redacted = [i for i in checked if i["redacted"]]
    derived = ("document_id", "chunk_id", "title", "served_version", "current_version")
    assert redacted and all(i.get(k) is None for i in redacted for k in derived), redacted


def test_rest_withholds_after_the_reader_loses_access(org: Org) -> None:
    run_id = org.run("answerer", "user:alice")
    _run, review = org.admin_view(run_id)
    alice = org.key(user="user:alice")
    before = rest_reads(org, alice, run_id, review["id"])
    assert any(leaks(org, a) for a in before.values())  # she could read it: shown
    assert org.client.put("/v1/principals", json=WITHOUT_ALICE, headers=ADMIN).status_code == 200
    after = rest_reads(org, alice, run_id, review["id"])
    found = {path: leaks(org, answer) for path, answer in after.items()}
    assert not any(found.values()), found


def test_an_agent_key_sees_its_run_only_as_far_as_its_agent_may_read_now(org: Org) -> None:
    run_id = org.run("answerer", "user:alice")
    _run, review = org.admin_view(run_id)
    answerer = org.key(agent="answerer")
    assert any(leaks(org, a) for a in rest_reads(org, answerer, run_id, review["id"]).values())
    assert org.client.put("/v1/principals", json=WITHOUT_ALICE, headers=ADMIN).status_code == 200
    after = rest_reads(org, answerer, run_id, review["id"])
    found = {path: leaks(org, answer) for path, answer in after.items()}
    assert not any(found.values()), found


def test_web_pages_withhold_the_same(org: Org) -> None:
    run_id = org.run("insider", "user:zoe")
    _run, review = org.admin_view(run_id)
    key = org.client.post("/v1/keys", json={"user": "user:zoe"}, headers=ADMIN).json()["key"]
    page = org.client.get("/ui/login").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf is not None
    r = org.client.post("/ui/login", data={"key": key, "csrf": csrf.group(1)})
    assert r.status_code in (200, 303), r.text
    for path in ("/ui/reviews", f"/ui/reviews/{review['id']}"):
        r = org.client.get(path)
        assert r.status_code == 200, path
        assert not leaks(org, r.text), (path, leaks(org, r.text))


def test_cli_reads_as_a_user_withhold_the_same(org: Org, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from context_server.cli import app

    run_id = org.run("insider", "user:zoe")
    run, review = org.admin_view(run_id)
    monkeypatch.setenv("CONTEXT_SERVER_HOME", str(org.settings.home))
    if org.settings.database_url:
        monkeypatch.setenv("CONTEXT_SERVER_DATABASE_URL", org.settings.database_url)
    for argv in (
        ["runs", "show", run_id, "--as", "user:zoe", "--json"],
        ["bundles", "show", run["bundle_id"], "--as", "user:zoe", "--json"],
        ["review", "show", review["id"], "--as", "user:zoe", "--json"],
        ["review", "list", "--as", "user:zoe", "--json"],
        ["runs", "list", "--as", "user:zoe", "--json"],
    ):
        done = CliRunner().invoke(app, argv)
        printed = done.output
        assert done.exit_code == 0, (argv, printed)
        assert printed.strip() and not leaks(org, printed), (argv, leaks(org, printed))


def test_a_manual_run_may_not_target_a_document_its_reader_may_not_read(org: Org) -> None:
    zoe = org.key(user="user:zoe")
    missing = document_id("drive", "finance/no-such-file.md")
    answers = []
    for target in (org.secret_id, missing):
        body = {"input": {"question": "q", "document_id": target}}
        r = org.client.post("/v1/agents/answerer/runs", json=body, headers=zoe)
        answers.append((r.status_code, r.json()["detail"].replace(target, "ID")))
    # refused, and exactly like a document that does not exist: existence is not disclosed
    assert answers[0] == answers[1] and answers[0][0] == 404, answers
    # a readable target is accepted
    readable = document_id("drive", "handbook/leave.md")
    body = {"input": {"question": "q", "document_id": readable}}
    assert org.client.post("/v1/agents/answerer/runs", json=body, headers=zoe).status_code == 200


def test_mcp_get_review_shows_an_agent_only_what_it_may_read_now(org: Org) -> None:
    """Through the official MCP client against a real port."""
    import anyio
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    from tests.integration.test_mcp import serving

    run_id = org.run("answerer", "user:alice")
    _run, review = org.admin_view(run_id)
    key = org.client.post("/v1/keys", json={"agent": "answerer"}, headers=ADMIN).json()["key"]

    def get_review(url: str) -> Any:
        async def go() -> Any:
            headers = {"Authorization": f"Bearer {key}"}
            async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
                transport = streamable_http_client(f"{url}/mcp", http_client=http)
                async with Client(transport) as client:
                    result = await client.call_tool("get_review", {"review_id": review["id"]})
                    assert not result.is_error, result
                    return result.structured_content

        return anyio.run(go)

    with serving(org.settings, org.runtime) as url:
        before = get_review(url)
        assert SECRET_TEXT in json.dumps(before)  # its agent may read it for alice: shown
        assert (
            org.client.put("/v1/principals", json=WITHOUT_ALICE, headers=ADMIN).status_code == 200
        )
        after = get_review(url)
    assert after["state"] == "pending" and after["content"] is None
    assert not leaks(org, after), leaks(org, after)


def test_a_queued_run_whose_target_became_unreadable_fails_at_once(org: Org) -> None:
    zoe = org.key(user="user:zoe")
    readable = document_id("drive", "handbook/leave.md")
    body = {"input": {"question": "q", "document_id": readable}}
    r = org.client.post("/v1/agents/answerer/runs", json=body, headers=zoe)
    assert r.status_code == 200, r.text
    run_id = r.json()["run_id"]
    # the handbook becomes leads-only before a worker takes the run
    rules = [{"glob": "handbook/**", "allow": ["group:leads"]}, *RULES]
    source = {
        "name": "drive",
        "kind": "filesystem",
        "config": {"root": str(org.share), "acl_rules": rules},
    }
    assert org.client.post("/v1/sources", json=source, headers=ADMIN).status_code == 200
    assert org.client.post("/v1/sync", json={"source": "drive"}, headers=ADMIN).status_code == 200
    Worker(org.runtime, poll=0.05).until_idle()
    run = org.client.get(f"/v1/runs/{run_id}", headers=ADMIN).json()
    assert run["state"] == "failed" and run["attempts"] == 1, run
    assert "readable" in run["error"]
    listing = org.client.get("/v1/reviews", headers=ADMIN).json()["reviews"]
    assert not [r for r in listing if r["run_id"] == run_id]


def test_a_source_s_errors_and_hosts_are_for_administrators(org: Org) -> None:
    """``GET /v1/sources`` answers any key; a failed sync's message (it may quote paths or a
    vendor's answer) and the process that ran it are the admin's."""
    from sqlalchemy import select

    from context_server.store.models import Source, SyncRun

    secret = f"ConnectorError: listing {SECRET_PATH} failed"
    with org.runtime.sessions() as session:
        source = session.scalars(select(Source).where(Source.name == "drive")).one()
        run = session.scalars(
            select(SyncRun).where(SyncRun.source_id == source.id).order_by(SyncRun.id.desc())
        ).first()
        assert run is not None
        run.status, run.error = "failed", secret
        session.commit()
    admin = org.client.get("/v1/sources", headers=ADMIN).json()["sources"][0]["last_sync"]
    assert admin["error"] == secret and admin["owner"]
    zoe = org.key(user="user:zoe")
    (listed,) = org.client.get("/v1/sources", headers=zoe).json()["sources"]
    assert listed["last_sync"]["status"] == "failed" and listed["documents"] == 2
    assert listed["last_sync"]["error"] is None and listed["last_sync"]["owner"] is None
    assert not leaks(org, listed)
    # a user the policy file lets administer is an administrator here too
    org.settings.policy_path.write_text(
        "p, user:zoe, system, administer\n"
        "p, agent:answerer, group:everyone, act_for\np, agent:answerer, source:drive, read\n"
    )
    (listed,) = org.client.get("/v1/sources", headers=zoe).json()["sources"]
    assert listed["last_sync"]["error"] == secret
