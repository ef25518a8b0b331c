"""Every route of /openapi.json against what schemathesis generates from it, with each kind
of key (the admin token, an agent's key, a user's key, none): no answer may be a 5xx, a
status the schema does not document, or a body or media type other than documented.

Bounded: a few examples per route in each of positive and negative generation, no shrinking,
no example database; about a minute in all on two cores. The org is built once per module
(the fake hashing embedder; ranking is not under test).

Also the three 500s schemathesis found first, each by name (they must stay fixed whatever
the generator happens to try).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.security.edge_org import EdgeOrg, edge_org

KINDS = ["admin", "agent", "user", "none"]
EXAMPLES = {GenerationMode.POSITIVE: 4, GenerationMode.NEGATIVE: 3}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def org(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeOrg]:
    with edge_org(tmp_path_factory.mktemp("fuzz")) as o:
        yield o


@pytest.fixture(scope="module")
def schema(org: EdgeOrg) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", org.app)


def test_the_schema_documents_the_refusals_and_the_audit_media_type(org: EdgeOrg) -> None:
    document = org.client.get("/openapi.json").json()
    for path, operations in document["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in operations.items():
            documented = set(operation["responses"])
            missing = {"401", "403", "404", "409", "413", "422"} - documented
            assert not missing, f"{method.upper()} {path} does not document {sorted(missing)}"
    audit = document["paths"]["/v1/audit"]["get"]["responses"]["200"]["content"]
    assert "application/x-ndjson" in audit


@pytest.mark.parametrize("kind", KINDS)
def test_no_route_answers_a_5xx_or_an_undocumented_response(
    org: EdgeOrg, schema: Any, kind: str
) -> None:
    headers = org.headers(kind)
    problems: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20  # every route of the API, not a few
    for operation in operations:
        for mode, examples in EXAMPLES.items():
            strategy = operation.as_strategy(generation_mode=mode)

            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
                derandomize=True,
            )
            @given(strategy)
            def run(case: Any) -> None:
                case.call_and_validate(headers=headers, checks=CHECKS)

            try:
                run()
            except Unsatisfiable:
                pass  # nothing to make invalid (a route without parameters, in negative mode)
            except Exception as exc:  # collect: one report for every route that fails
                problems.append(f"{operation.label} ({mode.value}): {str(exc)[:1500]}")
    assert not problems, "\n\n".join(problems)


# -- the 500s found first --------------------------------------------------------------------


def test_a_bad_age_filter_is_a_422_with_its_reason(org: EdgeOrg) -> None:
    for age in ("0.0", "0d", "-1d", "9" * 20 + "w", "1y", "\u0661d"):
        r = org.client.get("/v1/reviews", params={"older_than": age}, headers=org.headers("admin"))
        assert r.status_code == 422, (age, r.text)
        assert "duration" in r.json()["detail"]


@pytest.mark.parametrize("principal", ["garbage", "user:", "user:a b", "group:x:y"])
def test_an_unparsable_principal_is_a_422(org: EdgeOrg, principal: str) -> None:
    for kind in ("admin", "user"):
        r = org.client.get(
            "/v1/documents/x", params={"on_behalf_of": principal}, headers=org.headers(kind)
        )
        assert r.status_code in (403, 422), (kind, r.text)
    r = org.client.get(
        "/v1/documents/x", params={"on_behalf_of": principal}, headers=org.headers("admin")
    )
    assert r.status_code == 422 and "principal" in r.json()["detail"]


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/context", "query"),
        ("/v1/context", "agent"),
        ("/v1/context", "on_behalf_of"),
        ("/v1/search", "query"),
        ("/v1/keys", "label"),
        ("/v1/reviews/x/comment", "comment"),
        ("/v1/principals", "groups"),
    ],
)
def test_a_lone_surrogate_is_a_422_that_encodes(org: EdgeOrg, path: str, field: str) -> None:
    bodies: dict[str, dict[str, Any]] = {
        "/v1/context": {"agent": "helpdesk", "on_behalf_of": "user:alice", "query": "budget"},
        "/v1/search": {"query": "budget", "as": "user:alice"},
        "/v1/keys": {"user": "user:alice", "label": "x"},
        "/v1/reviews/x/comment": {"as": "user:alice", "comment": "x"},
        "/v1/principals": {"groups": {"x": ["user:a"]}},
    }
    body = dict(bodies[path])
    body[field] = {"\ud800": ["user:a"]} if field == "groups" else "budget \ud800"
    raw = json.dumps(body)  # ensure_ascii: the surrogate travels as its escape, as JSON allows
    assert "\\ud800" in raw
    method = "PUT" if path == "/v1/principals" else "POST"
    r = org.client.request(
        method,
        path,
        content=raw,
        headers={**org.headers("admin"), "Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert r.json()["detail"]  # the answer itself is valid JSON in valid UTF-8
    r.content.decode("utf-8")


def test_the_org_still_answers_after_the_fuzzing(org: EdgeOrg) -> None:
    body = {"agent": "helpdesk", "on_behalf_of": "user:alice", "query": "leave days"}
    r = org.client.post("/v1/context", json=body, headers=org.headers("user"))
    assert r.status_code in (200, 403), r.text  # the fuzzer may have replaced the principals


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_time_at_the_edge_of_the_calendar_is_a_422(org: EdgeOrg, moment: str) -> None:
    admin = org.headers("admin")
    r = org.client.get("/v1/audit", params={"since": moment}, headers=admin)
    assert r.status_code == 422, r.text
    body = {"agent": "helpdesk", "on_behalf_of": "user:alice", "query": "budget"}
    r = org.client.post(
        "/v1/context", json={**body, "filters": {"updated_after": moment}}, headers=admin
    )
    assert r.status_code == 422, r.text
    r = org.client.post(
        "/v1/reviews/x/defer", json={"as": "user:alice", "until": moment}, headers=admin
    )
    assert r.status_code == 422, r.text
