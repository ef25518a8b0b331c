"""Templates: a query or file-name template is bounded in output, size of what it builds,
loop iterations and time; every template error (syntax, undefined, security, range
overflow, a limit) fails the run at once, with a clear message and no retry."""

from __future__ import annotations

import time
from typing import Any

import pytest

from context_server.workflow import TemplateFailure, TemplateLimits, render
from tests.integration.test_runs_and_reviews import ADMIN, Org, answerer, org  # noqa: F401

#: Each would build hundreds of MB, or loop for hours, or hit a sandbox refusal.
HOSTILE: dict[str, str] = {
    "string_times_int": "{{ 'a' * 300000000 }}",
    "int_times_string": "{{ 300000000 * 'a' }}",
    "list_times_int": "{{ ([1, 2, 3] * 100000000)|length }}",
    "power": "{{ 10 ** 100000000 }}",
    "string_power_of_growth": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}"
    "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    "plus_doubling": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}"
    "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
    "list_plus_doubling": "{% set ns = namespace(s=[1]) %}{% for i in range(40) %}"
    "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
    "nested_loops_output": "{% for i in range(100000) %}{% for j in range(100000) %}"
    "xxxxxxxxxx{% endfor %}{% endfor %}",
    "nested_loops_silent": "{% for i in range(100000) %}{% for j in range(100000) %}"
    "{% endfor %}{% endfor %}done",
    "nested_loops_over_a_string": "{% set s = 'a' * 50000 %}{% for c in s %}{% for d in s %}"
    "{% endfor %}{% endfor %}done",
    "range_overflow": "{% for i in range(1000000000) %}{{ i }}{% endfor %}",
    "range_in_expression": "{{ range(10 ** 12)|length }}",
    "center_filter": "{{ 'a'|center(1000000000) }}",
    "indent_filter": "{{ ('a\n' * 1000)|indent(1000000) }}",
    "format_filter_width": "{{ '%0999999999d'|format(1) }}",
    "percent_width": "{{ '%0999999999d' % 1 }}",
    "percent_star_width": "{{ '%*d' % (999999999, 1) }}",
    "str_format_width": "{{ '{:>999999999}'.format(1) }}",
    "ljust_method": "{{ 'a'.ljust(999999999, 'b') }}",
    "zfill_method": "{{ '1'.zfill(999999999) }}",
    "replace_growth": "{{ ('a' * 10000).replace('a', 'b' * 10000) }}",
    "replace_filter_growth": "{{ ('a' * 10000)|replace('a', 'b' * 10000) }}",
    "join_growth": "{{ ('x' * 50000).join(['a'] * 50000) }}",
    "expandtabs": "{{ ('\t' * 10000).expandtabs(100000) }}",
    "lipsum": "{{ lipsum(1000000) }}",
    "recursive_macro": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "undefined": "{{ input.nope.deeper }}",
    "security": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "syntax": "{{ input.question ",
    "zero_division": "{{ 1 // 0 }}",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_templates_fail_fast_with_a_template_failure(name: str) -> None:
    started = time.perf_counter()
    with pytest.raises(TemplateFailure) as caught:
        render(HOSTILE[name], {"input": {"question": "q"}})
    elapsed = time.perf_counter() - started
    assert elapsed < 3.0, f"{name}: {elapsed:.2f}s"
    assert "template" in str(caught.value)


def test_the_limits_are_the_callers() -> None:
    small = TemplateLimits(max_chars=50, timeout_seconds=5.0, max_iterations=1000)
    assert render("{{ 'a' * 50 }}", {}, limits=small) == "a" * 50
    with pytest.raises(TemplateFailure, match="50 characters"):
        render("{{ 'a' * 51 }}", {}, limits=small)
    with pytest.raises(TemplateFailure, match="50 characters"):
        render("{% for i in range(60) %}a{% endfor %}", {}, limits=small)
    with pytest.raises(TemplateFailure, match="1000 loop iterations"):
        render(
            "{% for i in range(30) %}{% for j in range(40) %}{% endfor %}{% endfor %}x",
            {},
            limits=small,
        )


def test_the_deadline_stops_a_slow_template() -> None:
    limits = TemplateLimits(max_chars=10**6, timeout_seconds=0.3, max_iterations=10**9)
    started = time.perf_counter()
    with pytest.raises(TemplateFailure, match=r"0\.3s"):
        render(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            {},
            limits=limits,
        )
    assert time.perf_counter() - started < 2.0


def test_ordinary_templates_still_render() -> None:
    variables: dict[str, Any] = {
        "input": {"question": "How many days?", "tags": ["a", "b"]},
        "document": {"title": "Leave", "metadata": {"labels": "x,y"}},
    }
    assert render("{{ input.question }}", variables) == "How many days?"
    assert render("{{ document.title|upper }} {{ input.tags|join(', ') }}", variables) == (
        "LEAVE a, b"
    )
    assert render("{% for t in input.tags %}{{ loop.index }}{{ t }} {% endfor %}", variables) == (
        "1a 2b"
    )
    assert render("{{ '%05d'|format(42) }} {{ '{:>4}'.format(7) }} {{ 'ab' * 3 }}", {}) == (
        "00042    7 ababab"
    )
    assert render("{{ range(5)|list|length }} {{ range(10)[3] }} {{ 2 ** 10 }}", {}) == "5 3 1024"
    assert render("{{ 'x'.ljust(4) }}|{{ 'a b'.replace(' ', '-') }}", {}) == "x   |a-b"


# -- through the worker: a permanent failure, at once ---------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        HOSTILE["string_times_int"],
        HOSTILE["range_overflow"],
        HOSTILE["nested_loops_output"],
        HOSTILE["plus_doubling"],
        HOSTILE["recursive_macro"],
    ],
)
def test_a_hostile_query_template_fails_the_run_at_once(org: Org, template: str) -> None:  # noqa: F811
    org.write_agent(answerer(org.outbox, context={"query": template}))
    run_id = org.run("anything")
    started = time.monotonic()
    org.work()
    elapsed = time.monotonic() - started
    run = org.client.get(f"/v1/runs/{run_id}", headers=ADMIN).json()
    assert run["state"] == "failed", run
    assert run["attempts"] == 1  # never retried
    assert run["error"].startswith(("TemplateFailure:", "TemplateLimitError:")), run["error"]
    assert "template" in run["error"]
    assert elapsed < 10.0
