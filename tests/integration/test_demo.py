"""The shipped demo organization, ingested with the real model and real parsing of every
format: each demo question's answer reaches exactly the principals allowed to read it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select

from context_server.demo import questions, run_demo
from context_server.runtime import Runtime
from context_server.settings import Settings
from context_server.store.models import Chunk, Document
from indexing.pipeline import document_id
from tests.conftest import DEMO

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Runtime, dict[str, Any]]]:
    settings = Settings(home=tmp_path_factory.mktemp("demo-home"))
    report = run_demo(settings, DEMO, progress=None)
    runtime = Runtime(settings)
    yield runtime, report
    runtime.close()


def test_every_format_is_parsed_and_indexed(demo: tuple[Runtime, dict[str, Any]]) -> None:
    runtime, report = demo
    (run,) = report["runs"]
    assert run["status"] == "completed"
    with runtime.sessions() as s:
        rows = s.execute(
            select(Document.external_id, func.count(Chunk.id))
            .join(Chunk, Chunk.document_id == Document.id)
            .group_by(Document.external_id)
        ).all()
    indexed = {ext: n for ext, n in rows if n > 0}
    for suffix in (".md", ".html", ".txt", ".docx", ".pdf", ".xlsx", ".pptx", ".eml"):
        assert any(e.endswith(suffix) for e in indexed), f"no {suffix} document was indexed"
    failures = {f["external_id"]: f["reason"] for f in run["failures"]}
    assert failures == {"misc/corrupt-export.docx": "corrupt", "misc/empty.txt": "empty"}
    assert run["upserted"] == run["documents_seen"] - 2


@pytest.mark.parametrize("question", questions(DEMO), ids=lambda q: f"{q['as']}: {q['query']}")
def test_demo_question(demo: tuple[Runtime, dict[str, Any]], question: dict[str, Any]) -> None:
    runtime, _ = demo
    results = runtime.search(question["query"], question["as"], k=5)
    found = {r.document_id for r in results}
    if question["expect_document"]:
        assert document_id("drive", question["expect_document"]) in found, [
            r.title for r in results
        ]
    else:
        assert document_id("drive", question["withheld_document"]) not in found


def test_nobody_outside_an_acl_ever_gets_its_chunks(demo: tuple[Runtime, dict[str, Any]]) -> None:
    """Every principal in the demo, a broad query, a large k: only readable documents."""
    runtime, _ = demo
    spec = yaml.safe_load((DEMO / "principals.yaml").read_text())
    users = {m for members in spec["groups"].values() for m in members if m.startswith("user:")}
    with runtime.sessions() as s:
        acls = {d.id: d.acl for d in s.scalars(select(Document))}
    from connectors.base import Acl

    for user in sorted(users | {"user:stranger"}):
        held = runtime.principals_for(user)
        for r in runtime.search("plans numbers people policy", user, k=100):
            assert Acl.model_validate(acls[r.document_id]).grants(held), (user, r.title)


def test_demo_agents_route_context_by_their_acting_mode(
    demo: tuple[Runtime, dict[str, Any]],
) -> None:
    from context_server.errors import ForbiddenError
    from context_server.keys import ADMIN
    from context_server.routing import ContextRouter

    runtime, report = demo
    assert report["agents"] == [
        "finance-assistant",
        "helpdesk",
        "onboarding-buddy",
        "policy-answerer",
    ]
    router = ContextRouter(runtime)
    budget = document_id("drive", "finance/budget-2027.xlsx")
    query = "What is the 2027 marketing budget?"

    def documents(agent: str, user: str) -> set[str]:
        bundle = router.route(ADMIN, agent, user, query)
        assert bundle["used_tokens"] <= bundle["budget_tokens"]
        return {i["citation"]["document_id"] for i in bundle["items"]}

    # intersection: alice (finance) gets the budget; dana (leadership, not finance) does not,
    # although the agent serves leadership.
    assert budget in documents("finance-assistant", "user:alice")
    assert budget not in documents("finance-assistant", "user:dana")
    # on_behalf_of: carol (engineering) does not read finance
    assert budget not in documents("helpdesk", "user:carol")
    # as_agent: the agent's own group:everyone, so no finance for alice either
    assert budget not in documents("onboarding-buddy", "user:alice")
    with pytest.raises(ForbiddenError, match="does not serve user:grace"):
        router.route(ADMIN, "helpdesk", "user:grace", query)


def test_the_demo_policy_answerer_runs_is_reviewed_and_ships_into_the_outbox(
    demo: tuple[Runtime, dict[str, Any]],
) -> None:
    from context_server.errors import ForbiddenError
    from context_server.keys import ADMIN
    from context_server.review import ReviewDesk
    from context_server.runs import manual_run
    from context_server.worker import Worker

    runtime, _ = demo
    question = {"question": "How many vacation days do I get?"}
    run = manual_run(runtime, ADMIN, "policy-answerer", "user:carol", question)
    assert Worker(runtime).until_idle()["processed"] == 1
    desk = ReviewDesk(runtime)
    (review,) = [
        r
        for r in desk.list_reviews(agent="policy-answerer")["reviews"]
        if r["run_id"] == run["run_id"]
    ]
    shown = desk.show(review["id"], "user:dan")
    assert "26 paid vacation days" in shown["content"]
    assert "holidays.txt" in {i.get("title") for i in shown["evidence"]["items"]}
    with pytest.raises(ForbiddenError, match="may not review"):
        desk.approve(review["id"], "user:carol")  # engineering, not people-ops
    # dan (people-ops, also an engineer) may read everything the draft for carol was made from
    assert desk.approve(review["id"], "user:dan")["state"] == "shipped"
    outbox = runtime.settings.home / "outbox"
    (shipped,) = outbox.glob("*.md")
    assert shipped.read_text() == shown["content"]
