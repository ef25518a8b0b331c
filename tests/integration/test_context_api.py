"""The context-routing API end to end: keys, agents, policy, packing, bundles, documents,
audit. A real store (SQLite and PostgreSQL), the embedded index, a filesystem source; the
embedder is the fake hashing one (named so), since ranking quality is not under test here."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from context_server.api.app import create_app
from context_server.runtime import Runtime
from context_server.settings import Settings
from context_server.store.models import ApiKey
from indexing.embed import FakeHashEmbedder
from tests.orgs import org_settings, seed, write_files

ADMIN_TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

FILES = {
    "finance/budget.md": "# Budget 2027\n\nMarketing gets 42,000 EUR in the 2027 budget.",
    "finance/payroll.md": "# Payroll\n\nPayroll is paid on the 25th of each month.",
    "handbook/leave.md": "# Leave\n\nEvery employee has 27 days of paid leave per year.",
    "handbook/office.md": "# Office\n\nThe office opens at nine; the snack budget is 50 EUR.",
    "eng/deploy.md": "# Deploys\n\nDeploys happen on Tuesdays after the budget review.",
}
RULES = [
    {"glob": "finance/payroll.md", "allow": ["group:finance"], "deny": ["user:bob"]},
    {"glob": "finance/**", "allow": ["group:finance"]},
    {"glob": "eng/**", "allow": ["group:engineering"]},
    {"glob": "**", "allow": ["group:everyone"]},
]
PRINCIPALS = {
    "groups": {
        "everyone": ["group:finance", "group:engineering", "user:zoe"],
        "finance": ["user:alice", "user:bob"],
        "engineering": ["user:carol"],
        "bots": [],
    }
}
AGENTS: dict[str, dict[str, Any]] = {
    "helpdesk": {
        "name": "helpdesk",
        "description": "Answers staff questions",
        "sources": ["drive"],
        "acting_as": "on_behalf_of",
        "serves": ["group:everyone"],
        "budget_tokens": 2000,
    },
    "finance-bot": {
        "name": "finance-bot",
        "sources": ["drive"],
        "acting_as": "intersection",
        "serves": ["group:everyone"],
        "principals": ["group:finance"],
    },
    "notice-board": {
        "name": "notice-board",
        "sources": ["drive"],
        "acting_as": "as_agent",
        "serves": ["user:carol"],
        "principals": ["group:everyone"],
    },
    "wiki-only": {
        "name": "wiki-only",
        "sources": ["wiki"],
        "serves": ["group:everyone"],
    },
}


@dataclass
class Org:
    client: TestClient
    runtime: Runtime
    share: Path
    settings: Settings

    def key(self, **body: str) -> str:
        r = self.client.post("/v1/keys", json=body, headers=ADMIN)
        assert r.status_code == 200, r.text
        key: str = r.json()["key"]
        return key

    def context(self, key: str, **body: Any) -> Any:
        return self.client.post("/v1/context", json=body, headers=bearer(key))

    def sync(self) -> None:
        (run,) = self.client.post("/v1/sync", json={}, headers=ADMIN).json()["runs"]
        assert run["status"] == "completed", run

    def write_agent(self, spec: dict[str, Any]) -> None:
        path = self.settings.agents_path / f"{spec['name']}.yaml"
        path.write_text(yaml.safe_dump(spec))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def titles(response: Any) -> set[str]:
    assert response.status_code == 200, response.text
    return {item["citation"]["title"] for item in response.json()["items"]}


@pytest.fixture
def org(tmp_path: Path, database_url: str) -> Iterator[Org]:
    share = write_files(tmp_path / "share", FILES)
    settings = org_settings(tmp_path, database_url)
    runtime = Runtime(settings, embedder=FakeHashEmbedder())
    with TestClient(create_app(settings, runtime=runtime, admin_token=ADMIN_TOKEN)) as client:
        o = Org(client, runtime, share, settings)
        for spec in AGENTS.values():
            o.write_agent(spec)
        seed(client, ADMIN, principals=PRINCIPALS, share=share, rules=RULES)
        yield o
    runtime.close()


# -- auth ------------------------------------------------------------------------------------


def test_every_route_but_health_needs_a_key(org: Org) -> None:
    c = org.client
    assert c.get("/healthz").status_code == 200
    body = {"agent": "helpdesk", "on_behalf_of": "user:alice", "query": "budget"}
    for method, path, json in [
        ("POST", "/v1/context", body),
        ("GET", "/v1/bundles/x", None),
        ("GET", "/v1/documents/x", None),
        ("GET", "/v1/sources", None),
        ("GET", "/v1/keys", None),
        ("GET", "/v1/audit", None),
    ]:
        r = c.request(method, path, json=json)
        assert r.status_code == 401, path
        assert "Bearer" in r.json()["detail"]
        r = c.request(method, path, json=json, headers=bearer("csk_nope_nope"))
        assert r.status_code == 401, path
        assert r.json()["detail"] == "unknown or revoked key"


def test_keys_are_shown_once_stored_hashed_and_revocable(org: Org) -> None:
    key = org.key(agent="helpdesk", label="ci")
    key_id = key.split("_")[1]
    listed = org.client.get("/v1/keys", headers=ADMIN).json()["keys"]
    assert [(k["id"], k["kind"], k["subject"], k["label"]) for k in listed] == [
        (key_id, "agent", "helpdesk", "ci")
    ]
    assert key not in str(listed)
    with org.runtime.sessions() as s:
        (row,) = s.scalars(select(ApiKey)).all()
        assert key.split("_", 2)[2] not in row.secret_hash
    body = {"agent": "helpdesk", "on_behalf_of": "user:alice", "query": "budget"}
    assert org.context(key, **body).status_code == 200
    assert org.client.delete(f"/v1/keys/{key_id}", headers=ADMIN).json()["revoked_at"]
    assert org.context(key, **body).status_code == 401
    # an agent key is not an admin key
    other = org.key(agent="helpdesk")
    r = org.client.get("/v1/keys", headers=bearer(other))
    assert r.status_code == 403 and "admin" in r.json()["detail"]


def test_keys_for_unknown_agents_or_malformed_users_are_refused(org: Org) -> None:
    r = org.client.post("/v1/keys", json={"agent": "ghost"}, headers=ADMIN)
    assert r.status_code == 404 and "ghost" in r.json()["detail"]
    r = org.client.post("/v1/keys", json={"user": "alice"}, headers=ADMIN)
    assert r.status_code == 422
    r = org.client.post("/v1/keys", json={"user": "user:a", "agent": "helpdesk"}, headers=ADMIN)
    assert r.status_code == 422


def test_an_agent_key_acts_only_as_its_agent_and_a_user_key_only_for_its_user(
    org: Org,
) -> None:
    agent_key = org.key(agent="helpdesk")
    r = org.context(agent_key, agent="finance-bot", on_behalf_of="user:alice", query="budget")
    assert r.status_code == 403
    assert "belongs to agent 'helpdesk'" in r.json()["detail"]
    user_key = org.key(user="user:alice")
    assert org.context(user_key, agent="helpdesk", on_behalf_of="user:alice", query="x").is_success
    r = org.context(user_key, agent="helpdesk", on_behalf_of="user:bob", query="budget")
    assert r.status_code == 403 and "user:alice" in r.json()["detail"]


# -- routing rules -----------------------------------------------------------------------


def test_context_holds_only_what_the_user_may_read(org: Org) -> None:
    key = org.key(agent="helpdesk")
    query = "budget payroll leave office deploys"
    assert titles(org.context(key, agent="helpdesk", on_behalf_of="user:alice", query=query)) == {
        "budget.md",
        "payroll.md",
        "leave.md",
        "office.md",
    }
    # bob is in finance but denied payroll
    assert titles(org.context(key, agent="helpdesk", on_behalf_of="user:bob", query=query)) == {
        "budget.md",
        "leave.md",
        "office.md",
    }
    assert titles(org.context(key, agent="helpdesk", on_behalf_of="user:carol", query=query)) == {
        "deploy.md",
        "leave.md",
        "office.md",
    }
    # a user we have never heard of is in no group, so not one the agent serves
    r = org.context(key, agent="helpdesk", on_behalf_of="user:stranger", query=query)
    assert r.status_code == 403


def test_a_user_outside_serves_is_refused(org: Org) -> None:
    key = org.key(agent="notice-board")
    r = org.context(key, agent="notice-board", on_behalf_of="user:alice", query="budget")
    assert r.status_code == 403
    assert "does not serve user:alice" in r.json()["detail"]


def test_acting_modes_intersection_and_as_agent(org: Org) -> None:
    query = "budget payroll leave office deploys"
    fin = org.key(agent="finance-bot")
    # alice and the agent's group:finance both read finance; carol's deploy notes are not
    # readable by the agent, and finance is not readable by carol: only the common ground.
    assert titles(
        org.context(fin, agent="finance-bot", on_behalf_of="user:alice", query=query)
    ) == {
        "budget.md",
        "payroll.md",
        "leave.md",
        "office.md",
    }
    assert titles(
        org.context(fin, agent="finance-bot", on_behalf_of="user:carol", query=query)
    ) == {
        "leave.md",
        "office.md",
    }
    board = org.key(agent="notice-board")
    # as_agent: the agent's own principals decide (group:everyone), not carol's
    assert titles(
        org.context(board, agent="notice-board", on_behalf_of="user:carol", query=query)
    ) == {"leave.md", "office.md"}


def test_sources_outside_the_agent_are_refused_and_filters_narrow(org: Org) -> None:
    key = org.key(agent="helpdesk")
    body = {"agent": "helpdesk", "on_behalf_of": "user:alice", "query": "budget"}
    r = org.context(key, **body, filters={"sources": ["hr"]})
    assert r.status_code == 403 and "source 'hr'" in r.json()["detail"]
    assert titles(org.context(key, **body, filters={"sources": ["drive"]}))
    wiki = org.key(agent="wiki-only")
    r = org.context(wiki, agent="wiki-only", on_behalf_of="user:alice", query="budget")
    assert r.status_code == 200 and r.json()["items"] == []


def test_policy_file_narrows_what_agent_files_allow(org: Org) -> None:
    key = org.key(agent="helpdesk")
    body = {"agent": "helpdesk", "on_behalf_of": "user:alice", "query": "budget"}
    policy = org.settings.policy_path
    policy.write_text("p, agent:helpdesk, group:engineering, act_for\n")
    r = org.context(key, **body)
    assert r.status_code == 403 and "policy does not allow" in r.json()["detail"]
    carol = {**body, "on_behalf_of": "user:carol"}
    r = org.context(key, **carol)
    assert r.status_code == 403 and "read none of its sources" in r.json()["detail"]
    policy.write_text(
        "p, agent:helpdesk, group:engineering, act_for\ng, agent:helpdesk, group:bots\n"
        "p, group:bots, source:drive, read\n"
    )
    os.utime(policy, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))  # a new stamp
    assert titles(org.context(key, **carol))
    policy.write_text("p, agent:helpdesk, group:engineering, fly\n")
    os.utime(policy, ns=(time.time_ns() + 2 * 10**9, time.time_ns() + 2 * 10**9))
    r = org.context(key, **carol)
    assert r.status_code == 422 and "unknown action 'fly'" in r.json()["detail"]


def test_agent_files_are_validated_and_replaced_without_restart(org: Org) -> None:
    key = org.key(agent="helpdesk")
    body = {"agent": "helpdesk", "on_behalf_of": "user:carol", "query": "budget"}
    first = org.context(key, **body).json()["agent_version"]
    org.write_agent({**AGENTS["helpdesk"], "serves": ["group:finance"]})
    r = org.context(key, **body)
    assert r.status_code == 403
    org.write_agent({**AGENTS["helpdesk"], "budget_tokens": 10})
    r = org.context(key, **body)
    assert r.status_code == 200 and r.json()["agent_version"] != first
    (org.settings.agents_path / "helpdesk.yaml").write_text("name: helpdesk\nsources: oops\n")
    r = org.context(key, **body)
    assert r.status_code == 422 and "helpdesk.yaml" in r.json()["detail"]
    listing = org.client.get("/v1/agents", headers=ADMIN).json()
    assert {a["name"] for a in listing["agents"]} == {"finance-bot", "notice-board", "wiki-only"}
    assert [Path(i["path"]).name for i in listing["invalid"]] == ["helpdesk.yaml"]


# -- packing -------------------------------------------------------------------------------


def test_items_are_packed_into_the_budget_with_citations(org: Org) -> None:
    key = org.key(agent="helpdesk")
    body = {"agent": "helpdesk", "on_behalf_of": "user:alice", "query": "budget"}
    full = org.context(key, **body).json()
    assert len(full["items"]) == 4
    assert full["used_tokens"] == sum(i["tokens"] for i in full["items"])
    scores = [i["score"] for i in full["items"]]
    assert scores == sorted(scores, reverse=True)
    citation = full["items"][0]["citation"]
    assert set(citation) == {
        "source",
        "document_id",
        "chunk_id",
        "title",
        "section",
        "url",
        "version",
        "updated_at",
    }
    assert citation["source"] == "drive" and citation["version"] == 1
    assert citation["url"].startswith("file://")
    smallest = min(i["tokens"] for i in full["items"])
    budget = smallest + 1
    tight = org.context(key, **body, budget_tokens=budget).json()
    assert 1 <= len(tight["items"]) < 4
    assert tight["used_tokens"] <= budget and tight["budget_tokens"] == budget
    none = org.context(key, **body, budget_tokens=1).json()
    assert none["items"] == [] and none["used_tokens"] == 0


def test_near_duplicates_are_served_once(org: Org) -> None:
    copy = org.share / "handbook" / "leave-copy.md"
    copy.write_text(FILES["handbook/leave.md"] + " ")
    org.sync()
    key = org.key(agent="helpdesk")
    r = org.context(key, agent="helpdesk", on_behalf_of="user:zoe", query="paid leave days")
    bundle = r.json()
    leave = [i for i in bundle["items"] if "27 days" in i["text"]]
    assert len(leave) == 1
    assert bundle["near_duplicates_dropped"] == 1


def test_max_age_keeps_stale_documents_out(org: Org) -> None:
    stale = org.share / "handbook" / "old-office.md"
    stale.write_text("# Old office\n\nThe old office opened at eight.")
    old = time.time() - 400 * 86400
    os.utime(stale, (old, old))
    org.sync()
    key = org.key(agent="helpdesk")
    body = {"agent": "helpdesk", "on_behalf_of": "user:zoe", "query": "office"}
    assert titles(org.context(key, **body)) == {"leave.md", "office.md", "old-office.md"}
    org.write_agent({**AGENTS["helpdesk"], "max_age": "365d"})
    assert titles(org.context(key, **body)) == {"leave.md", "office.md"}
    recent = {"updated_after": "2999-01-01T00:00:00Z"}
    assert titles(org.context(key, **body, filters=recent)) == set()


# -- bundles and provenance --------------------------------------------------------------


def test_bundle_is_stored_exactly_and_checked_for_staleness(org: Org) -> None:
    key = org.key(agent="helpdesk")
    served = org.context(
        key, agent="helpdesk", on_behalf_of="user:alice", query="budget payroll leave office"
    ).json()
    bundle_id = served["bundle_id"]
    stored = org.client.get(f"/v1/bundles/{bundle_id}", headers=bearer(key)).json()
    assert [i["text"] for i in stored["items"]] == [i["text"] for i in served["items"]]
    assert stored["principals"]["user"] == ["group:everyone", "group:finance", "user:alice"]
    assert stored["agent_version"] == served["agent_version"]
    assert stored["items"][0]["citation"]["acl"]["groups"]
    check = org.client.get(f"/v1/bundles/{bundle_id}/check", headers=bearer(key)).json()
    assert not check["stale"] and check["counts"]["unchanged"] == 4

    (org.share / "handbook" / "leave.md").write_text("# Leave\n\nNow 30 days of paid leave.")
    (org.share / "handbook" / "office.md").unlink()
    payroll = org.share / "finance" / "payroll.md"
    org.sync()
    # alice leaves finance (staying an employee): budget and payroll are no longer hers
    groups = {
        **PRINCIPALS["groups"],
        "finance": ["user:bob"],
        "everyone": [*PRINCIPALS["groups"]["everyone"], "user:alice"],
    }
    org.client.put("/v1/principals", json={"groups": groups}, headers=ADMIN)
    check = org.client.get(f"/v1/bundles/{bundle_id}/check", headers=ADMIN).json()
    status = {i["title"]: i["status"] for i in check["items"]}
    assert status == {
        "leave.md": "changed",
        "office.md": "deleted",
        "budget.md": "access_revoked",
        "payroll.md": "access_revoked",
    }
    assert check["stale"] and payroll.exists()
    changed = next(i for i in check["items"] if i["title"] == "leave.md")
    assert (changed["served_version"], changed["current_version"]) == (1, 2)


def test_bundles_are_visible_only_to_their_agent_user_or_admin(org: Org) -> None:
    key = org.key(agent="helpdesk")
    bundle_id = org.context(key, agent="helpdesk", on_behalf_of="user:alice", query="x").json()[
        "bundle_id"
    ]
    assert org.client.get(f"/v1/bundles/{bundle_id}", headers=ADMIN).status_code == 200
    alice = org.key(user="user:alice")
    assert org.client.get(f"/v1/bundles/{bundle_id}", headers=bearer(alice)).status_code == 200
    for other in (org.key(agent="finance-bot"), org.key(user="user:bob")):
        r = org.client.get(f"/v1/bundles/{bundle_id}/check", headers=bearer(other))
        assert r.status_code == 404


def test_documents_are_scoped_like_context(org: Org) -> None:
    key = org.key(agent="helpdesk")
    items = org.context(key, agent="helpdesk", on_behalf_of="user:alice", query="payroll").json()
    payroll = next(i for i in items["items"] if i["citation"]["title"] == "payroll.md")
    doc_id = payroll["citation"]["document_id"]
    r = org.client.get(
        f"/v1/documents/{doc_id}", params={"on_behalf_of": "user:alice"}, headers=bearer(key)
    )
    assert r.status_code == 200
    assert r.json()["chunks"][0]["text"].startswith("# Payroll") or "25th" in str(r.json())
    # bob is denied payroll: the same answer as a document that does not exist
    r = org.client.get(
        f"/v1/documents/{doc_id}", params={"on_behalf_of": "user:bob"}, headers=bearer(key)
    )
    assert r.status_code == 404
    r = org.client.get(
        "/v1/documents/nope", params={"on_behalf_of": "user:bob"}, headers=bearer(key)
    )
    assert r.status_code == 404
    wiki = org.key(agent="wiki-only")
    r = org.client.get(
        f"/v1/documents/{doc_id}", params={"on_behalf_of": "user:alice"}, headers=bearer(wiki)
    )
    assert r.status_code == 404
    bob = org.key(user="user:bob")
    assert org.client.get(f"/v1/documents/{doc_id}", headers=bearer(bob)).status_code == 404
    alice = org.key(user="user:alice")
    assert org.client.get(f"/v1/documents/{doc_id}", headers=bearer(alice)).status_code == 200


# -- audit ---------------------------------------------------------------------------------


def test_every_context_request_is_audited_and_the_log_is_append_only(org: Org) -> None:
    key = org.key(agent="helpdesk")
    ok = org.context(key, agent="helpdesk", on_behalf_of="user:alice", query="budget").json()
    org.context(key, agent="finance-bot", on_behalf_of="user:alice", query="payroll")
    org.context(key, agent="ghost", on_behalf_of="user:alice", query="payroll")
    r = org.client.get("/v1/audit", params={"since": "1h"}, headers=ADMIN)
    assert r.headers["content-type"].startswith("application/x-ndjson")
    events = [yaml.safe_load(line) for line in r.text.splitlines()]
    context = [e for e in events if e["action"] == "context"]
    assert [(e["outcome"], e["agent"]) for e in context] == [
        ("allowed", "helpdesk"),
        ("denied", "finance-bot"),
        ("invalid", "ghost"),
    ]
    allowed = context[0]
    assert allowed["bundle_id"] == ok["bundle_id"]
    assert allowed["caller"] == "agent:helpdesk" and allowed["key_id"] == key.split("_")[1]
    assert allowed["on_behalf_of"] == "user:alice" and allowed["query"] == "budget"
    assert sorted(allowed["document_ids"]) == sorted(
        {i["citation"]["document_id"] for i in ok["items"]}
    )
    assert "belongs to agent" in context[1]["detail"]
    future = org.client.get("/v1/audit", params={"since": "2999-01-01"}, headers=ADMIN)
    assert future.text == ""
    r = org.client.get("/v1/audit", params={"since": "yesterday"}, headers=ADMIN)
    assert r.status_code == 422
    with org.runtime.engine.connect() as conn, pytest.raises(Exception, match="append-only"):
        conn.execute(text("UPDATE audit_events SET query = 'forged'"))
    with org.runtime.engine.connect() as conn, pytest.raises(Exception, match="append-only"):
        conn.execute(text("DELETE FROM audit_events"))


def test_the_policy_file_can_make_a_user_an_administrator(org: Org) -> None:
    alice, bob = org.key(user="user:alice"), org.key(user="user:bob")
    assert org.client.get("/v1/keys", headers=bearer(alice)).status_code == 403
    org.settings.policy_path.write_text(
        "p, group:admins, system, administer\ng, user:alice, group:admins\n"
        "p, agent:helpdesk, group:everyone, act_for\np, agent:helpdesk, source:drive, read\n"
    )
    assert org.client.get("/v1/keys", headers=bearer(alice)).status_code == 200
    r = org.client.get("/v1/keys", headers=bearer(bob))
    assert r.status_code == 403 and "administer" in r.json()["detail"]
    agent = org.key(agent="helpdesk")
    assert org.client.get("/v1/audit", headers=bearer(agent)).status_code == 403
