"""Property: nothing ships without approval. Random sequences of review API calls, by
approvers and by everyone else (other users, agent keys, the admin naming a non-approver),
interleaved with changes to the cited documents. After every sequence:

- every shipped artifact has a review in ``shipped`` whose current revision was approved by
  enough distinct allowed reviewers, and whose evidence bundle is the one its run used;
- each shipped review shipped exactly one file, with the approved revision's text;
- a sequence in which no approver approved ships nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from context_server.store.models import AgentRun, Review
from tests.integration.test_runs_and_reviews import ADMIN, Org, answerer, org  # noqa: F401

APPROVERS = {"user:lena", "user:leo"}  # group:leads
ACTORS = ["user:lena", "user:leo", "user:zoe", "user:alice", "agent", "admin-as-zoe"]
ACTIONS = [
    "approve",
    "approve-override",
    "reject",
    "edit",
    "request-changes",
    "comment",
    "defer",
    "retry-ship",
    "change-source",
]

steps = st.lists(
    st.tuples(st.sampled_from(ACTORS), st.sampled_from(ACTIONS), st.integers(0, 1)),
    min_size=1,
    max_size=10,
)


def call(o: Org, keys: dict[str, dict[str, str]], actor: str, action: str, review: str) -> int:
    body: dict[str, Any] = {}
    headers = ADMIN
    if actor == "admin-as-zoe":
        body["as"] = "user:zoe"
    elif actor == "agent":
        headers = keys["agent"]
    else:
        headers = keys[actor]
    if action == "approve-override":
        action, body["override_stale"] = "approve", True
    if action in ("request-changes", "comment"):
        body["comment"] = "please cite the handbook"
    if action == "edit":
        current = o.client.get(f"/v1/reviews/{review}", headers=ADMIN).json()["content"]
        body["content"] = current + "\nedited\n"
    status: int = o.decide(review, action, headers=headers, **body).status_code
    return status


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(sequence=[("user:lena", "approve", 0), ("user:leo", "approve", 0)])
@example(
    sequence=[("user:lena", "approve", 1), ("user:leo", "edit", 1), ("user:leo", "approve", 1)]
)
@given(sequence=steps)
def test_nothing_ships_without_approval_by_allowed_reviewers(org: Org, sequence: Any) -> None:  # noqa: F811
    keys = getattr(org, "_keys", None)
    if keys is None:
        keys = {a: org.key(user=a) for a in ACTORS if a.startswith("user:")}
        keys["agent"] = org.key(agent="answerer")
        org._keys = keys  # type: ignore[attr-defined]
        org.write_agent(answerer(org.outbox, review={"approvers": ["group:leads"], "required": 2}))
    before = len(list(org.outbox.glob("*.md"))) if org.outbox.exists() else 0
    runs = [org.run("How many days of paid leave?"), org.run("When does the office open?")]
    org.work()
    reviews = [org.review_of(r)["id"] for r in runs]
    approver_approved = False
    approvals: list[set[str]] = [set(), set()]
    for actor, action, which in sequence:
        if action == "change-source":
            leave = org.share / "handbook/leave.md"
            leave.write_text(leave.read_text() + " Updated.")
            org.sync()
            continue
        status = call(org, keys, actor, action, reviews[which])
        if actor in APPROVERS and action.startswith("approve") and status == 200:
            approver_approved = True
            approvals[which].add(actor)
        if action == "edit" and status == 200:
            approvals[which] = set()  # a new revision: approvals start over
        if actor not in APPROVERS:
            assert status in (403, 404, 409, 422), (actor, action, status)
    for which, approved_by in enumerate(approvals):  # and approval does ship
        if len(approved_by) >= 2:
            shown = org.client.get(f"/v1/reviews/{reviews[which]}", headers=ADMIN).json()
            assert shown["state"] == "shipped", shown["state"]
    files = sorted(org.outbox.glob("*.md")) if org.outbox.exists() else []
    if not approver_approved:
        assert len(files) == before
    with org.runtime.sessions() as s:
        shipped = s.scalars(select(Review).where(Review.state == "shipped")).all()
        assert len(files) == len(shipped)
        for review in shipped:
            run = s.get(AgentRun, review.run_id)
            assert run is not None and review.bundle_id == run.bundle_id
            approvals = {
                e.actor
                for e in review.events
                if e.action == "approve" and e.revision == review.revision
            }
            assert approvals <= APPROVERS and len(approvals) >= review.required
            (path,) = [Path(review.ship_result["path"])]  # type: ignore[index]
            assert path.read_text() == review.revisions[-1].content
            assert [e.action for e in review.events].count("ship") == 1
