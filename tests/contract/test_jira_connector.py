"""The jira connector against the shared contract and a fake Jira Cloud REST API v3.

``FakeJira`` (``tests/fakes/jira.py``) holds mutable state (issues, project roles, security
levels, groups) and answers the endpoints the connector calls, in the documented shapes
(``fixtures/jira/*.json``): the
enhanced search ``POST /rest/api/3/search/jql`` with ``nextPageToken``, the classic
``POST /rest/api/3/search`` with ``startAt``/``total``, and the ``startAt``/``isLast`` lists.
It evaluates the small JQL subset the connector writes, reading times in the API user's zone
with minute resolution, as Jira does. It is served through ``httpx.MockTransport`` and, for
the end-to-end test, through a real local HTTP server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from connectors import registry
from connectors.base import Acl
from connectors.errors import ConfigError, CredentialError
from connectors.jira.access import account_slug, group_principal
from connectors.jira.adf import to_markdown
from connectors.jira.config import JiraConfig
from connectors.jira.connector import JiraConnector
from tests.contract.connector_contract import ConnectorContract, deletes, failures, run, upserts
from tests.fakes.jira import EMAIL, TOKEN, TOKEN_ENV, FakeJira, adf, fixture, serve_jira
from tests.fakes.jira import make_connector as make


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


# -- the shared contract -----------------------------------------------------------------


class TestJiraContract(ConnectorContract):
    @pytest.fixture(autouse=True)
    def _fake(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(TOKEN_ENV, TOKEN)
        self.fake = FakeJira()
        self.ids: dict[str, str] = {}

    def connector(self) -> Any:
        return make(self.fake)

    def external_id(self, name: str) -> str:
        return self.ids[name]

    def add(self, name: str, text: str) -> None:
        self.ids[name] = self.fake.add(name.upper(), text)

    def change(self, name: str, text: str) -> None:
        self.fake.update(self.ids[name], description=adf(text))

    def remove(self, name: str) -> None:
        del self.fake.issues[self.ids[name]]

    def restrict(self, name: str, principal: str) -> Any:
        account = principal.split(":", 1)[1]
        # a level holder reads the issue only if they may also browse the project
        self.fake.roles["ENG"]["Developers"][1].append(self.fake.actor(principal))
        self.fake.set_level("10100", [{"type": "user", "parameter": account, "value": account}])
        self.fake.update(self.ids[name], security=self.fake.security("10100"))
        return self.connector()

    def break_(self, name: str) -> None:
        self.fake.broken.add(self.ids[name])


# -- documents -----------------------------------------------------------------------------


def test_the_kind_is_registered() -> None:
    assert registry.connector_class("jira") is JiraConnector


def test_adf_becomes_markdown() -> None:
    markdown = to_markdown(fixture("issue.json")["fields"]["description"])
    assert markdown == (
        "## Steps\n\n"
        "1. Open the login page\n"
        "2. Wait **30 seconds**\n\n"
        "@Mia Krystof saw it too, see [the runbook](https://wiki.example.com/runbook)  \n"
        "Config key `proxy.timeout`\n\n"
        "```bash\ncurl -v https://login.example.com\necho done\n```\n\n"
        "- outer\n  - inner\n\n"
        "> **Warning:** Production only\n\n"
        "| Env | Result |\n|---|---|\n| prod | timeout |\n\n"
        "[attachment: screenshot.png]\n\n"
        "---\n\n"
        "😄 done on 2024-01-01 [IN REVIEW] <https://your-domain.atlassian.net/browse/ENG-2>"
    )


def test_adf_edge_cases() -> None:
    assert to_markdown(None) == ""
    assert to_markdown("  plain wiki text  ") == "plain wiki text"
    assert to_markdown({"type": "doc", "version": 1, "content": []}) == ""
    future = {
        "type": "doc",
        "content": [
            {"type": "someFutureBlock", "content": [adf("kept text")["content"][0]]},
            {
                "type": "taskList",
                "content": [
                    {
                        "type": "taskItem",
                        "attrs": {"state": "DONE"},
                        "content": [{"type": "text", "text": "ship it"}],
                    },
                    {
                        "type": "taskItem",
                        "attrs": {"state": "TODO"},
                        "content": [{"type": "text", "text": "tell people"}],
                    },
                ],
            },
            {"type": "blockquote", "content": [adf("quoted")["content"][0]]},
            {"type": "heading", "attrs": {"level": 9}, "content": [{"type": "text", "text": "H"}]},
            {"type": "paragraph", "content": [{"type": "mention", "attrs": {"id": "abc"}}]},
        ],
    }
    assert to_markdown(future) == (
        "kept text\n\n- [x] ship it\n- [ ] tell people\n\n> quoted\n\n# H\n\n@abc"
    )


def test_an_issue_becomes_a_markdown_document() -> None:
    fake = FakeJira()
    issue_id = fake.add("Login page times out", "ignored")
    fake.issues[issue_id]["fields"]["description"] = fixture("issue.json")["fields"]["description"]
    fake.issues[issue_id]["fields"]["labels"] = ["login", "proxy"]
    (doc,) = upserts(run(make(fake), None)[0]).values()
    text = doc.read().decode()
    assert doc.external_id == issue_id
    assert doc.title == "ENG-1: Login page times out"
    assert doc.filename == "ENG-1.md" and doc.mime_type == "text/markdown"
    assert doc.url == "https://acme.atlassian.net/browse/ENG-1"
    assert doc.author == "Mia Krystof"  # the reporter's displayName
    assert doc.updated_at == datetime.fromisoformat(fake.issues[issue_id]["fields"]["updated"])
    assert doc.metadata == {
        "key": "ENG-1",
        "project": "ENG",
        "status": "In Progress",
        "issuetype": "Bug",
        "priority": "High",
        "labels": "login, proxy",
        "assignee": "Bob Lee",
    }
    assert text.startswith("# ENG-1: Login page times out\n\n## Steps\n\n1. Open the login page")
    assert "## Comments\n\n### Mia Krystof, 2024-01-02\n\nReproduced on staging." in text
    assert "vault" not in text  # a comment restricted to a role is left out
    assert doc.size == len(doc.read())


def test_comments_beyond_the_inline_page_are_fetched() -> None:
    fake = FakeJira()
    issue_id = fake.add("Busy", "many comments")
    template = fake.comments[issue_id][0]
    fake.comments[issue_id] = [
        {**template, "id": str(n), "body": adf(f"comment number {n}")} for n in range(130)
    ]
    fake.inline_comments = 5
    (doc,) = upserts(run(make(fake), None)[0]).values()
    text = doc.read().decode()
    assert "comment number 0\n" in text and "comment number 129\n" in text
    assert text.count("### Mia Krystof") == 130
    starts = [int(p["startAt"]) for m, path, p in fake.log if path.endswith("/comment")]
    assert starts == [5, 105]


def test_a_status_change_changes_the_hash_and_metadata() -> None:
    fake = FakeJira()
    issue_id = fake.add("S", "same text")
    first, checkpoint = run(make(fake), None)
    fake.update(issue_id, status={"name": "Done", "id": "5"})
    again, _ = run(make(fake), checkpoint)
    assert upserts(again)[issue_id].content_hash != upserts(first)[issue_id].content_hash
    assert upserts(again)[issue_id].metadata["status"] == "Done"


# -- pagination and incremental queries ----------------------------------------------------


@pytest.mark.parametrize("search_api", ["jql", "classic"])
def test_pagination_across_several_pages(search_api: str) -> None:
    fake = FakeJira()
    ids = [fake.add(f"issue {n}", f"text {n}") for n in range(7)]
    fake.page_cap = 3
    changes, checkpoint = run(make(fake, search_api=search_api, page_size=50), None)
    assert list(upserts(changes)) == ids  # ORDER BY updated ASC, every page
    searches = [
        p
        for m, path, p in fake.log
        if path.endswith("/search" + ("/jql" if search_api == "jql" else ""))
    ]
    assert len(searches) == 3
    if search_api == "jql":
        assert "nextPageToken" not in searches[0] and searches[1]["nextPageToken"]
    else:
        assert [p["startAt"] for p in searches] == [0, 3, 6]
    assert set(checkpoint.issues) == set(ids)


def test_incremental_query_uses_the_users_zone_and_an_overlap() -> None:
    fake = FakeJira()
    fake.add("a", "x")  # updated 08:03 UTC = 09:03 in Paris
    _, checkpoint = run(make(fake), None)
    assert checkpoint.cursor == datetime(2024, 1, 15, 8, 3, tzinfo=UTC)
    fake.log.clear()
    changes, after = run(make(fake, overlap_minutes=5), checkpoint)
    (search,) = [
        p for m, path, p in fake.log if path.endswith("/search/jql") and "comment" in p["fields"]
    ]
    assert search["jql"] == (
        '(project in ("ENG")) AND (updated >= "2024/01/15 08:58") ORDER BY updated ASC'
    )
    assert len(upserts(changes)) == 1  # inside the overlap: re-upserted, unchanged
    listing = [
        p for m, path, p in fake.log if path.endswith("/search/jql") and p["fields"] == ["key"]
    ]
    assert listing and listing[0]["maxResults"] == 5000
    assert after.cursor == checkpoint.cursor


def test_extra_jql_and_the_scope() -> None:
    fake = FakeJira()
    fake.add_project("OPS", developers=["user:ops"])
    keep = fake.add("keep", "x", labels=["customer"])
    fake.add("skip", "y")
    other = fake.add("other project", "z", project="OPS", labels=["customer"])
    docs = upserts(run(make(fake, projects=[], jql="labels = customer"), None)[0])
    assert set(docs) == {keep, other}
    assert docs[other].acl == Acl.of(["user:ops", "user:admin"])


def test_an_issue_moved_out_of_scope_is_deleted() -> None:
    fake = FakeJira()
    fake.add_project("OPS", developers=["user:ops"])
    a, b = fake.add("a", "x"), fake.add("b", "y")
    _, checkpoint = run(make(fake), None)
    fake.update(b, project={"key": "OPS", "id": "10001", "name": "OPS"})
    changes, after = run(make(fake), checkpoint)
    assert deletes(changes) == {b} and set(after.issues) == {a}


def test_a_failed_issue_is_retried_by_id_until_it_reads() -> None:
    fake = FakeJira()
    a = fake.add("a", "x")
    fake.broken.add(a)
    changes, checkpoint = run(make(fake), None)
    assert failures(changes)[a].reason == "unreadable" and checkpoint.retry == [a]
    fake.broken.clear()
    fake.clock += timedelta(hours=5)
    fake.add("later", "y")  # moves the cursor far past a's update
    changes, checkpoint = run(make(fake), checkpoint)
    assert a in upserts(changes) and checkpoint.retry == []


# -- ACLs ----------------------------------------------------------------------------------


def test_project_roles_become_the_acl() -> None:
    fake = FakeJira()
    fake.roles["ENG"]["Developers"][1].append(
        fake.actor("user:557058:f58131cb-b67d-43c7-b30d-6b58d40bd077")
    )
    issue = fake.add("a", "x")
    doc = upserts(run(make(fake), None)[0])[issue]
    assert doc.acl == Acl.of(
        [
            "group:jira-jira-developers",
            "user:alice",
            "user:admin",
            "user:557058_f58131cb-b67d-43c7-b30d-6b58d40bd077",
        ]
    )
    only_devs = upserts(run(make(fake, browse_roles=["Developers"]), None)[0])[issue]
    assert "user:admin" not in only_devs.acl.users


def test_email_principals_look_users_up_and_drop_hidden_addresses() -> None:
    fake = FakeJira()
    fake.roles["ENG"]["Developers"] = (
        "10360",
        [
            fake.actor("user:5b10ac8d82e05b22cc7d4ef5"),
            fake.actor("user:557058:f58131cb-b67d-43c7-b30d-6b58d40bd077"),
        ],
    )
    fake.roles["ENG"].pop("Administrators")
    issue = fake.add("a", "x")
    doc = upserts(run(make(fake, user_principal="email"), None)[0])[issue]
    assert doc.acl == Acl.of(["user:bob@example.com"])


def test_hidden_roles_fail_closed_unless_configured() -> None:
    fake = FakeJira()
    fake.hidden_roles.add("ENG")
    issue = fake.add("a", "x")
    doc = upserts(run(make(fake), None)[0])[issue]
    assert doc.acl == Acl() and not doc.acl.grants({"user:alice"})
    mapped = make(fake, project_acls={"ENG": ["group:engineering"]})
    assert upserts(run(mapped, None)[0])[issue].acl == Acl.of(["group:engineering"])


def test_a_security_level_narrows_to_its_holders_who_may_browse() -> None:
    fake = FakeJira()
    fake.set_level(
        "10100", [m["holder"] for m in fixture("level_members.json")["values"]], name="Security"
    )
    fake.set_level("10200", [{"type": "projectRole", "parameter": "10002", "value": "10002"}])
    # Browsers of ENG: group:jira-developers, user:alice, user:admin. A holder reads the
    # issue only if they browse too: directly, or through a group on either side.
    fake.roles["ENG"]["Developers"][1].append(fake.actor("user:5b10ac8d82e05b22cc7d4ef5"))
    fake.groups["jira-developers"][1].append("5b10a2844c20165700ede21g")  # the reporter
    fake.groups["security-team"] = ("3dd4c7a4-5bc8-4a50-a2c3-01b2d4dd5a47", ["alice", "mallory"])
    secret = fake.add("secret", "x", security=fake.security("10100"))
    admins = fake.add("admins", "y", security=fake.security("10200"))
    docs = upserts(run(make(fake), None)[0])
    assert docs[secret].acl == Acl.of(
        [
            "user:5b10ac8d82e05b22cc7d4ef5",  # a user holder who is a role actor
            "user:5b10a2844c20165700ede21g",  # the reporter holder, a developer by group
            "user:alice",  # in the holder group security-team, and a role actor
        ]
    )
    assert not docs[secret].acl.grants({"user:mallory", "group:jira-security-team"})
    assert docs[admins].acl == Acl.of(["user:admin"])


def test_an_unknown_security_level_is_readable_by_nobody_unless_mapped() -> None:
    fake = FakeJira()
    fake.set_level("10300", [{"type": "group", "parameter": "hr", "value": "gid-hr"}], name="HR")
    fake.hidden_levels.add("10300")
    issue = fake.add("salaries", "x", security=fake.security("10300"))
    doc = upserts(run(make(fake), None)[0])[issue]
    assert doc.acl == Acl()
    developers = "group:jira-jira-developers"  # the Jira group jira-developers, a browser
    mapped = make(fake, security_levels={"HR": [developers]})
    assert upserts(run(mapped, None)[0])[issue].acl == Acl.of([developers])


def test_a_role_change_alone_updates_acls_without_changing_hashes() -> None:
    fake = FakeJira()
    a, b = fake.add("a", "x"), fake.add("b", "y")
    first, checkpoint = run(make(fake), None)
    fake.clock += timedelta(hours=2)  # the issues themselves are not updated
    fake.roles["ENG"]["Developers"][1].append(fake.actor("user:zoe"))
    again, after = run(make(fake), checkpoint)
    for issue in (a, b):
        assert upserts(again)[issue].content_hash == upserts(first)[issue].content_hash
        assert upserts(again)[issue].acl.grants({"user:zoe"})
    fake.log.clear()
    run(make(fake), after)
    (query,) = [p["jql"] for _, path, p in fake.log if "comment" in p.get("fields", [])]
    assert query.count("project in") == 1  # the ACL is as recorded: no re-listing


def test_a_security_level_change_relists_its_issues() -> None:
    fake = FakeJira()
    fake.set_level("10100", [{"type": "user", "parameter": "amy", "value": "amy"}])
    fake.groups["jira-developers"][1].extend(["amy", "zoe"])  # both may browse ENG
    issue = fake.add("s", "x", security=fake.security("10100"))
    _, checkpoint = run(make(fake), None)
    fake.clock += timedelta(hours=2)
    fake.levels["10100"].append({"type": "user", "parameter": "zoe", "value": "zoe"})
    again, _ = run(make(fake), checkpoint)
    assert upserts(again)[issue].acl == Acl.of(["user:amy", "user:zoe"])


def test_list_ids_carries_acls() -> None:
    fake = FakeJira()
    issue = fake.add("a", "x")
    (ref,) = make(fake).list_ids()
    assert ref.external_id == issue and ref.acl.grants({"user:alice"})
    assert ref.version == fake.issues[issue]["fields"]["updated"]


def test_principal_names() -> None:
    assert account_slug("557058:f58131cb-b67d") == "557058_f58131cb-b67d"
    assert group_principal("Jira Software Users") == "group:jira-jira-software-users"
    assert group_principal("site-admins") == "group:jira-site-admins"


# -- groups --------------------------------------------------------------------------------


def test_memberships_page_through_group_members() -> None:
    fake = FakeJira()
    fake.groups["jira-developers"] = ("gid-jira-developers", [f"dev{n}" for n in range(60)])
    fake.add("a", "x")
    connector = make(fake)
    run(connector, None)
    pairs = set(connector.memberships())
    assert len(pairs) == 60
    assert ("user:dev59", "group:jira-jira-developers") in pairs
    pages = [p for m, path, p in fake.log if path.endswith("/group/member")]
    assert [int(p["startAt"]) for p in pages] == [0, 50]
    assert all(p["groupId"] == "gid-jira-developers" for p in pages)
    # A fresh connector (no sync yet) finds the configured projects' groups itself.
    assert set(make(fake).memberships()) == pairs


# -- resilience and credentials ------------------------------------------------------------


def test_429_then_success_waits_as_told() -> None:
    fake = FakeJira()
    fake.add("a", "x")
    fake.inject = [(429, {"Retry-After": "7"})]
    sleeps: list[float] = []
    changes, _ = run(make(fake, sleeps), None)
    assert len(upserts(changes)) == 1 and sleeps == [7.0]


def test_500_then_success_backs_off() -> None:
    fake = FakeJira()
    fake.add("a", "x")
    fake.inject = [(500, {}), (503, {})]
    sleeps: list[float] = []
    changes, _ = run(make(fake, sleeps), None)
    assert len(upserts(changes)) == 1 and len(sleeps) == 2


def test_bad_credentials_are_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeJira()
    monkeypatch.setenv(TOKEN_ENV, "wrong")
    with pytest.raises(CredentialError, match="check email and api_token"):
        make(fake).check()
    with pytest.raises(CredentialError, match="401"):
        run(make(fake), None)


def test_check_names_a_missing_project() -> None:
    fake = FakeJira()
    make(fake).check()
    with pytest.raises(ConfigError, match="NOPE"):
        make(fake, projects=["ENG", "NOPE"]).check()


def test_bearer_token_is_sent() -> None:
    seen: list[str | None] = []

    def respond(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(200, json=fixture("myself.json"))

    config = JiraConfig(
        base_url="https://api.atlassian.com/ex/jira/abc",
        site_url="https://acme.atlassian.net",
        token={"env": TOKEN_ENV},
    )  # type: ignore[arg-type]
    JiraConnector(config, transport=httpx.MockTransport(respond)).check()
    assert seen == [f"Bearer {TOKEN}"]
    assert config.browse_url == "https://acme.atlassian.net"


def test_config_refuses_plain_tokens_and_bad_values() -> None:
    base = {"base_url": "https://acme.atlassian.net", "email": EMAIL}
    with pytest.raises(ValidationError, match="reference"):
        JiraConfig.model_validate({**base, "api_token": "plain-secret"})
    with pytest.raises(ValidationError, match="reference"):
        JiraConfig.model_validate({"base_url": base["base_url"], "token": "plain-secret"})
    with pytest.raises(ValidationError, match="both email and api_token"):
        JiraConfig.model_validate(base)
    with pytest.raises(ValidationError, match="either"):
        JiraConfig.model_validate({**base, "api_token": {"env": "A"}, "token": {"env": "B"}})
    ok = {**base, "api_token": {"env": "A"}}
    with pytest.raises(ValidationError, match="ORDER BY"):
        JiraConfig.model_validate({**ok, "jql": "project = X order by created"})
    with pytest.raises(ValidationError, match="project key"):
        JiraConfig.model_validate({**ok, "projects": ["eng"]})
    with pytest.raises(ValidationError):
        JiraConfig.model_validate({**ok, "project_acls": {"ENG": ["engineers"]}})
    with pytest.raises(ValidationError, match="http"):
        JiraConfig.model_validate({**ok, "base_url": "acme.atlassian.net"})


def test_the_readme_documents_every_config_key() -> None:
    readme = (Path(__file__).parents[2] / "connectors" / "jira" / "README.md").read_text()
    for name in JiraConfig.model_fields:
        assert f"`{name}`" in readme, name


# -- end to end: the real CLI against a real local HTTP server ---------------------------


@pytest.mark.model
def test_cli_syncs_a_local_jira_and_searches_with_acls(tmp_path: Path, httpserver: Any) -> None:
    fake, _ = serve_jira(httpserver)
    fake.groups["jira-developers"] = ("gid-jira-developers", ["bob", "carol"])
    fake.add("Payroll export fails", "The payroll export to the bank fails every Friday night.")
    # carol holds the level and browses ENG (a developer); erin holds it but may not browse
    fake.set_level(
        "10100",
        [
            {"type": "user", "parameter": "carol", "value": "carol"},
            {"type": "user", "parameter": "erin", "value": "erin"},
        ],
    )
    fake.add(
        "Office plants", "Water the office plants on Mondays.", security=fake.security("10100")
    )
    (tmp_path / "jira.yaml").write_text(
        "name: tickets\nkind: jira\nconfig:\n"
        f"  base_url: {fake.base}\n  email: {EMAIL}\n"
        f"  api_token: {{env: {TOKEN_ENV}}}\n  projects: [ENG]\n"
    )
    (tmp_path / "principals.yaml").write_text("groups:\n  staff: [user:dave]\n")
    env = {**os.environ, "CONTEXT_SERVER_HOME": str(tmp_path / "home"), TOKEN_ENV: TOKEN}
    env.pop("CONTEXT_SERVER_DATABASE_URL", None)
    env.pop("CONTEXT_SERVER_QDRANT_URL", None)
    binary = str(Path(sys.executable).parent / "context-server")

    def cli(*args: str) -> Any:
        proc = subprocess.run([binary, *args], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        return json.loads(proc.stdout)

    cli("principals", "load", str(tmp_path / "principals.yaml"), "--json")
    cli("sources", "add", str(tmp_path / "jira.yaml"), "--json")
    report = cli("sync", "tickets", "--json")
    assert report["upserted"] == 2 and report["failed"] == 0

    def titles(query: str, who: str) -> list[str]:
        found = cli("search", query, "--as", who, "-k", "5", "--json")
        results = found["results"] if isinstance(found, dict) else found
        return [r["title"] for r in results]

    payroll = "ENG-1: Payroll export fails"
    assert payroll in titles("payroll export bank", "user:bob")  # via the synced group
    assert payroll in titles("payroll export bank", "user:alice")  # a role actor
    assert payroll not in titles("payroll export bank", "user:dave")
    assert "ENG-2: Office plants" in titles("office plants", "user:carol")
    assert "ENG-2: Office plants" not in titles("office plants", "user:alice")
    assert "ENG-2: Office plants" not in titles("office plants", "user:erin")
