"""The markdown_wiki connector against the shared contract, plus its own rules: page URLs,
link rewriting, front matter, fail-closed ACLs, incremental sync and the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from connectors import registry
from connectors.base import Acl, SourceDocument
from connectors.errors import ConfigError
from connectors.filesystem.config import AclRule
from connectors.markdown_wiki.config import MarkdownWikiConfig
from connectors.markdown_wiki.connector import MarkdownWikiConnector
from connectors.markdown_wiki.pages import Site, render
from tests.contract.connector_contract import ConnectorContract, deletes, failures, run, upserts

BASE = "https://handbook.example.com"
README = Path(__file__).resolve().parents[2] / "connectors" / "markdown_wiki" / "README.md"


def _touch(path: Path) -> None:
    """Bump mtime past the file system's timestamp granularity."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))


def _tree(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def _wiki(root: Path, **config: Any) -> MarkdownWikiConnector:
    config.setdefault("base_url", BASE)
    return MarkdownWikiConnector(MarkdownWikiConfig(root=root, **config))


def _docs(connector: MarkdownWikiConnector) -> dict[str, SourceDocument]:
    return upserts(run(connector, None)[0])


class TestMarkdownWikiContract(ConnectorContract):
    @pytest.fixture(autouse=True)
    def _root(self, tmp_path: Path) -> None:
        self.root = tmp_path / "wiki"
        self.root.mkdir()
        self.rules = [AclRule(glob="**", allow=["group:everyone"])]

    def connector(self) -> Any:
        return _wiki(self.root, acl_rules=self.rules)

    def external_id(self, name: str) -> str:
        return f"{name}.md"

    def add(self, name: str, text: str) -> None:
        (self.root / f"{name}.md").write_text(f"---\ntitle: Page {name}\n---\n{text}\n")

    def change(self, name: str, text: str) -> None:
        self.add(name, text)
        _touch(self.root / f"{name}.md")

    def remove(self, name: str) -> None:
        (self.root / f"{name}.md").unlink()

    def restrict(self, name: str, principal: str) -> Any:
        self.rules = [AclRule(glob=f"{name}.md", allow=[principal]), *self.rules]
        return self.connector()

    def break_(self, name: str) -> None:
        (self.root / f"{name}.md").write_bytes(b"# caf\xe9 latin-1, not UTF-8\n")
        _touch(self.root / f"{name}.md")


# -- page URLs and links ------------------------------------------------------------------


def test_page_urls() -> None:
    site = Site(BASE, ("index", "README"))
    assert site.url_for("engineering/onboarding.md") == f"{BASE}/engineering/onboarding"
    assert site.url_for("engineering/index.md") == f"{BASE}/engineering"
    assert site.url_for("engineering/README.md") == f"{BASE}/engineering"
    assert site.url_for("index.md") == f"{BASE}/"
    assert site.url_for("notes/old page.markdown") == f"{BASE}/notes/old%20page"
    assert site.url_for("img/logo.png") == f"{BASE}/img/logo.png"


def test_relative_links_become_page_urls() -> None:
    body = (
        "# Onboarding\n\n"
        "See [people](../people/index.md), [foo](foo.md#setup), [here](#first-week), "
        "[root](/company/values.md), [folder](../people/), [tools](./tools) and "
        "[ext](https://example.org/a.md), [mail](mailto:hr@example.com).\n\n"
        '![diagram](img/flow.png "Flow")\n\n'
        "[ref]: ../handbook/editing.md#how\n"
        "[^1]: a footnote, not a link\n\n"
        '<a href="../people/team.md" class="x">team</a>\n'
    )
    text = render(body.encode(), "engineering/onboarding.md", Site(BASE)).text
    assert f"[people]({BASE}/people)" in text
    assert f"[foo]({BASE}/engineering/foo#setup)" in text
    assert f"[here]({BASE}/engineering/onboarding#first-week)" in text
    assert f"[root]({BASE}/company/values)" in text
    assert f"[folder]({BASE}/people)" in text
    assert f"[tools]({BASE}/engineering/tools)" in text
    assert "[ext](https://example.org/a.md)" in text
    assert "[mail](mailto:hr@example.com)" in text
    assert f'![diagram]({BASE}/engineering/img/flow.png "Flow")' in text
    assert f"[ref]: {BASE}/handbook/editing#how" in text
    assert "[^1]: a footnote, not a link" in text
    assert f'<a href="{BASE}/people/team" class="x">' in text


def test_links_in_code_are_left_alone() -> None:
    body = (
        "# Code\n\nUse `[x](y.md)` inline.\n\n"
        "```markdown\n[a](b.md)\n```\n\n"
        "~~~~\n[c](d.md)\n~~~~\n\n"
        "After [e](f.md).\n"
    )
    text = render(body.encode(), "p.md", Site(BASE)).text
    assert "`[x](y.md)`" in text and "[a](b.md)" in text and "[c](d.md)" in text
    assert f"[e]({BASE}/f)" in text


def test_a_link_out_of_the_root_is_refused() -> None:
    body = (
        "# Page\n\nSee [secret](../../etc/passwd.md) and ![x](../../../up.png).\n\n"
        "[r]: ../../x.md\n"
    )
    text = render(body.encode(), "team/page.md", Site(BASE)).text
    assert "See secret and x." in text
    assert "passwd" not in text and "up.png" not in text and "[r]:" not in text


# -- front matter and titles ----------------------------------------------------------------


def test_front_matter_title_becomes_the_heading() -> None:
    data = (
        b"---\ntitle: Welcome aboard\ndescription: First steps\ntags: [new, people]\n---\nHello.\n"
    )
    page = render(data, "onboarding.md", Site(BASE))
    assert page.title == "Welcome aboard"
    assert page.text == "# Welcome aboard\n\nHello.\n"
    assert page.metadata == {"description": "First steps", "tags": "new, people"}


def test_title_falls_back_to_the_first_heading_then_the_file_name() -> None:
    site = Site(BASE)
    assert render(b"intro\n\n# Real title #\n\n## Sub\n", "x.md", site).title == "Real title"
    assert render(b"Setext title\n============\n\ntext\n", "x.md", site).title == "Setext title"
    assert render(b"```\n# not a heading\n```\n\ntext\n", "a/notes.md", site).title == "notes"
    assert render(b"text only\n", "team/alpha/index.md", site).title == "alpha"
    assert render(b"text only\n", "index.md", site).title == "index"


def test_front_matter_with_a_heading_keeps_the_body_heading() -> None:
    page = render(b"---\ntitle: Short\n---\n\n# Long title\n\nBody\n", "p.md", Site(BASE))
    assert page.title == "Short"
    assert page.text == "# Long title\n\nBody\n"


def test_bom_and_crlf_are_tolerated() -> None:
    page = render(b"\xef\xbb\xbf---\r\ntitle: T\r\n---\r\nline\r\n", "p.md", Site(BASE))
    assert page.title == "T" and page.text == "# T\n\nline\n"


def test_bad_pages_are_failures_and_keep_their_last_version(tmp_path: Path) -> None:
    _tree(tmp_path, {"ok.md": "# ok\n", "yaml.md": "# y\n", "list.md": "# l\n", "bin.md": "# b\n"})
    connector = _wiki(tmp_path, default_acl={"public": True})
    _, checkpoint = run(connector, None)
    _tree(
        tmp_path,
        {
            "yaml.md": "---\ntitle: [unclosed\n---\nbody\n",
            "list.md": "---\n- a\n- b\n---\nbody\n",
            "bin.md": b"\xff\xfe\x00b\x00a\x00d",
        },
    )
    for name in ("yaml.md", "list.md", "bin.md"):
        _touch(tmp_path / name)
    changes, after = run(connector, checkpoint)
    assert {k: f.reason for k, f in failures(changes).items()} == dict.fromkeys(
        ("yaml.md", "list.md", "bin.md"), "malformed"
    )
    assert set(upserts(changes)) == {"ok.md"}
    assert deletes(changes) == set()
    assert set(after.pages) == {"ok.md", "yaml.md", "list.md", "bin.md"}


def test_a_document_carries_url_title_and_markdown(tmp_path: Path) -> None:
    _tree(tmp_path, {"eng/onboarding.markdown": "---\ntitle: Onboarding\nauthor: ada\n---\nHi\n"})
    (doc,) = _docs(_wiki(tmp_path, default_acl={"public": True})).values()
    assert doc.external_id == "eng/onboarding.markdown"
    assert doc.url == f"{BASE}/eng/onboarding"
    assert (doc.title, doc.author, doc.filename) == ("Onboarding", "ada", "onboarding.md")
    assert doc.read() == b"# Onboarding\n\nHi\n"
    assert doc.metadata == {"path": "eng/onboarding.markdown"}
    assert doc.updated_at is not None


# -- ACLs ---------------------------------------------------------------------------------


def test_rules_first_match_wins_and_unmatched_pages_are_readable_by_nobody(
    tmp_path: Path,
) -> None:
    _tree(tmp_path, {"finance/payroll.md": "p", "finance/budget.md": "b", "misc/x.md": "x"})
    rules = [
        AclRule(glob="finance/payroll*", allow=["group:finance"], deny=["user:bob"]),
        AclRule(glob="finance/**", allow=["group:finance"]),
    ]
    connector = _wiki(tmp_path, acl_rules=rules)
    docs = _docs(connector)
    assert connector.sync_notes() == {"unmatched_acl_rule": 1}
    assert docs["finance/payroll.md"].acl == Acl.of(["group:finance"], deny=["user:bob"])
    assert docs["finance/budget.md"].acl == Acl.of(["group:finance"])
    assert docs["misc/x.md"].acl == Acl()
    assert not docs["misc/x.md"].acl.grants({"user:anyone", "group:everyone"})
    docs = _docs(_wiki(tmp_path, acl_rules=rules, default_acl={"allow": ["group:staff"]}))
    assert docs["misc/x.md"].acl == Acl.of(["group:staff"])


def test_front_matter_access_only_narrows(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "open/secret.md": "---\naccess: [user:ada]\n---\ns",
            "team/a.md": "---\naccess: [group:leads, group:everyone]\n---\na",
            "team/b.md": "---\naccess: user:zed\n---\nb",
            "team/c.md": "---\naccess: [nobody]\n---\nc",
        },
    )
    rules = [
        AclRule(glob="open/**", public=True, deny=["user:eve"]),
        AclRule(glob="team/**", allow=["group:leads", "user:carl"]),
    ]
    changes, _ = run(_wiki(tmp_path, acl_rules=rules), None)
    docs = upserts(changes)
    assert docs["open/secret.md"].acl == Acl.of(["user:ada"], deny=["user:eve"])
    assert docs["team/a.md"].acl == Acl.of(["group:leads"])  # group:everyone is not widened in
    assert docs["team/b.md"].acl == Acl()  # user:zed is not in the rule: nobody
    assert failures(changes)["team/c.md"].reason == "malformed"


def test_an_access_change_keeps_the_content_hash(tmp_path: Path) -> None:
    _tree(tmp_path, {"p.md": "---\ntitle: P\n---\nbody\n"})
    connector = _wiki(tmp_path, default_acl={"public": True})
    first, checkpoint = run(connector, None)
    _tree(tmp_path, {"p.md": "---\ntitle: P\naccess: [user:ada]\n---\nbody\n"})
    _touch(tmp_path / "p.md")
    again, _ = run(connector, checkpoint)
    before, after = upserts(first)["p.md"], upserts(again)["p.md"]
    assert after.content_hash == before.content_hash
    assert before.acl.public and after.acl == Acl.of(["user:ada"])
    (ref,) = connector.list_ids()
    assert ref.acl == Acl.of(["user:ada"])


# -- incremental sync ---------------------------------------------------------------------


def test_unchanged_pages_are_not_read_again(tmp_path: Path, monkeypatch: Any) -> None:
    _tree(tmp_path, {"a.md": "---\naccess: [user:ada]\ntitle: A\n---\na", "b.md": "# B\nb"})
    connector = _wiki(tmp_path, default_acl={"allow": ["user:ada", "user:bo"]})
    first, checkpoint = run(connector, None)
    import connectors.markdown_wiki.connector as module

    rendered: list[str] = []
    real = module.render
    monkeypatch.setattr(module, "render", lambda d, p, s: rendered.append(p) or real(d, p, s))
    again, _ = run(connector, checkpoint)
    assert rendered == []
    assert {k: (d.title, d.acl, d.content_hash) for k, d in upserts(again).items()} == {
        k: (d.title, d.acl, d.content_hash) for k, d in upserts(first).items()
    }
    assert upserts(again)["a.md"].read() == b"# A\n\na"  # read lazily when asked


def test_a_new_base_url_renders_every_page_again(tmp_path: Path) -> None:
    _tree(tmp_path, {"a.md": "# A\n\n[b](b.md)\n", "b.md": "# B\n"})
    first, checkpoint = run(_wiki(tmp_path, default_acl={"public": True}), None)
    moved = _wiki(tmp_path, base_url="https://wiki.example.org/docs", default_acl={"public": True})
    again, _ = run(moved, checkpoint)
    a = upserts(again)["a.md"]
    assert a.content_hash != upserts(first)["a.md"].content_hash
    assert b"(https://wiki.example.org/docs/b)" in a.read()
    assert a.url == "https://wiki.example.org/docs/a"


def test_include_exclude_and_hidden_folders(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "a.md": "a",
            "b.markdown": "b",
            "c.txt": "c",
            "img/d.png": b"\x89PNG",
            ".git/HEAD.md": "h",
            ".github/PULL_REQUEST_TEMPLATE.md": "t",
            "drafts/e.md": "e",
            "docs/f.md": "f",
        },
    )
    assert set(_docs(_wiki(tmp_path))) == {"a.md", "b.markdown", "drafts/e.md", "docs/f.md"}
    only_docs = _wiki(tmp_path, include=["docs/**/*.md"], exclude=[])
    assert set(_docs(only_docs)) == {"docs/f.md"}
    assert set(_docs(_wiki(tmp_path, exclude=["drafts/**"]))) == {"a.md", "b.markdown", "docs/f.md"}


def test_links_out_of_the_root_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.md"
    secret.write_text("root password")
    wiki = tmp_path / "wiki"
    _tree(wiki, {"a.md": "a", "inside/b.md": "b"})
    (wiki / "leak.md").symlink_to(secret)
    (wiki / "leakdir").symlink_to(tmp_path, target_is_directory=True)
    (wiki / "ok.md").symlink_to(wiki / "a.md")
    (wiki / "inside" / "loop").symlink_to(wiki, target_is_directory=True)
    changes, _ = run(_wiki(wiki, follow_symlinks=True), None)
    # ok.md is a.md and inside/loop is the root: one document each (tests/security/test_links.py).
    assert set(upserts(changes)) == {"a.md", "inside/b.md"}
    assert {k: f.reason for k, f in failures(changes).items()} == {
        "leak.md": "unreadable",
        "leakdir": "unreadable",
    }


def test_an_unlistable_folder_is_a_failure_not_a_deletion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tree(tmp_path, {"a.md": "a", "team/b.md": "b", "team/deep/c.md": "c"})
    connector = _wiki(tmp_path)
    _, checkpoint = run(connector, None)
    real = os.scandir

    def scandir(path: Any) -> Any:  # a fake outage of one folder (we may run as root)
        if Path(path).name == "team":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    changes, after = run(connector, checkpoint)
    assert deletes(changes) == set()
    assert set(failures(changes)) == {"team/"}
    assert set(after.pages) == {"a.md", "team/b.md", "team/deep/c.md"}


# -- config, groups, registry, docs -------------------------------------------------------


def test_groups_from_config_are_memberships(tmp_path: Path) -> None:
    connector = _wiki(tmp_path, groups={"eng": ["user:ada", "group:sre"], "sre": ["user:bo"]})
    assert sorted(connector.memberships()) == [
        ("group:sre", "group:eng"),
        ("user:ada", "group:eng"),
        ("user:bo", "group:sre"),
    ]


def test_bad_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="user:<name>"):
        MarkdownWikiConfig(root=tmp_path, base_url=BASE, groups={"eng": ["ada"]})
    with pytest.raises(ValueError, match="base_url"):
        MarkdownWikiConfig(root=tmp_path, base_url="handbook.example.com")
    with pytest.raises(ValueError):
        MarkdownWikiConfig(root=tmp_path, base_url=BASE, default_acl={"allow": ["staff"]})
    with pytest.raises(ValueError):
        MarkdownWikiConfig(root=tmp_path, base_url=BASE, include=["/abs/*.md"])
    with pytest.raises(ValueError):
        MarkdownWikiConfig(root=tmp_path)  # base_url is required


def test_missing_root_is_a_clear_config_error(tmp_path: Path) -> None:
    connector = _wiki(tmp_path / "nope")
    with pytest.raises(ConfigError, match="does not exist"):
        connector.check()
    with pytest.raises(ConfigError):
        run(connector, None)


def test_registered_under_its_kind(tmp_path: Path) -> None:
    connector = registry.build("markdown_wiki", {"root": str(tmp_path), "base_url": BASE + "/"})
    assert isinstance(connector, MarkdownWikiConnector)
    assert connector.site.base_url == BASE


def test_every_config_key_is_documented() -> None:
    text = README.read_text()
    missing = [k for k in MarkdownWikiConfig.model_fields if f"`{k}`" not in text]
    assert not missing


def test_the_real_handbook_syncs_without_failures(shared_data: Path) -> None:
    root = shared_data / "wiki-sourcegraph-handbook" / "content"
    if not root.exists():
        pytest.skip(f"{root} is absent")
    connector = _wiki(
        root, base_url="https://handbook.sourcegraph.com", default_acl={"public": True}
    )
    changes, checkpoint = run(connector, None)
    docs = upserts(changes)
    assert len(docs) > 800 and not failures(changes)
    index = docs["index.md"]
    assert (
        index.url == "https://handbook.sourcegraph.com/" and index.title == "Sourcegraph handbook"
    )
    assert b"](https://handbook.sourcegraph.com/handbook)" in index.read()
    assert not any(b"](../" in d.read() for d in list(docs.values())[:200])
    again, _ = run(connector, checkpoint)
    assert len(upserts(again)) == len(docs) and not deletes(again)


# -- end to end through the real CLI --------------------------------------------------------

BIN = Path(sys.executable).parent / "context-server"


@pytest.mark.model
def test_sync_and_search_through_the_cli(tmp_path: Path) -> None:
    wiki = tmp_path / "handbook"
    _tree(
        wiki,
        {
            "index.md": "---\ntitle: Handbook\n---\nSee [onboarding](people/onboarding.md).\n",
            "people/onboarding.md": (
                "# Onboarding\n\nNew hires collect their laptop from the Lyon office on the "
                "first Monday. See [pay](../finance/salaries.md).\n"
            ),
            "finance/salaries.md": (
                "---\ntitle: Salary bands\n---\nSalary bands for 2027 are reviewed every "
                "October by the finance committee.\n"
            ),
        },
    )
    (tmp_path / "wiki.yaml").write_text(
        "name: handbook\nkind: markdown_wiki\nconfig:\n  root: handbook\n"
        f"  base_url: {BASE}\n"
        "  acl_rules:\n"
        '    - {glob: "finance/**", allow: ["group:finance"]}\n'
        "  default_acl: {allow: [group:staff]}\n"
        "  groups:\n    finance: [user:alice]\n    staff: [user:carol, group:finance]\n"
    )
    (tmp_path / "principals.yaml").write_text("groups:\n  everyone: [user:carol]\n")
    env = dict(os.environ)
    env["CONTEXT_SERVER_HOME"] = str(tmp_path / "home")
    env.pop("CONTEXT_SERVER_DATABASE_URL", None)
    env.pop("CONTEXT_SERVER_QDRANT_URL", None)

    def cli(*args: str) -> Any:
        proc = subprocess.run(
            [str(BIN), *args], env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr + proc.stdout
        return json.loads(proc.stdout)

    cli("principals", "load", str(tmp_path / "principals.yaml"), "--json")
    cli("sources", "add", str(tmp_path / "wiki.yaml"), "--json")
    report = cli("sync", "handbook", "--json")
    assert (report["documents_seen"], report["upserted"], report["failed"]) == (3, 3, 0)
    again = cli("sync", "handbook", "--json")
    assert (again["unchanged"], again["chunks_embedded"]) == (3, 0)

    def top(who: str) -> list[dict[str, Any]]:
        out = cli("search", "salary bands finance committee", "--as", who, "-k", "3", "--json")
        results: list[dict[str, Any]] = out["results"]
        return results

    alice = top("user:alice")
    assert alice[0]["title"] == "Salary bands"
    assert alice[0]["url"] == f"{BASE}/finance/salaries"
    assert all(r["title"] != "Salary bands" for r in top("user:carol"))
    assert top("user:mallory") == []
