"""The github connector against a fake GitHub REST API (``httpx.MockTransport``).

The fake (``tests/fakes/github.py``) serves responses shaped like GitHub's
(fixtures/github/*.json, written from the REST reference): ``Link`` pagination,
``since``/``sort``/``direction`` on the issues list, pull requests inside the issues list,
``Date`` headers, collaborators, teams and members. It holds mutable state so the shared
contract can add, change, remove, restrict and break issues.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors import registry
from connectors.base import Acl, Checkpoint
from connectors.errors import ConfigError, CredentialError
from connectors.github.config import GitHubConfig
from connectors.github.connector import GitHubCheckpoint, GitHubConnector, RepositoryState
from tests.contract.connector_contract import ConnectorContract, deletes, failures, run, upserts
from tests.fakes.github import (
    TOKEN,
    TOKEN_ENV,
    FakeGitHub,
    Sleeps,
    iso,
    serve_github,
)
from tests.fakes.github import make_connector as make


def repo_state(checkpoint: Checkpoint, name: str) -> RepositoryState:
    assert isinstance(checkpoint, GitHubCheckpoint)
    return checkpoint.repositories[name]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeGitHub:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return FakeGitHub()


# -- the shared contract ------------------------------------------------------------------


class TestGitHubContract(ConnectorContract):
    @pytest.fixture(autouse=True)
    def _source(self, fake: FakeGitHub) -> None:
        self.fake = fake
        fake.repo("acme/handbook")
        self.numbers: dict[str, int] = {}

    def connector(self) -> Any:
        return make(self.fake, reconcile_hours=0)

    def external_id(self, name: str) -> str:
        return f"acme/handbook/issues/{self.numbers[name]}"

    def add(self, name: str, text: str) -> None:
        self.numbers[name] = len(self.numbers) + 1
        self.fake.add_issue("acme/handbook", self.numbers[name], name.upper(), text)

    def change(self, name: str, text: str) -> None:
        self.fake.update_issue("acme/handbook", self.numbers[name], body=text)

    def remove(self, name: str) -> None:
        self.fake.delete_issue("acme/handbook", self.numbers[name])

    def restrict(self, name: str, principal: str) -> Any:
        # GitHub's permissions are per repository: making it private restricts every issue.
        repo = self.fake.repos["acme/handbook"]
        repo.private = True
        repo.collaborators = [principal.removeprefix("user:")]
        return self.connector()

    def break_(self, name: str) -> None:
        self.fake.add_comment("acme/handbook", self.numbers[name], "unreachable")
        self.fake.repos["acme/handbook"].broken.add(self.numbers[name])


# -- the connector's own behaviour --------------------------------------------------------


def test_the_kind_is_registered() -> None:
    assert registry.connector_class("github") is GitHubConnector


def test_an_issue_becomes_a_markdown_document(fake: FakeGitHub) -> None:
    fake.repo("acme/handbook")
    fake.add_issue(
        "acme/handbook", 7, "Printer on fire", "It smokes.", labels=("bug", "urgent"), author="ana"
    )
    fake.add_comment("acme/handbook", 7, "Have you tried water?", login="ben")
    fake.add_comment("acme/handbook", 7, "Do not use water.", login="cy")
    fake.update_issue("acme/handbook", 7, state="closed")
    (doc,) = upserts(run(make(fake), None)[0]).values()
    assert doc.external_id == "acme/handbook/issues/7"
    assert doc.title == "Printer on fire"
    assert doc.url == "https://github.com/acme/handbook/issues/7"
    assert doc.author == "ana"
    assert doc.filename == "7.md" and doc.mime_type == "text/markdown"
    assert doc.updated_at == fake.now
    assert doc.metadata == {
        "state": "closed",
        "labels": "bug, urgent",
        "number": "7",
        "repository": "acme/handbook",
        "type": "issue",
    }
    text = doc.read().decode()
    assert text.startswith("# Printer on fire\n\nIt smokes.\n\n## Comments\n\n### ben commented on")
    assert text.index("Have you tried water?") < text.index("Do not use water.")
    assert doc.acl == Acl(public=True)
    assert doc.size == len(doc.read())


def test_pages_are_followed_through_the_link_header(fake: FakeGitHub) -> None:
    fake.repo("acme/handbook")
    for n in range(1, 6):
        fake.add_issue("acme/handbook", n, f"Issue {n}", f"body {n}")
    for i in range(5):
        fake.add_comment("acme/handbook", 3, f"comment {i}")
    docs = upserts(run(make(fake, per_page=2), None)[0])
    assert sorted(docs) == [f"acme/handbook/issues/{n}" for n in range(1, 6)]
    issue_pages = fake.calls("/repos/acme/handbook/issues")
    assert len(issue_pages) == 3
    assert issue_pages[0].url.params["per_page"] == "2"
    assert issue_pages[2].url.params["page"] == "3"
    assert len(fake.calls("/issues/3/comments")) == 3  # five comments, two a page
    text = docs["acme/handbook/issues/3"].read().decode()
    assert [f"comment {i}" in text for i in range(5)] == [True] * 5
    assert not fake.calls("/issues/1/comments")  # no comments: not asked


def test_pull_requests_are_skipped_unless_asked_for(fake: FakeGitHub) -> None:
    fake.repo("acme/handbook")
    fake.add_issue("acme/handbook", 1, "An issue", "text")
    fake.add_issue("acme/handbook", 2, "A pull request", "diff", pull_request=True)
    assert set(upserts(run(make(fake), None)[0])) == {"acme/handbook/issues/1"}
    docs = upserts(run(make(fake, include_pull_requests=True), None)[0])
    pr = docs["acme/handbook/issues/2"]
    assert pr.metadata["type"] == "pull_request"
    assert pr.url == "https://github.com/acme/handbook/pull/2"


def test_incremental_sync_asks_since_the_cursor_and_fetches_only_changes(
    fake: FakeGitHub,
) -> None:
    fake.repo("acme/handbook")
    for n in (1, 2, 3):
        fake.add_issue("acme/handbook", n, f"Issue {n}", f"body {n}")
        fake.add_comment("acme/handbook", n, f"first comment on {n}")
    connector = make(fake, reconcile_hours=24, overlap_seconds=120)
    first, checkpoint = run(connector, None)
    assert fake.calls("/issues")[0].url.params["sort"] == "created"
    cursor = repo_state(checkpoint, "acme/handbook").cursor
    assert cursor == fake.now

    fake.now += timedelta(hours=1)
    fake.add_comment("acme/handbook", 2, "a new comment")
    fake.delete_issue("acme/handbook", 3)
    fake.requests.clear()
    again, checkpoint = run(make(fake, reconcile_hours=24, overlap_seconds=120), checkpoint)
    (listing,) = fake.calls("/issues")
    assert listing.url.params["sort"] == "updated"
    assert listing.url.params["since"] == iso(cursor - timedelta(seconds=120))
    assert set(upserts(again)) == {"acme/handbook/issues/2"}
    changed = upserts(again)["acme/handbook/issues/2"]
    assert changed.content_hash != upserts(first)["acme/handbook/issues/2"].content_hash
    assert b"a new comment" in changed.read()
    assert [r.url.path for r in fake.calls("/comments")] == [
        "/api/v3/repos/acme/handbook/issues/2/comments"
    ]
    assert not deletes(again)  # no tombstones: found by the next reconcile

    fake.now += timedelta(hours=25)
    fake.requests.clear()
    later, _ = run(make(fake, reconcile_hours=24), checkpoint)
    assert fake.calls("/issues")[0].url.params["sort"] == "created"
    assert deletes(later) == {"acme/handbook/issues/3"}
    assert not fake.calls("/comments")  # unchanged issues are not read again
    assert {u.content_hash for u in upserts(later).values()} <= {
        u.document.content_hash for u in first + again if hasattr(u, "document")
    }


def test_a_mid_listing_update_keeps_the_cursor(fake: FakeGitHub) -> None:
    fake.repo("acme/handbook")
    for n in range(1, 6):
        fake.add_issue("acme/handbook", n, f"Issue {n}", "x")
    _, checkpoint = run(make(fake, reconcile_hours=24), None)
    before = repo_state(checkpoint, "acme/handbook").cursor
    fake.now += timedelta(hours=1)
    for n in range(1, 6):
        fake.update_issue("acme/handbook", n, body=f"edited {n}")

    def meanwhile() -> None:  # someone edits issue 1 while we read page 1
        fake.after_page = None
        fake.update_issue("acme/handbook", 1, body="edited again")

    fake.after_page = meanwhile
    again, after = run(make(fake, reconcile_hours=24, per_page=2), checkpoint)
    # Issue 1 moved to the end and pushed issue 3 onto page 1, which we had read: it was
    # skipped this time, so the window is listed again next time.
    assert "acme/handbook/issues/3" not in upserts(again)
    assert repo_state(after, "acme/handbook").cursor == before
    third, _ = run(make(fake, reconcile_hours=24, per_page=2), after)
    assert b"edited 3" in upserts(third)["acme/handbook/issues/3"].read()


def test_permission_change_keeps_the_hash_and_reaches_every_issue(fake: FakeGitHub) -> None:
    repo = fake.repo("acme/handbook")
    fake.add_issue("acme/handbook", 1, "One", "x")
    fake.add_issue("acme/handbook", 2, "Two", "y")
    fake.add_comment("acme/handbook", 2, "z")
    first, checkpoint = run(make(fake, reconcile_hours=24), None)
    repo.private = True
    repo.collaborators = ["ana", "dependabot[bot]"]
    repo.teams = ["core"]
    fake.requests.clear()
    again, _ = run(make(fake, reconcile_hours=24), checkpoint)
    before, after = upserts(first), upserts(again)
    assert set(after) == set(before)  # no issue changed, yet every one is re-listed
    for key, doc in after.items():
        assert doc.content_hash == before[key].content_hash
        assert doc.acl == Acl(users=("user:ana",), groups=("group:github-acme-core",))
        assert not doc.acl.grants({"user:zoe"})
    assert not fake.calls("/comments")  # unchanged: nothing re-read for a new ACL


def test_a_repository_whose_readers_cannot_be_listed_fails_closed(fake: FakeGitHub) -> None:
    secret = fake.repo("acme/secret", private=True)
    secret.forbid_collaborators = True
    fake.add_issue("acme/secret", 1, "Layoffs", "confidential")
    fake.repo("acme/handbook")
    fake.add_issue("acme/handbook", 1, "Hello", "public")
    changes, checkpoint = run(make(fake, ["acme/secret", "acme/handbook"]), None)
    assert set(upserts(changes)) == {"acme/handbook/issues/1"}
    bad = failures(changes)["acme/secret/"]
    assert bad.reason == "forbidden" and "push access" in bad.detail
    assert isinstance(checkpoint, GitHubCheckpoint)
    assert "acme/secret" not in checkpoint.repositories


def test_a_missing_repository_is_a_container_failure(fake: FakeGitHub) -> None:
    fake.repo("acme/handbook")
    fake.add_issue("acme/handbook", 1, "Hello", "public")
    changes, _ = run(make(fake, ["acme/gone", "acme/handbook"]), None)
    assert failures(changes)["acme/gone/"].reason == "not_found"
    assert set(upserts(changes)) == {"acme/handbook/issues/1"}
    with pytest.raises(ConfigError, match="acme/gone was not found"):
        make(fake, ["acme/gone"]).check()


def test_a_failed_issue_is_retried_by_the_next_incremental_sync(fake: FakeGitHub) -> None:
    repo = fake.repo("acme/handbook")
    fake.add_issue("acme/handbook", 1, "One", "x")
    _, checkpoint = run(make(fake, reconcile_hours=24), None)
    fake.now += timedelta(hours=1)
    fake.add_comment("acme/handbook", 1, "new")
    repo.broken.add(1)
    changes, checkpoint = run(make(fake, reconcile_hours=24), checkpoint)
    assert failures(changes)["acme/handbook/issues/1"].reason == "unreadable"
    repo.broken.clear()
    fake.now += timedelta(hours=1)
    changes, _ = run(make(fake, reconcile_hours=24), checkpoint)
    assert b"new" in upserts(changes)["acme/handbook/issues/1"].read()


def test_rate_limit_then_success_waits_as_told(fake: FakeGitHub) -> None:
    fake.repo("acme/handbook")
    fake.add_issue("acme/handbook", 1, "One", "x")
    fake.faults = [
        httpx.Response(429, headers={"Retry-After": "7"}, json={"message": "slow down"}),
    ]
    # GitHub's secondary rate limit is a 403 with Retry-After.
    fake.faults += [
        httpx.Response(
            403,
            headers={"X-RateLimit-Remaining": "0", "Retry-After": "3"},
            json={"message": "You have exceeded a secondary rate limit."},
        )
    ]
    sleeps = Sleeps()
    docs = upserts(run(make(fake, sleep=sleeps), None)[0])
    assert set(docs) == {"acme/handbook/issues/1"}
    assert sleeps == [7.0, 3.0]


def test_server_error_then_success_retries(fake: FakeGitHub) -> None:
    fake.repo("acme/handbook")
    fake.add_issue("acme/handbook", 1, "One", "x")
    fake.faults = [httpx.Response(502), httpx.Response(500)]
    sleeps = Sleeps()
    docs = upserts(run(make(fake, sleep=sleeps), None)[0])
    assert set(docs) == {"acme/handbook/issues/1"} and len(sleeps) == 2


def test_bad_credentials_are_a_clear_error(
    fake: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.repo("acme/handbook")
    monkeypatch.setenv(TOKEN_ENV, "ghp_wrong")
    with pytest.raises(CredentialError, match=r"refused the credentials \(401\).*Bad credentials"):
        make(fake).check()
    with pytest.raises(CredentialError, match="401"):
        run(make(fake), None)
    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(ConfigError, match=TOKEN_ENV):
        make(fake).check()


def test_check_passes_with_a_good_token(fake: FakeGitHub) -> None:
    fake.repo("acme/handbook")
    make(fake).check()
    assert [r.url.path for r in fake.requests] == [
        "/api/v3/rate_limit",
        "/api/v3/repos/acme/handbook",
    ]


def test_config_refuses_a_plain_token_and_bad_names() -> None:
    with pytest.raises(ValueError, match="never as the value itself"):
        GitHubConfig.model_validate({"repositories": ["a/b"], "token": "ghp_plaintext"})
    with pytest.raises(ValueError, match="owner/name"):
        GitHubConfig.model_validate({"repositories": ["just-a-name"], "token": {"env": "X"}})
    with pytest.raises(ValueError, match="twice"):
        GitHubConfig.model_validate({"repositories": ["a/b", "A/B"], "token": {"env": "X"}})
    with pytest.raises(ValueError):
        GitHubConfig.model_validate({"repositories": [], "token": {"env": "X"}})
    config = GitHubConfig.model_validate(
        {"repositories": ["huggingface/datasets"], "token": {"env": "GITHUB_TOKEN"}}
    )
    assert config.base_url == "https://api.github.com" and not config.include_pull_requests


def test_memberships_come_from_the_teams_with_access(fake: FakeGitHub) -> None:
    repo = fake.repo("acme/secret", private=True)
    repo.teams = ["core", "ops"]
    fake.team_members[("acme", "core")] = ["ana", "ben", "cy"]
    fake.team_members[("acme", "ops")] = ["cy"]
    fake.repo("acme/handbook").teams = ["everyone"]  # public: its teams grant nothing extra
    pairs = list(make(fake, ["acme/secret", "acme/handbook"], per_page=2).memberships())
    assert sorted(pairs) == [
        ("user:ana", "group:github-acme-core"),
        ("user:ben", "group:github-acme-core"),
        ("user:cy", "group:github-acme-core"),
        ("user:cy", "group:github-acme-ops"),
    ]
    assert len(fake.calls("/orgs/acme/teams/core/members")) == 2  # paginated


def test_list_ids_is_every_issue_with_its_acl(fake: FakeGitHub) -> None:
    repo = fake.repo("acme/secret", private=True)
    repo.collaborators = ["ana"]
    fake.add_issue("acme/secret", 1, "One", "x")
    fake.add_issue("acme/secret", 2, "PR", "y", pull_request=True)
    refs = list(make(fake, ["acme/secret"]).list_ids())
    assert [(r.external_id, r.acl) for r in refs] == [
        ("acme/secret/issues/1", Acl(users=("user:ana",)))
    ]
    assert not fake.calls("/comments")


def test_a_pagination_link_to_another_host_is_refused(fake: FakeGitHub) -> None:
    fake.repo("acme/handbook")
    fake.add_issue("acme/handbook", 1, "One", "x")
    fake.faults = [httpx.Response(200, json=fake._repo_json(fake.repos["acme/handbook"]))]
    fake.faults.append(
        httpx.Response(200, json=[], headers={"Link": '<https://evil.test/x?page=2>; rel="next"'})
    )
    changes, _ = run(make(fake), None)
    assert "evil.test" in failures(changes)["acme/handbook/"].detail


def test_the_checkpoint_round_trips(fake: FakeGitHub) -> None:
    repo = fake.repo("acme/handbook", private=True)
    repo.collaborators = ["ana"]
    fake.add_issue("acme/handbook", 1, "One", "x")
    _, checkpoint = run(make(fake), None)
    restored = GitHubCheckpoint.model_validate_json(checkpoint.model_dump_json())
    assert restored == checkpoint


# -- end to end: the real CLI against a real local HTTP server ------------------------------


@pytest.fixture
def served(httpserver: Any) -> tuple[FakeGitHub, str]:
    """The fake behind a real HTTP server (pytest-httpserver), under the same /api/v3."""
    return serve_github(httpserver)


@pytest.mark.model
def test_sync_and_search_through_the_cli(served: tuple[FakeGitHub, str], tmp_path: Path) -> None:
    fake, base = served
    secret = fake.repo("acme/secret", private=True)
    secret.collaborators = ["alice"]
    fake.add_issue(
        "acme/secret",
        1,
        "Payroll export fails",
        "The payroll export to the bank fails every Friday with a checksum error.",
    )
    fake.add_comment("acme/secret", 1, "The bank changed its checksum format in March.")
    fake.repo("acme/handbook")
    fake.add_issue("acme/handbook", 1, "Office hours", "The office in Lyon opens at nine.")
    (tmp_path / "github.yaml").write_text(
        "name: issues\nkind: github\nconfig:\n"
        f"  base_url: {base}\n"
        "  repositories: [acme/secret, acme/handbook]\n"
        "  token: {env: GH_E2E_TOKEN}\n"
    )
    (tmp_path / "principals.yaml").write_text("groups:\n  staff: [user:alice, user:bob]\n")
    env = dict(os.environ)
    env.update(CONTEXT_SERVER_HOME=str(tmp_path / "home"), GH_E2E_TOKEN=TOKEN)
    env.pop("CONTEXT_SERVER_DATABASE_URL", None)
    env.pop("CONTEXT_SERVER_QDRANT_URL", None)
    cli = Path(sys.executable).parent / "context-server"

    def run_cli(*args: str) -> dict[str, Any]:
        proc = subprocess.run(
            [str(cli), *args, "--json"], env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr + proc.stdout
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    run_cli("principals", "load", str(tmp_path / "principals.yaml"))
    run_cli("sources", "add", str(tmp_path / "github.yaml"))
    report = run_cli("sync", "issues")
    assert (report["upserted"], report["failed"]) == (2, 0), report

    def titles(who: str) -> list[str]:
        found = run_cli("search", "bank checksum error payroll", "--as", who, "-k", "3")
        return [str(r["title"]) for r in found["results"]]

    assert titles("user:alice")[0] == "Payroll export fails"
    assert "Payroll export fails" not in titles("user:bob")
    assert "Office hours" in titles("user:bob")


def test_one_malformed_issue_is_a_failure_not_a_failed_sync(fake: FakeGitHub) -> None:
    fake.repo("acme/handbook")
    for number in (1, 2, 3):
        fake.add_issue("acme/handbook", number, f"Issue {number}", "text")
    repo = fake.repos["acme/handbook"]
    repo.issues[2]["updated_at"] = "last tuesday"  # not a timestamp
    changes, _ = run(make(fake), None)
    assert set(upserts(changes)) == {"acme/handbook/issues/1", "acme/handbook/issues/3"}
    assert {k: f.reason for k, f in failures(changes).items()} == {
        "acme/handbook/issues/2": "malformed"
    }
