"""Agent runs and the review queue through the API: runs, the worker, reviews, approvals,
evidence, shipping exactly once. A real store (SQLite and PostgreSQL), the embedded index,
a filesystem source; the embedder is the fake hashing one (named so)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from pytest_httpserver import HTTPServer
from sqlalchemy import select
from werkzeug import Request, Response

from context_server.api.app import create_app
from context_server.review import SHIP_LEASE, ReviewDesk
from context_server.runs import RunQueue
from context_server.runtime import Runtime
from context_server.settings import Settings
from context_server.store.models import AgentRun, AuditEvent
from context_server.viewer import Viewer, Views
from context_server.worker import Worker
from indexing.embed import FakeHashEmbedder
from tests.fakes.openai_server import FakeOpenAI
from tests.orgs import org_settings, seed, write_files

TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}

FILES = {
    "handbook/leave.md": "# Leave\n\nEvery employee has 27 days of paid leave per year. "
    "Leave requests go to your lead.",
    "handbook/office.md": "# Office\n\nThe office opens at nine. Visitors sign in at reception.",
    "finance/budget.md": "# Budget\n\nThe leave budget for contractors is 12 days per year.",
}
RULES = [
    {"glob": "finance/**", "allow": ["group:finance"]},
    {"glob": "**", "allow": ["group:everyone"]},
]
PRINCIPALS = {
    "groups": {
        "everyone": ["group:finance", "group:leads", "user:zoe"],
        "finance": ["user:alice"],
        "leads": ["user:lena", "user:leo"],
    }
}


def answerer(outbox: Path, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "answerer",
        "description": "Drafts answers to staff questions",
        "sources": ["drive"],
        "acting_as": "on_behalf_of",
        "serves": ["group:everyone"],
        "owner": "user:lena",
        "context": {"query": "{{ input.question }}"},
        "harness": {"kind": "extractive"},
        "output": {"kind": "markdown"},
        "review": {"approvers": ["group:leads"], "required": 1, "expires_after": "7d"},
        "ship": {"kind": "file", "dir": str(outbox)},
    }
    spec.update(extra)
    return spec


@dataclass
class Org:
    client: TestClient
    runtime: Runtime
    settings: Settings
    share: Path
    outbox: Path

    def write_agent(self, spec: dict[str, Any]) -> None:
        path = self.settings.agents_path / f"{spec['name']}.yaml"
        path.write_text(yaml.safe_dump(spec))

    def key(self, **body: str) -> dict[str, str]:
        r = self.client.post("/v1/keys", json=body, headers=ADMIN)
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['key']}"}

    def run(self, question: str, user: str = "user:zoe", agent: str = "answerer") -> str:
        r = self.client.post(
            f"/v1/agents/{agent}/runs",
            json={"on_behalf_of": user, "input": {"question": question}},
            headers=ADMIN,
        )
        assert r.status_code == 200, r.text
        run_id: str = r.json()["run_id"]
        return run_id

    def work(self, **kwargs: Any) -> Worker:
        worker = Worker(self.runtime, poll=0.05, **kwargs)
        worker.until_idle()
        return worker

    def review_of(self, run_id: str) -> dict[str, Any]:
        listing = self.client.get("/v1/reviews", headers=ADMIN).json()["reviews"]
        (review,) = [r for r in listing if r["run_id"] == run_id]
        shown: dict[str, Any] = self.client.get(f"/v1/reviews/{review['id']}", headers=ADMIN).json()
        return shown

    def decide(self, review_id: str, action: str, **body: Any) -> Any:
        headers = body.pop("headers", ADMIN)
        return self.client.post(f"/v1/reviews/{review_id}/{action}", json=body, headers=headers)

    def sync(self) -> dict[str, Any]:
        (run,) = self.client.post("/v1/sync", json={}, headers=ADMIN).json()["runs"]
        assert run["status"] == "completed", run
        result: dict[str, Any] = run
        return result


@pytest.fixture
def org(tmp_path: Path, database_url: str) -> Iterator[Org]:
    share = write_files(tmp_path / "share", FILES)
    settings = org_settings(tmp_path, database_url)
    runtime = Runtime(settings, embedder=FakeHashEmbedder())
    with TestClient(create_app(settings, runtime=runtime, admin_token=TOKEN)) as client:
        o = Org(client, runtime, settings, share, tmp_path / "outbox")
        o.write_agent(answerer(o.outbox))
        seed(client, ADMIN, principals=PRINCIPALS, share=share, rules=RULES)
        yield o
    runtime.close()


def shipped_files(org: Org) -> list[Path]:
    return sorted(org.outbox.glob("*.md")) if org.outbox.exists() else []


# -- the loop ---------------------------------------------------------------------------------


def test_a_manual_run_becomes_a_review_and_ships_once_after_approval(org: Org) -> None:
    run_id = org.run("How many days of paid leave do employees get?")
    assert org.client.get(f"/v1/runs/{run_id}", headers=ADMIN).json()["state"] == "queued"
    org.work()
    run = org.client.get(f"/v1/runs/{run_id}", headers=ADMIN).json()
    assert run["state"] == "succeeded" and run["attempts"] == 1
    assert run["bundle_id"] and run["harness_output"]["content"]
    assert run["harness_input"]["context"]["bundle_id"] == run["bundle_id"]

    review = org.review_of(run_id)
    assert review["state"] == "pending" and review["bundle_id"] == run["bundle_id"]
    assert "27 days of paid leave" in review["content"] and "[1]" in review["content"]
    evidence = review["evidence"]
    assert evidence["stale"] is False
    cited = {i["title"] for i in evidence["items"]}
    assert "leave.md" in cited
    for item in evidence["items"]:
        assert item["status"] == "unchanged" and item["version"] == 1 and item["retrieved_at"]
    assert not shipped_files(org)  # nothing ships before approval

    r = org.decide(review["id"], "approve", **{"as": "user:lena", "comment": "good"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "shipped"
    (path,) = shipped_files(org)
    assert path.read_text() == review["content"]
    assert r.json()["ship_result"]["path"] == str(path)
    # Approving again, or shipping again, ships nothing more.
    assert org.decide(review["id"], "approve", **{"as": "user:leo"}).status_code == 409
    assert ReviewDesk(org.runtime).ship_pending() == []
    assert len(shipped_files(org)) == 1
    actions = [e["action"] for e in org.review_of(run_id)["events"]]
    assert actions == ["submit", "approve", "ship"]


def test_only_approvers_may_decide_and_refusals_are_audited(org: Org) -> None:
    run_id = org.run("leave days")
    org.work()
    review = org.review_of(run_id)
    r = org.decide(review["id"], "approve", **{"as": "user:zoe"})
    assert r.status_code == 403 and "approvers: group:leads" in r.json()["detail"]
    r = org.decide(review["id"], "approve")
    assert r.status_code == 422 and '"as"' in r.json()["detail"]
    # an agent key never decides; a user key only as its user
    agent = org.key(agent="answerer")
    assert org.decide(review["id"], "approve", headers=agent).status_code == 403
    zoe = org.key(user="user:zoe")
    r = org.decide(review["id"], "approve", headers=zoe, **{"as": "user:lena"})
    assert r.status_code == 403
    assert org.decide(review["id"], "reject", headers=zoe).status_code == 403
    assert org.review_of(run_id)["state"] == "pending" and not shipped_files(org)
    lena = org.key(user="user:lena")
    r = org.decide(review["id"], "reject", headers=lena, comment="off topic")
    assert r.status_code == 200 and r.json()["state"] == "rejected"
    assert org.decide(review["id"], "approve", headers=lena).status_code == 409
    assert not shipped_files(org)
    with org.runtime.sessions() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.action.like("review_%"))).all()
    outcomes = [(e.action, e.outcome) for e in events]
    assert ("review_approve", "denied") in outcomes and ("review_reject", "allowed") in outcomes


def test_two_required_approvals_count_distinct_users_of_the_current_revision(org: Org) -> None:
    org.write_agent(answerer(org.outbox, review={"approvers": ["group:leads"], "required": 2}))
    run_id = org.run("leave days")
    org.work()
    rid = org.review_of(run_id)["id"]
    assert org.decide(rid, "approve", **{"as": "user:lena"}).json()["state"] == "pending"
    r = org.decide(rid, "approve", **{"as": "user:lena"})
    assert r.status_code == 409 and "already approved" in r.json()["detail"]
    # an edit makes a new revision: earlier approvals no longer count
    content = org.review_of(run_id)["content"] + "\nReviewed by the leads.\n"
    r = org.decide(rid, "edit", content=content, **{"as": "user:leo"})
    assert r.status_code == 200 and r.json()["revision"] == 2
    assert "+Reviewed by the leads." in r.json()["revisions"][1]["diff"]
    assert org.decide(rid, "approve", **{"as": "user:lena"}).json()["state"] == "pending"
    assert not shipped_files(org)
    assert org.decide(rid, "approve", **{"as": "user:leo"}).json()["state"] == "shipped"
    (path,) = shipped_files(org)
    assert path.read_text() == content


def test_stale_evidence_needs_an_explicit_override_which_is_recorded(org: Org) -> None:
    run_id = org.run("How many days of paid leave?")
    org.work()
    rid = org.review_of(run_id)["id"]
    (org.share / "handbook/leave.md").write_text("# Leave\n\nEvery employee has 30 days now.")
    org.sync()
    review = org.review_of(run_id)
    assert review["evidence"]["stale"] and review["evidence"]["counts"]["changed"] >= 1
    r = org.decide(rid, "approve", **{"as": "user:lena"})
    assert r.status_code == 409 and "override" in r.json()["detail"]
    assert not shipped_files(org)
    r = org.decide(rid, "approve", override_stale=True, **{"as": "user:lena"})
    assert r.json()["state"] == "shipped"
    (approval,) = [e for e in r.json()["events"] if e["action"] == "approve"]
    assert approval["detail"]["override_stale"] is True


def test_a_reviewer_sees_citations_they_may_not_read_redacted(org: Org) -> None:
    run_id = org.run("leave days budget for contractors", user="user:alice")
    org.work()
    review = org.review_of(run_id)
    titles = {i.get("title") for i in review["evidence"]["items"]}
    assert "budget.md" in titles  # alice (finance) may read it; the admin sees all
    lena = org.key(user="user:lena")  # a lead, not in finance
    shown = org.client.get(f"/v1/reviews/{review['id']}", headers=lena).json()
    redacted = [i for i in shown["evidence"]["items"] if i["redacted"]]
    assert len(redacted) == 1 and shown["evidence"]["redacted"] == 1
    assert set(redacted[0]) == {"n", "redacted", "source", "status"}
    assert "12 days" not in str(shown) and shown["may_review"] is False
    listed = org.client.get("/v1/reviews", headers=lena).json()["reviews"]
    assert [r["title"] for r in listed if r["id"] == review["id"]] == ["(withheld)"]
    # the draft was made from it: withheld from her, and she may not decide on it
    assert shown["content"] is None and "may not read" in shown["content_withheld"]
    assert all(r["diff"] is None for r in shown["revisions"]) and shown["run"]["query"] is None
    r = org.decide(review["id"], "approve", headers=lena)
    assert r.status_code == 403 and "may not read" in r.json()["detail"]
    assert org.decide(review["id"], "approve", **{"as": "user:lena"}).status_code == 403
    # zoe may neither review nor was it made for her: not visible at all
    zoe = org.key(user="user:zoe")
    assert org.client.get(f"/v1/reviews/{review['id']}", headers=zoe).status_code == 404
    assert org.client.get("/v1/reviews", headers=zoe).json()["reviews"] == []


def test_request_changes_reruns_the_agent_with_the_comment(org: Org) -> None:
    run_id = org.run("leave days")
    org.work()
    rid = org.review_of(run_id)["id"]
    assert org.decide(rid, "request-changes", **{"as": "user:lena"}).status_code == 422
    r = org.decide(
        rid, "request-changes", comment="mention the office hours", **{"as": "user:lena"}
    )
    assert r.status_code == 200 and r.json()["state"] == "changes_requested"
    rerun = r.json()["rerun_id"]
    org.work()
    again = org.client.get(f"/v1/runs/{rerun}", headers=ADMIN).json()
    assert again["trigger_kind"] == "changes" and again["state"] == "succeeded"
    assert again["input"]["review_comments"] == ["mention the office hours"]
    assert again["harness_input"]["review_comments"] == ["mention the office hours"]
    assert org.review_of(rerun)["state"] == "pending"


def test_comment_and_defer_are_recorded_and_overdue_reviews_expire(org: Org) -> None:
    run_id = org.run("leave days")
    org.work()
    rid = org.review_of(run_id)["id"]
    assert org.decide(rid, "comment", comment="looks fine", **{"as": "user:leo"}).status_code == 200
    until = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    r = org.decide(rid, "defer", until=until, **{"as": "user:leo"})
    assert r.json()["deferred_until"] and r.json()["state"] == "pending"
    later = ReviewDesk(org.runtime, clock=lambda: datetime.now(UTC) + timedelta(days=8))
    assert later.expire_due() == 1
    shown = org.review_of(run_id)
    assert shown["state"] == "expired"
    assert [e["action"] for e in shown["events"]][-3:] == ["comment", "defer", "expire"]
    assert org.decide(rid, "approve", **{"as": "user:lena"}).status_code == 409


# -- triggers ----------------------------------------------------------------------------------


def test_an_event_agent_runs_once_per_new_matching_document(org: Org) -> None:
    org.write_agent(
        answerer(
            org.outbox,
            name="filer",
            trigger={"kind": "event", "source": "drive", "on": ["created"], "filter": {}},
            context={"query": "{{ document.title }}"},
        )
    )
    (org.share / "handbook/parking.md").write_text("# Parking\n\nParking is behind the office.")
    run = org.sync()
    assert run["runs_queued"] == 1
    assert org.sync()["runs_queued"] == 0  # unchanged: no new occurrence
    (queued,) = org.client.get("/v1/runs?agent=filer", headers=ADMIN).json()["runs"]
    assert queued["trigger_kind"] == "event" and queued["on_behalf_of"] == "user:lena"
    org.work()
    shown = org.client.get(f"/v1/runs/{queued['run_id']}", headers=ADMIN).json()
    assert shown["query"] == "parking.md" and shown["state"] == "succeeded"
    assert shown["trigger"]["document"]["external_id"] == "handbook/parking.md"
    # an update is another event kind: this agent listens to created only
    (org.share / "handbook/parking.md").write_text("# Parking\n\nParking moved.")
    assert org.sync()["runs_queued"] == 0


def test_a_scheduled_agent_runs_once_per_slot(org: Org) -> None:
    org.write_agent(
        answerer(
            org.outbox,
            name="digest",
            trigger={"kind": "schedule", "cron": "0 * * * *", "input": {"question": "office"}},
        )
    )
    now = [datetime(2026, 11, 24, 10, 30, tzinfo=UTC)]
    worker = Worker(org.runtime, clock=lambda: now[0])
    assert worker.enqueue_scheduled() == []  # first seen: starts from now
    now[0] = datetime(2026, 11, 24, 10, 59, tzinfo=UTC)
    assert worker.enqueue_scheduled() == []
    now[0] = datetime(2026, 11, 24, 11, 0, 5, tzinfo=UTC)
    assert len(worker.enqueue_scheduled()) == 1
    assert worker.enqueue_scheduled() == []
    other = Worker(org.runtime, clock=lambda: now[0])  # a second worker: no duplicate
    assert other.enqueue_scheduled() == []
    (run,) = Views(org.runtime).list_runs(Viewer.admin(), agent="digest")
    assert run["trigger_key"] == "schedule:2026-11-24T11:00:00+00:00"


# -- the queue --------------------------------------------------------------------------------


def test_a_run_whose_worker_stops_renewing_is_taken_over_once(org: Org) -> None:
    run_id = org.run("leave days")
    queue = RunQueue(org.runtime.sessions)
    assert queue.claim("dead-worker", timedelta(seconds=30)) == run_id
    assert queue.claim("other", timedelta(seconds=30)) is None  # the lease is live
    later = RunQueue(org.runtime.sessions, clock=lambda: datetime.now(UTC) + timedelta(minutes=1))
    assert later.claim("other", timedelta(minutes=5)) == run_id
    # the dead worker wakes up: its heartbeat and its result are refused
    assert queue.heartbeat(run_id, "dead-worker", timedelta(seconds=30)) == "lost"
    assert queue.release(run_id, "dead-worker", error="x", retryable=True) is None
    worker = Worker(org.runtime, worker_id="other")
    assert worker.process(run_id) == "succeeded"
    run = Views(org.runtime).show_run(run_id, Viewer.admin())
    assert run["attempts"] == 2 and run["state"] == "succeeded"
    with org.runtime.sessions() as s:
        assert len(s.scalars(select(AgentRun)).all()) == 1
    assert len(ReviewDesk(org.runtime).list_reviews()["reviews"]) == 1


def test_failed_attempts_back_off_then_fail_and_permanent_errors_fail_at_once(org: Org) -> None:
    script = org.settings.home / "flaky.py"
    script.write_text("import sys\nsys.stderr.write('model overloaded')\nsys.exit(75)\n")
    org.write_agent(
        answerer(
            org.outbox,
            harness={"kind": "command", "command": ["python3", str(script)]},
            max_attempts=2,
        )
    )
    run_id = org.run("leave days")
    worker = Worker(org.runtime)
    assert worker.step()
    run = Views(org.runtime).show_run(run_id, Viewer.admin())
    assert run["state"] == "queued" and run["attempts"] == 1 and "overloaded" in run["error"]
    assert not worker.step()  # backing off
    later = Worker(org.runtime, clock=lambda: datetime.now(UTC) + timedelta(minutes=11))
    assert later.step()
    run = Views(org.runtime).show_run(run_id, Viewer.admin())
    assert run["state"] == "failed" and run["attempts"] == 2 and len(run["history"]) == 2
    # a template naming what a manual run does not have: no retry
    org.write_agent(answerer(org.outbox, context={"query": "{{ document.title }}"}))
    run_id = org.run("x")
    assert Worker(org.runtime).step()
    run = Views(org.runtime).show_run(run_id, Viewer.admin())
    assert run["state"] == "failed" and run["attempts"] == 1 and "document" in run["error"]


def test_cancel_stops_queued_and_running_runs(org: Org) -> None:
    run_id = org.run("leave days")
    r = org.client.post(f"/v1/runs/{run_id}/cancel", headers=ADMIN)
    assert r.json()["state"] == "cancelled"
    assert org.client.post(f"/v1/runs/{run_id}/cancel", headers=ADMIN).status_code == 409
    script = org.settings.home / "slow.py"
    script.write_text("import time\ntime.sleep(60)\n")
    org.write_agent(
        answerer(org.outbox, harness={"kind": "command", "command": ["python3", str(script)]})
    )
    run_id = org.run("leave days")
    worker = Worker(org.runtime, lease=timedelta(seconds=1))
    claimed = worker.queue.claim(worker.id, worker.lease)
    assert claimed == run_id
    RunQueue(org.runtime.sessions).cancel(run_id)
    started = time.monotonic()
    assert worker.process(run_id) == "cancelled"
    assert time.monotonic() - started < 30  # stopped, not waited out
    assert ReviewDesk(org.runtime).list_reviews()["reviews"] == []


def test_runs_are_refused_for_users_the_agent_does_not_serve(org: Org) -> None:
    org.write_agent(answerer(org.outbox, serves=["group:finance"]))
    r = org.client.post(
        "/v1/agents/answerer/runs", json={"on_behalf_of": "user:zoe", "input": {}}, headers=ADMIN
    )
    assert r.status_code == 403 and "does not serve" in r.json()["detail"]
    zoe = org.key(user="user:zoe")
    r = org.client.post(
        "/v1/agents/answerer/runs", json={"on_behalf_of": "user:alice"}, headers=zoe
    )
    assert r.status_code == 403
    org.write_agent({"name": "plain", "sources": ["drive"], "serves": ["group:everyone"]})
    r = org.client.post("/v1/agents/plain/runs", json={"on_behalf_of": "user:alice"}, headers=ADMIN)
    assert r.status_code == 422 and "no harness" in r.json()["detail"]


# -- shipping ---------------------------------------------------------------------------------


def test_a_crash_between_shipping_and_recording_ships_once(org: Org) -> None:
    run_id = org.run("leave days")
    org.work()
    rid = org.review_of(run_id)["id"]
    desk = ReviewDesk(org.runtime)

    def crash(_review_id: str) -> None:
        raise KeyboardInterrupt("power cut after the file was written")

    desk.after_ship = crash
    with pytest.raises(KeyboardInterrupt):
        desk.approve(rid, "user:lena")
    assert len(shipped_files(org)) == 1
    assert org.review_of(run_id)["state"] == "shipping"  # shipped, not recorded
    assert ReviewDesk(org.runtime).ship_pending() == []  # another process waits out the lease
    later = ReviewDesk(org.runtime, clock=lambda: datetime.now(UTC) + SHIP_LEASE * 2)
    assert later.ship_pending() == [rid]
    shown = org.review_of(run_id)
    assert shown["state"] == "shipped" and shown["ship_result"]["already_shipped"] is True
    assert len(shipped_files(org)) == 1


def test_webhook_shipping_sends_an_idempotency_key_and_failures_can_be_retried(
    org: Org, httpserver: HTTPServer
) -> None:
    received: list[Request] = []
    status = [503]

    def hook(request: Request) -> Response:
        received.append(request)
        return Response("busy" if status[0] >= 300 else "ok", status=status[0])

    httpserver.expect_request("/hook", method="POST").respond_with_handler(hook)
    org.write_agent(
        answerer(org.outbox, ship={"kind": "webhook", "url": httpserver.url_for("/hook")})
    )
    run_id = org.run("leave days")
    org.work()
    rid = org.review_of(run_id)["id"]
    r = org.decide(rid, "approve", **{"as": "user:lena"})
    assert r.json()["state"] == "ship_failed" and "503" in r.json()["ship_error"]
    status[0] = 200
    assert (
        org.decide(
            rid, "retry-ship", **{"as": "user:zoe"}, headers=org.key(user="user:zoe")
        ).status_code
        == 403
    )
    r = org.decide(rid, "retry-ship", **{"as": "user:lena"})
    assert r.json()["state"] == "shipped"
    assert len(received) == 2
    keys = {req.headers["Idempotency-Key"] for req in received}
    assert keys == {f"context-server-review-{rid}"}
    body = received[-1].get_json()
    assert body["review_id"] == rid and body["approvals"][0]["actor"] == "user:lena"
    assert body["citations"] and body["content"] == org.review_of(run_id)["content"]


def test_an_openai_harness_run_drafts_from_a_local_compatible_server(
    org: Org, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_KEY_FOR_TEST", "sk-local")

    def answer(body: dict[str, Any]) -> str:
        prompt = body["messages"][-1]["content"]
        assert "[1]" in prompt and "27 days of paid leave" in prompt
        return "Employees get 27 days of paid leave [1]."

    with FakeOpenAI(answer=answer) as llm:
        harness = {
            "kind": "openai",
            "base_url": llm.url,
            "model": "local-model",
            "api_key": {"env": "LLM_KEY_FOR_TEST"},
        }
        org.write_agent(answerer(org.outbox, harness=harness))
        run_id = org.run("How many days of paid leave?")
        org.work()
        (request,) = llm.requests
    assert request.bearer == "sk-local" and request.json["model"] == "local-model"
    run = org.client.get(f"/v1/runs/{run_id}", headers=ADMIN).json()
    assert run["harness_output"]["metadata"]["model"]
    review = org.review_of(run_id)
    assert review["content"] == "Employees get 27 days of paid leave [1]."
    assert review["evidence"]["items"]
