"""The runnable part of agent files: what validates, what is refused and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from context_server.agents import AgentSpec, agent_schema, load_agent_file
from context_server.errors import SpecError
from context_server.workflow import EventTrigger, TemplateFailure, render

BASE: dict[str, Any] = {
    "name": "answerer",
    "sources": ["drive"],
    "serves": ["group:everyone"],
}
RUNNABLE: dict[str, Any] = {
    **BASE,
    "harness": {"kind": "extractive"},
    "review": {"approvers": ["group:leads"]},
}

# The example, verbatim except for the owner it needs to run events for someone.
EXAMPLE = """
name: ticket-answerer
description: Drafts answers to new customer tickets
sources: [drive, support-jira]
acting_as: on_behalf_of
serves: ["group:everyone"]
principals: []
budget_tokens: 2000
max_age: 365d
owner: user:carol
trigger: {kind: event, source: support-jira, on: [created], filter: {labels: [customer]}}
context: {query: "{{ document.title }}"}
harness: {kind: extractive}
output: {kind: markdown}
review: {approvers: ["group:support-leads"], required: 1, expires_after: 7d}
ship: {kind: file, dir: /srv/outbox}
"""


def test_the_example_agent_file_loads_with_on_as_a_key(tmp_path: Path) -> None:
    path = tmp_path / "ticket-answerer.yaml"
    path.write_text(EXAMPLE)
    spec = load_agent_file(path).spec
    assert isinstance(spec.trigger, EventTrigger)
    assert spec.trigger.on == ("created",)  # YAML 1.1 would have read `on` as True
    assert spec.trigger.filter == {"labels": ("customer",)}
    assert spec.default_user() == "user:carol"
    assert spec.runnable and spec.review is not None and spec.review.expires_after == "7d"
    assert spec.ship is not None and spec.ship.kind == "file"


def test_context_only_agents_still_validate_and_are_not_runnable() -> None:
    spec = AgentSpec.model_validate(BASE)
    assert not spec.runnable and spec.trigger.kind == "manual"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"review": None}, "nothing it produces ships without a human's approval"),
        ({"review": {"approvers": []}}, "at least 1"),
        ({"trigger": {"kind": "schedule", "cron": "0 9 * * *"}}, "give `owner: user:<name>`"),
        ({"trigger": {"kind": "schedule", "cron": "every day"}}, "bad cron expression"),
        ({"trigger": {"kind": "event", "source": "x", "on": []}}, "at least one"),
        ({"trigger": {"kind": "event", "source": "x", "on": ["deleted"]}}, "created"),
        ({"trigger": {"kind": "webhook"}}, "does not match any of the expected tags"),
        ({"context": {"query": "{{ input.question "}}, "bad template"),
        ({"owner": "group:leads"}, "owner must be a user"),
        ({"harness": {"kind": "openai", "model": "m"}}, "base_url"),
        (
            {
                "harness": {
                    "kind": "openai",
                    "base_url": "http://x",
                    "model": "m",
                    "api_key": "sk-1",
                }
            },
            "reference",
        ),
        ({"ship": {"kind": "webhook", "url": "not a url"}}, "url"),
        ({"review": {"approvers": ["leads"]}}, "leads"),
        ({"timeout": "soon"}, "soon"),
        ({"max_attempts": 0}, "greater than or equal to 1"),
    ],
)
def test_bad_runnable_parts_are_refused_with_a_reason(change: dict[str, Any], message: str) -> None:
    data = {**RUNNABLE, **change}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ValueError) as info:
        AgentSpec.model_validate(data)
    assert message in str(info.value)


def test_a_bad_file_names_itself(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump({**RUNNABLE, "review": None}))
    with pytest.raises(SpecError, match=str(path)):
        load_agent_file(path)


def test_event_filters_match_any_accepted_value_of_every_key() -> None:
    trigger = EventTrigger(source="s", filter={"labels": ("customer", "vip"), "state": ("open",)})
    assert trigger.matches({"labels": "bug, customer", "state": "open"})
    assert trigger.matches({"labels": ["vip"], "state": "open"})
    assert not trigger.matches({"labels": "bug", "state": "open"})
    assert not trigger.matches({"labels": "customer"})  # state missing
    assert EventTrigger(source="s").matches({})


def test_templates_render_strictly_in_a_sandbox() -> None:
    assert render("{{ document.title }}", {"document": {"title": " Printer on fire "}}) == (
        "Printer on fire"
    )
    with pytest.raises(TemplateFailure, match="this run has: input"):
        render("{{ document.title }}", {"input": {}})
    with pytest.raises(TemplateFailure):  # no reaching into Python internals
        render("{{ input.__class__.__mro__ }}", {"input": {}})


def test_the_published_schema_covers_the_runnable_keys() -> None:
    schema = agent_schema()
    for key in ("owner", "trigger", "context", "harness", "output", "review", "ship"):
        assert key in schema["properties"], key
