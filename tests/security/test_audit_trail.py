"""Every request that serves or refuses context, documents, bundles, runs or reviews leaves
exactly one audit row, allowed or refused, whatever stops it: a missing key, validation, the
rules, a missing or unreadable thing. Over the org of ``test_withholding``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from httpx import Response
from sqlalchemy import func, select

from context_server.store.models import AuditEvent
from indexing.pipeline import document_id
from tests.security.test_withholding import ADMIN, SECRET_PATH, Org, org  # noqa: F401


def rows(o: Org) -> list[AuditEvent]:
    with o.runtime.sessions() as session:
        found = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
        session.expunge_all()
        return list(found)


def count(o: Org) -> int:
    with o.runtime.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(AuditEvent)) or 0)


def one_row(o: Org, request: Callable[[], Response]) -> tuple[Response, AuditEvent]:
    before = count(o)
    response = request()
    after = rows(o)
    assert len(after) == before + 1, [(r.action, r.outcome, r.detail) for r in after[before:]]
    return response, after[-1]


def test_refused_and_rejected_context_requests_are_audited(org: Org) -> None:  # noqa: F811
    zoe = org.key(user="user:zoe")
    body: dict[str, Any] = {"agent": "answerer", "on_behalf_of": "user:zoe", "query": "leave"}
    cases: list[tuple[dict[str, Any], dict[str, str], int, str]] = [
        (body, zoe, 200, "allowed"),
        ({**body, "on_behalf_of": "user:alice"}, zoe, 403, "denied"),
        ({**body, "budget_tokens": "lots"}, zoe, 422, "invalid"),  # never reaches the router
        ({"query": "leave"}, zoe, 422, "invalid"),
        (body, {}, 401, "unauthenticated"),
        (body, {"Authorization": "Bearer not-a-key"}, 401, "unauthenticated"),
    ]
    for sent, headers, status, outcome in cases:
        r, row = one_row(
            org, lambda s=sent, h=headers: org.client.post("/v1/context", json=s, headers=h)
        )
        assert r.status_code == status, (sent, r.text)
        assert (row.action, row.outcome) == ("context", outcome), (sent, row.detail)
        if headers is zoe:
            assert row.caller == "user:zoe"
    _, row = one_row(org, lambda: org.client.post("/v1/context", json={}, headers=zoe))
    assert row.outcome == "invalid" and "query" in row.detail  # says what was wrong


def test_document_reads_are_audited_allowed_refused_and_missing(org: Org) -> None:  # noqa: F811
    zoe = org.key(user="user:zoe")
    secret = document_id("drive", SECRET_PATH)
    readable = document_id("drive", "handbook/leave.md")
    cases = [
        (f"/v1/documents/{readable}", 200, "allowed"),
        (f"/v1/documents/{secret}", 404, "not_found"),
        (f"/v1/documents/{readable}?on_behalf_of=user:alice", 403, "denied"),
        (f"/v1/documents/{readable}?agent=answerer&on_behalf_of=user:alice", 403, "denied"),
    ]
    for path, status, outcome in cases:
        r, row = one_row(org, lambda p=path: org.client.get(p, headers=zoe))
        assert r.status_code == status, (path, r.text)
        assert (row.action, row.outcome, row.caller) == ("document", outcome, "user:zoe"), path


def test_runs_reviews_and_bundles_reads_are_audited(org: Org) -> None:  # noqa: F811
    run_id = org.run("answerer", "user:zoe")
    run = org.client.get(f"/v1/runs/{run_id}", headers=ADMIN).json()
    zoe = org.key(user="user:zoe")
    lena = org.key(user="user:lena")
    cases = [
        ("/v1/runs", zoe, 200, "run", "allowed"),
        (f"/v1/runs/{run_id}", zoe, 200, "run", "allowed"),
        (f"/v1/runs/{run_id}", lena, 404, "run", "not_found"),
        (f"/v1/bundles/{run['bundle_id']}", zoe, 200, "bundle", "allowed"),
        (f"/v1/bundles/{run['bundle_id']}", lena, 404, "bundle", "not_found"),
        (f"/v1/bundles/{run['bundle_id']}/check", zoe, 200, "bundle_check", "allowed"),
        ("/v1/reviews", lena, 200, "review", "allowed"),
        ("/v1/reviews?state=nonsense", lena, 422, "review", "invalid"),
        ("/v1/runs/whatever", {}, 401, "run", "unauthenticated"),
    ]
    for path, headers, status, action, outcome in cases:
        r, row = one_row(org, lambda p=path, h=headers: org.client.get(p, headers=h))
        assert r.status_code == status, (path, r.text)
        assert (row.action, row.outcome) == (action, outcome), (path, row.detail)
    body = {"on_behalf_of": "user:zoe", "input": {"document_id": "nope"}}
    r, row = one_row(
        org, lambda: org.client.post("/v1/agents/answerer/runs", json=body, headers=zoe)
    )
    assert r.status_code == 404 and (row.action, row.outcome) == ("run_request", "not_found")


@pytest.mark.parametrize("path", ["/healthz", "/v1/sources"])
def test_routes_that_serve_nothing_derived_leave_no_request_row(
    org: Org,  # noqa: F811
    path: str,
) -> None:
    before = count(org)
    assert org.client.get(path, headers=ADMIN).status_code == 200
    assert count(org) == before
