"""The whole loop through the command line, on the demo organization, with the real model:
a new customer ticket arrives in a ticket system (a fake GitHub, served over real HTTP),
an event-triggered agent drafts an answer from the handbook (extractive harness), the review
shows its citations with provenance, a non-approver is refused, and approval posts the
answer as a comment on the ticket exactly once."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pytest_httpserver import HTTPServer

from tests.conftest import DEMO
from tests.fakes.github import TOKEN, FakeGitHub, serve_github
from tests.integration.test_cli import BIN

pytestmark = pytest.mark.model

TICKET_ANSWERER = {
    "name": "ticket-answerer",
    "description": "Drafts answers to new customer tickets",
    "sources": ["drive"],
    "acting_as": "on_behalf_of",
    "serves": ["group:everyone"],
    "principals": [],
    "budget_tokens": 600,
    "max_age": "3650d",
    "owner": "user:carol",
    "trigger": {
        "kind": "event",
        "source": "support",
        "on": ["created"],
        "filter": {"labels": ["customer"]},
    },
    "context": {"query": "{{ document.title }}"},
    "harness": {"kind": "extractive"},
    "output": {"kind": "comment"},
    "review": {"approvers": ["group:leadership"], "required": 1, "expires_after": "7d"},
    "ship": {"kind": "comment"},
}


def test_a_new_ticket_is_answered_reviewed_and_commented_on_once(
    tmp_path: Path, httpserver: HTTPServer
) -> None:
    fake, base = serve_github(httpserver, FakeGitHub())
    fake.repo("northwind/support")
    fake.add_issue(
        "northwind/support",
        7,
        "How many paid vacation days do full-time employees get?",
        "A customer's HR lead asks how our vacation policy works.",
        labels=("customer",),
    )
    fake.add_issue(
        "northwind/support", 8, "Flaky CI on main", "Internal chore.", labels=("internal",)
    )
    env = dict(os.environ)
    env.update(CONTEXT_SERVER_HOME=str(tmp_path / "home"), GH_TOKEN_E2E=TOKEN)
    for name in ("CONTEXT_SERVER_DATABASE_URL", "CONTEXT_SERVER_QDRANT_URL"):
        env.pop(name, None)

    def cli(*args: str, ok: bool = True) -> dict[str, Any]:
        proc = subprocess.run(
            [str(BIN), *args, "--json"], env=env, capture_output=True, text=True, timeout=600
        )
        if ok:
            assert proc.returncode == 0, proc.stderr + proc.stdout
        else:
            assert proc.returncode == 1, proc.stderr + proc.stdout
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    cli("demo", "--dir", str(DEMO), "--no-serve")
    agents = tmp_path / "home" / "agents"
    (agents / "ticket-answerer.yaml").write_text(yaml.safe_dump(TICKET_ANSWERER, sort_keys=False))
    assert "ticket-answerer" in {a["name"] for a in cli("agents", "list")["agents"]}
    (tmp_path / "support.yaml").write_text(
        "name: support\nkind: github\nconfig:\n"
        f"  base_url: {base}\n"
        "  repositories: [northwind/support]\n"
        "  token: {env: GH_TOKEN_E2E}\n"
    )
    cli("sources", "add", str(tmp_path / "support.yaml"))
    synced = cli("sync", "support")
    assert synced["upserted"] == 2 and synced["runs_queued"] == 1  # the internal one: filtered

    assert cli("worker", "--until-idle")["processed"] == 1
    (review,) = cli("review", "list", "--state", "pending")["reviews"]
    assert review["agent"] == "ticket-answerer" and review["run_id"]
    run = cli("runs", "show", review["run_id"])
    assert run["trigger"]["document"]["external_id"] == "northwind/support/issues/7"
    assert run["query"] == "How many paid vacation days do full-time employees get?"

    shown = cli("review", "show", review["id"])
    cited = shown["evidence"]["items"]
    holidays = [i for i in cited if i["title"] == "holidays.txt"]
    assert holidays, [i["title"] for i in cited]
    assert holidays[0]["source"] == "drive" and holidays[0]["version"] == 1
    assert holidays[0]["status"] == "unchanged" and holidays[0]["retrieved_at"]
    assert "26 paid vacation days" in shown["content"]
    assert shown["evidence"]["stale"] is False

    # bob (finance, not leadership) may not approve: clear message, non-zero exit
    refused = cli("review", "approve", review["id"], "--as", "user:bob", ok=False)
    assert "may not review" in refused["error"]
    assert fake.calls("/comments", method="POST") == []

    # dan leads and is an engineer: he may read all the draft was made from (for carol)
    approved = cli("review", "approve", review["id"], "--as", "user:dan", "--comment", "ok")
    assert approved["state"] == "shipped"
    assert approved["ship_result"]["external_id"] == "northwind/support/issues/7"
    comments = fake.repos["northwind/support"].comments[7]
    assert len(comments) == 1
    assert "26 paid vacation days" in comments[0]["body"]
    assert f"context-server-review-{review['id']}" in comments[0]["body"]

    # nothing ships twice: a second approval is refused, the worker finds nothing to ship
    cli("review", "approve", review["id"], "--as", "user:erin", ok=False)
    assert cli("worker", "--until-idle")["processed"] == 0
    assert len(fake.repos["northwind/support"].comments[7]) == 1
    # the comment changed the ticket: an update, which this agent does not listen to
    assert cli("sync", "support")["runs_queued"] == 0
    audit = subprocess.run(
        [str(BIN), "audit", "export"], env=env, capture_output=True, text=True, check=True
    ).stdout
    actions = [json.loads(line)["action"] for line in audit.splitlines()]
    assert "review_approve" in actions and "review_ship" in actions
