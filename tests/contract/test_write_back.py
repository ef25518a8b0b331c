"""Write-back: ``post_comment`` (the ``Commenter`` protocol) on the github and jira connectors.

Shipping an approved artifact posts it as a comment, and may post again after a crash
between posting and recording: the same idempotency key must never make a second comment.
Both connectors run against the stateful fakes of ``tests/fakes``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest

from connectors.base import Commenter
from connectors.errors import CredentialError, SourceError
from connectors.github.config import GitHubConfig
from connectors.github.connector import GitHubConnector
from connectors.github.write_back import ship_marker
from connectors.jira.adf import to_markdown
from connectors.jira.config import JiraConfig
from connectors.jira.connector import PROPERTY_KEY, JiraConnector, markdown_to_adf
from tests.contract.connector_contract import run, upserts
from tests.fakes import github as gh
from tests.fakes import jira as jr

BODY = "## Proposed fix\n\nRotate the proxy certificate.\nThen restart the gateway."

# -- github ---------------------------------------------------------------------------------


@pytest.fixture
def github(monkeypatch: pytest.MonkeyPatch) -> gh.FakeGitHub:
    monkeypatch.setenv(gh.TOKEN_ENV, gh.TOKEN)
    fake = gh.FakeGitHub()
    fake.repo("acme/handbook")
    fake.add_issue("acme/handbook", 7, "Proxy times out", "Since Monday.")
    return fake


def comments(fake: gh.FakeGitHub, number: int = 7) -> list[dict[str, Any]]:
    return fake.repos["acme/handbook"].comments[number]


def test_github_connector_is_a_commenter(github: gh.FakeGitHub) -> None:
    assert isinstance(gh.make_connector(github), Commenter)


def test_github_posts_one_comment_with_a_hidden_marker(github: gh.FakeGitHub) -> None:
    receipt = gh.make_connector(github).post_comment("acme/handbook/issues/7", BODY, "ship-1")
    (comment,) = comments(github)
    assert comment["body"] == BODY + "\n\n<!-- context-server:ship:ship-1 -->"
    assert comment["user"]["login"] == gh.BOT
    assert receipt.comment_id == str(comment["id"]) and not receipt.already_posted
    assert receipt.url == f"https://github.com/acme/handbook/issues/7#issuecomment-{comment['id']}"
    (post,) = github.calls("/issues/7/comments", "POST")
    assert post.url.path == "/api/v3/repos/acme/handbook/issues/7/comments"


def test_github_same_key_posts_nothing_and_another_key_posts_again(
    github: gh.FakeGitHub,
) -> None:
    first = gh.make_connector(github).post_comment("acme/handbook/issues/7", BODY, "ship-1")
    again = gh.make_connector(github).post_comment("acme/handbook/issues/7", BODY, "ship-1")
    assert again.already_posted and again.comment_id == first.comment_id
    assert again.url == first.url
    assert len(comments(github)) == 1 and len(github.calls("/comments", "POST")) == 1
    other = gh.make_connector(github).post_comment("acme/handbook/issues/7", "v2", "ship-2")
    assert not other.already_posted and other.comment_id != first.comment_id
    bodies = [c["body"] for c in comments(github)]
    assert bodies == [f"{BODY}\n\n{ship_marker('ship-1')}", f"v2\n\n{ship_marker('ship-2')}"]


def test_github_finds_the_key_on_a_later_page(github: gh.FakeGitHub) -> None:
    for n in range(3):
        github.add_comment("acme/handbook", 7, f"chatter {n}")
    first = gh.make_connector(github).post_comment("acme/handbook/issues/7", BODY, "ship-1")
    github.add_comment("acme/handbook", 7, "more chatter")
    github.requests.clear()
    again = gh.make_connector(github, per_page=2).post_comment(
        "acme/handbook/issues/7", BODY, "ship-1"
    )
    assert again.already_posted and again.comment_id == first.comment_id
    pages = github.calls("/issues/7/comments", "GET")
    assert [p.url.params.get("page", "1") for p in pages] == ["1", "2"]  # found: no page 3
    assert not github.calls("/comments", "POST")


def test_github_the_posted_comment_shows_in_the_next_sync(github: gh.FakeGitHub) -> None:
    _, checkpoint = run(gh.make_connector(github, reconcile_hours=24), None)
    github.now += timedelta(hours=1)
    gh.make_connector(github).post_comment("acme/handbook/issues/7", BODY, "ship-1")
    changes, _ = run(gh.make_connector(github, reconcile_hours=24), checkpoint)
    text = upserts(changes)["acme/handbook/issues/7"].read().decode()
    assert f"### {gh.BOT} commented on" in text and "Rotate the proxy certificate." in text


@pytest.mark.parametrize(
    ("external_id", "message"),
    [
        ("acme/handbook/pull/7", "not a GitHub issue id"),
        ("acme/handbook/issues/x", "not a GitHub issue id"),
        ("7", "not a GitHub issue id"),
        ("acme/other/issues/7", "not one of this source's repositories"),
        ("acme/handbook/issues/99", "cannot be found"),
    ],
)
def test_github_a_bad_or_unknown_issue_is_a_source_error(
    github: gh.FakeGitHub, external_id: str, message: str
) -> None:
    with pytest.raises(SourceError, match=message):
        gh.make_connector(github).post_comment(external_id, BODY, "ship-1")
    assert not github.calls("/comments", "POST")


def test_github_the_id_is_case_insensitive(github: gh.FakeGitHub) -> None:
    receipt = gh.make_connector(github).post_comment("ACME/Handbook/issues/7", BODY, "k")
    assert not receipt.already_posted and len(comments(github)) == 1


def test_github_a_bad_key_or_empty_body_is_refused(github: gh.FakeGitHub) -> None:
    connector = gh.make_connector(github)
    for key in ("", "has space", "a-->b", "x--y", "<b>"):
        with pytest.raises(SourceError, match="idempotency key"):
            connector.post_comment("acme/handbook/issues/7", BODY, key)
    with pytest.raises(SourceError, match="empty"):
        connector.post_comment("acme/handbook/issues/7", "  \n", "ship-1")
    with pytest.raises(SourceError, match="at most 65536"):
        connector.post_comment("acme/handbook/issues/7", "x" * 70000, "ship-1")
    assert not comments(github)


def test_github_403_on_post_says_the_token_may_lack_write_access(github: gh.FakeGitHub) -> None:
    github.repos["acme/handbook"].read_only = True
    with pytest.raises(CredentialError, match=r"403.*not accessible.*Issues: Read and write"):
        gh.make_connector(github).post_comment("acme/handbook/issues/7", BODY, "ship-1")
    assert not comments(github)


def test_github_429_then_success_posts_once(github: gh.FakeGitHub) -> None:
    github.write_faults = [httpx.Response(429, headers={"Retry-After": "4"}, json={})]
    sleeps = gh.Sleeps()
    receipt = gh.make_connector(github, sleep=sleeps).post_comment(
        "acme/handbook/issues/7", BODY, "ship-1"
    )
    assert not receipt.already_posted and len(comments(github)) == 1
    assert len(github.calls("/comments", "POST")) == 2 and sleeps == [4.0]


def test_github_a_5xx_after_the_comment_landed_does_not_post_twice(
    github: gh.FakeGitHub,
) -> None:
    original = github.handler

    def lost_answer(request: httpx.Request) -> httpx.Response:
        answer = original(request)
        if request.method == "POST" and len(github.calls("/comments", "POST")) == 1:
            return httpx.Response(502)  # GitHub made it, the gateway lost the answer
        return answer

    github.handler = lost_answer  # type: ignore[method-assign]
    receipt = gh.make_connector(github).post_comment("acme/handbook/issues/7", BODY, "ship-1")
    assert len(comments(github)) == 1 and len(github.calls("/comments", "POST")) == 1
    assert receipt.comment_id == str(comments(github)[0]["id"])
    assert not receipt.already_posted  # this call made it


def test_github_5xx_every_time_is_a_source_error(github: gh.FakeGitHub) -> None:
    github.write_faults = [httpx.Response(503) for _ in range(3)]
    with pytest.raises(SourceError, match="failed 3 times; last: 503"):
        gh.make_connector(github).post_comment("acme/handbook/issues/7", BODY, "ship-1")
    assert not comments(github)


def test_github_write_back_through_a_real_http_server(
    httpserver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(gh.TOKEN_ENV, gh.TOKEN)
    fake, base = gh.serve_github(httpserver)
    fake.repo("acme/handbook")
    fake.add_issue("acme/handbook", 7, "Proxy times out", "Since Monday.")
    config = GitHubConfig.model_validate(
        {"base_url": base, "repositories": ["acme/handbook"], "token": {"env": gh.TOKEN_ENV}}
    )
    connector = GitHubConnector(config)
    first = connector.post_comment("acme/handbook/issues/7", BODY, "ship-1")
    again = GitHubConnector(config).post_comment("acme/handbook/issues/7", BODY, "ship-1")
    assert not first.already_posted and again.already_posted
    assert again.comment_id == first.comment_id
    (comment,) = comments(fake)
    assert comment["body"] == BODY + "\n\n" + ship_marker("ship-1")


# -- jira -----------------------------------------------------------------------------------


@pytest.fixture
def jira(monkeypatch: pytest.MonkeyPatch) -> jr.FakeJira:
    monkeypatch.setenv(jr.TOKEN_ENV, jr.TOKEN)
    return jr.FakeJira()


def ours(fake: jr.FakeJira, issue_id: str) -> list[dict[str, Any]]:
    """The comments the connector posted (the fixture's issue has two of its own)."""
    return [c for c in fake.comments[issue_id] if c.get("properties")]


def test_jira_connector_is_a_commenter(jira: jr.FakeJira) -> None:
    assert isinstance(jr.make_connector(jira), Commenter)


def test_jira_posts_one_comment_with_the_property(jira: jr.FakeJira) -> None:
    issue = jira.add("Proxy times out", "Since Monday.")
    receipt = jr.make_connector(jira).post_comment(issue, BODY, "ship-1")
    (comment,) = ours(jira, issue)
    assert comment["properties"] == [{"key": PROPERTY_KEY, "value": {"idempotency_key": "ship-1"}}]
    assert comment["body"] == markdown_to_adf(BODY)
    assert to_markdown(comment["body"]) == (
        "## Proposed fix\n\nRotate the proxy certificate.  \nThen restart the gateway."
    )
    assert receipt.comment_id == comment["id"] and not receipt.already_posted
    key = jira.issues[issue]["key"]
    assert receipt.url == f"{jira.base}/browse/{key}?focusedCommentId={comment['id']}"


def test_jira_same_key_posts_nothing_and_another_key_posts_again(jira: jr.FakeJira) -> None:
    issue = jira.add("Proxy times out", "Since Monday.")
    first = jr.make_connector(jira).post_comment(issue, BODY, "ship-1")
    again = jr.make_connector(jira).post_comment(issue, BODY, "ship-1")
    assert again.already_posted and (again.comment_id, again.url) == (first.comment_id, first.url)
    assert len(ours(jira, issue)) == 1
    other = jr.make_connector(jira).post_comment(issue, "v2", "ship-2")
    assert not other.already_posted and other.comment_id != first.comment_id
    keys = [c["properties"][0]["value"]["idempotency_key"] for c in ours(jira, issue)]
    assert keys == ["ship-1", "ship-2"]
    posts = [p for m, p, _ in jira.log if m == "POST" and p.endswith("/comment")]
    assert len(posts) == 2


def test_jira_finds_the_key_on_a_later_page(jira: jr.FakeJira) -> None:
    issue = jira.add("Proxy times out", "Since Monday.")
    first = jr.make_connector(jira).post_comment(issue, BODY, "ship-1")
    for n in range(3):
        jira.add_comment(issue, jr.adf(f"chatter {n}"))
    jira.comment_page_cap = 2  # the fixture's 2 comments on page 1, ours on page 2
    jira.log.clear()
    again = jr.make_connector(jira).post_comment(issue, BODY, "ship-1")
    assert again.already_posted and again.comment_id == first.comment_id
    pages = [p for m, path, p in jira.log if path.endswith(f"/issue/{issue}/comment")]
    assert [(int(p["startAt"]), p["expand"]) for p in pages] == [
        (0, "properties"),
        (2, "properties"),
    ]
    assert not [m for m, _, _ in jira.log if m == "POST"]


def test_jira_reads_properties_one_by_one_when_the_listing_does_not_expand_them(
    jira: jr.FakeJira,
) -> None:
    issue = jira.add("Proxy times out", "Since Monday.")
    first = jr.make_connector(jira).post_comment(issue, BODY, "ship-1")
    jira.expand_properties = False
    again = jr.make_connector(jira).post_comment(issue, BODY, "ship-1")
    assert again.already_posted and again.comment_id == first.comment_id
    assert len(ours(jira, issue)) == 1
    asked = [p for m, p, _ in jira.log if "/properties/" in p]
    assert asked[-1] == f"{jr.API}/comment/{first.comment_id}/properties/{PROPERTY_KEY}"


def test_jira_the_posted_comment_shows_in_the_next_sync(jira: jr.FakeJira) -> None:
    issue = jira.add("Proxy times out", "Since Monday.")
    first, checkpoint = run(jr.make_connector(jira), None)
    jira.clock += timedelta(hours=1)
    jr.make_connector(jira).post_comment(issue, BODY, "ship-1")
    again, _ = run(jr.make_connector(jira), checkpoint)
    document = upserts(again)[issue]
    assert document.content_hash != upserts(first)[issue].content_hash
    assert "Rotate the proxy certificate." in document.read().decode()


@pytest.mark.parametrize(
    ("external_id", "message"),
    [
        ("ENG 1", "not a Jira issue id"),
        ("", "not a Jira issue id"),
        ("../10001", "not a Jira issue id"),
        ("99999", "does not exist or is not visible"),
        ("OPS-1", "not one of this source's projects"),
    ],
)
def test_jira_a_bad_or_unknown_issue_is_a_source_error(
    jira: jr.FakeJira, external_id: str, message: str
) -> None:
    jira.add("Proxy times out", "Since Monday.")
    jira.add_project("OPS", developers=["user:alice"])
    jira.add("Elsewhere", "x", project="OPS")
    with pytest.raises(SourceError, match=message):
        jr.make_connector(jira).post_comment(external_id, BODY, "ship-1")
    assert not [m for m, _, _ in jira.log if m == "POST"]


def test_jira_an_empty_key_or_body_is_refused(jira: jr.FakeJira) -> None:
    issue = jira.add("Proxy times out", "Since Monday.")
    with pytest.raises(SourceError, match="idempotency key is empty"):
        jr.make_connector(jira).post_comment(issue, BODY, " ")
    with pytest.raises(SourceError, match="body is empty"):
        jr.make_connector(jira).post_comment(issue, "\n\n", "ship-1")
    with pytest.raises(SourceError, match="at most 32767"):
        jr.make_connector(jira).post_comment(issue, "x" * 40000, "ship-1")
    assert not ours(jira, issue)


def test_jira_accepts_an_issue_key_too(jira: jr.FakeJira) -> None:
    issue = jira.add("Proxy times out", "Since Monday.")
    receipt = jr.make_connector(jira).post_comment("ENG-1", BODY, "ship-1")
    assert "/browse/ENG-1?" in str(receipt.url) and len(ours(jira, issue)) == 1


def test_jira_403_on_post_says_the_account_may_lack_permission(jira: jr.FakeJira) -> None:
    issue = jira.add("Proxy times out", "Since Monday.")
    jira.no_comment.add("ENG")
    with pytest.raises(CredentialError, match=r"403.*Add comments permission in project ENG"):
        jr.make_connector(jira).post_comment(issue, BODY, "ship-1")
    assert not ours(jira, issue)


def test_jira_429_then_success_posts_once(jira: jr.FakeJira) -> None:
    issue = jira.add("Proxy times out", "Since Monday.")
    jira.inject_writes = [(429, {"Retry-After": "6"})]
    sleeps: list[float] = []
    receipt = jr.make_connector(jira, sleeps).post_comment(issue, BODY, "ship-1")
    assert not receipt.already_posted and len(ours(jira, issue)) == 1 and sleeps == [6.0]


def test_jira_5xx_every_time_is_a_source_error(jira: jr.FakeJira) -> None:
    issue = jira.add("Proxy times out", "Since Monday.")
    jira.inject_writes = [(500, {}) for _ in range(3)]
    sleeps: list[float] = []
    with pytest.raises(SourceError, match="failed 3 times; last: 500"):
        jr.make_connector(jira, sleeps).post_comment(issue, BODY, "ship-1")
    assert not ours(jira, issue) and sleeps == [1.0, 2.0, 4.0]


def test_jira_write_back_through_a_real_http_server(
    httpserver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(jr.TOKEN_ENV, jr.TOKEN)
    fake, base = jr.serve_jira(httpserver)
    issue = fake.add("Proxy times out", "Since Monday.")
    config = JiraConfig.model_validate(
        {"base_url": base, "email": jr.EMAIL, "api_token": {"env": jr.TOKEN_ENV}}
    )
    first = JiraConnector(config).post_comment(issue, BODY, "ship-1")
    again = JiraConnector(config).post_comment(issue, BODY, "ship-1")
    assert not first.already_posted and again.already_posted
    assert again.comment_id == first.comment_id and len(ours(fake, issue)) == 1


def test_markdown_to_adf_makes_paragraphs_and_hard_breaks() -> None:
    assert markdown_to_adf("one\ntwo\n\n\n  \nthree  ") == {
        "type": "doc",
        "version": 1,
        "content": [
            {
                "type": "paragraph",
                "content": [
                    {"type": "text", "text": "one"},
                    {"type": "hardBreak"},
                    {"type": "text", "text": "two"},
                ],
            },
            {"type": "paragraph", "content": [{"type": "text", "text": "three"}]},
        ],
    }
