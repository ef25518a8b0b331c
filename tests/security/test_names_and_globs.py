"""File names that could escape ACL rules, and names that could stop a whole source.

Every character a file system allows in a name (newline, carriage return, control
characters, Unicode line and paragraph separators, bytes that are not UTF-8) must match the
ACL globs exactly as a letter would, and every string a connector emits must be valid UTF-8
so one odd name never fails the source downstream.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from wcmatch import glob as wcglob

from connectors.base import Acl, Failure, SourceDocument
from connectors.filesystem.config import AclRule, FilesystemConfig
from connectors.filesystem.connector import FilesystemConnector
from connectors.globs import glob_match
from connectors.markdown_wiki.config import MarkdownWikiConfig
from connectors.markdown_wiki.connector import MarkdownWikiConnector
from connectors.names import escape_name
from tests.contract.connector_contract import failures, run, upserts

ODD = ["\n", "\r", "\t", "\x1b", "\x7f", "\x85", "\u2028", "\u2029", "\ufeff", "\\"]
ODD += [".", "*", "?", "[", "]", "!", "-", " ", "\udcff", "\udc80", "é", "\U0001f600"]

#: One character of a name as Python sees it from os.scandir (surrogate-escaped bytes).
name_char = st.one_of(
    st.sampled_from(ODD),
    st.characters(blacklist_characters="/\x00", blacklist_categories=["Cs"]),
    st.integers(0x80, 0xFF).map(lambda b: os.fsdecode(bytes([b]))),
)
name_text = st.lists(name_char, min_size=1, max_size=12).map("".join)
name = name_text.filter(lambda n: n not in (".", ".."))
#: A name as bytes on disk: anything but NUL and '/'.
name_bytes = (
    st.binary(min_size=1, max_size=24)
    .map(lambda b: b.replace(b"/", b"_").replace(b"\x00", b"_"))
    .filter(lambda b: b not in (b".", b".."))
)

FINANCE_RULES = [
    AclRule(glob="finance/**", allow=["group:finance"]),
    AclRule(glob="**", allow=[]),
]


# -- the globs ----------------------------------------------------------------------------


@given(a=name, b=name, c=name_char)
def test_every_character_matches_globs_like_a_letter(a: str, b: str, c: str) -> None:
    assert glob_match("finance/**", f"finance/{a}")
    assert glob_match("finance/**", f"finance/{a}/{b}")
    assert not glob_match("finance/**", f"other/{a}")
    assert glob_match("**", a) and glob_match("**", f"{a}/{b}")
    assert glob_match("*", a) and not glob_match("*", f"{a}/{b}")
    assert glob_match("finance/*", f"finance/{a}")
    assert not glob_match("finance/*", f"finance/{a}/{b}")
    assert glob_match("**/*.pdf", f"{a}.pdf") and glob_match("**/*.pdf", f"{a}/{b}.pdf")
    assert not glob_match("**/*.pdf", f"{a}.pdf{c}")
    assert not glob_match("*.pdf", f"{a}.pdf{c}")
    assert glob_match("?", c) and glob_match("x?y", f"x{c}y")
    assert glob_match("[!ab]", c) is (c not in "ab")
    assert not glob_match("[!ab]", "/") and not glob_match("?", "/")


def _letterize(path: str) -> str:
    """``path`` with every character the patterns below never name turned into ``q``."""
    return "".join(ch if ch in "ab./" else "q" for ch in path)


segment = st.lists(
    st.sampled_from(["a", "b", ".", "*", "?", "[ab]", "[!ab]", "[a-b]"]), min_size=1, max_size=4
).map("".join)
pattern = st.lists(st.one_of(segment, st.just("**")), min_size=1, max_size=4).map("/".join)
path_part = st.lists(st.one_of(st.sampled_from(["a", "b", "."]), name_char), min_size=1, max_size=5)
path = st.lists(path_part.map("".join), min_size=1, max_size=4).map("/".join)


@given(p=pattern, x=path)
@settings(max_examples=400)
def test_odd_characters_match_as_a_letter_would(p: str, x: str) -> None:
    """Differential: the path with its odd characters replaced by a letter the pattern never
    names matches exactly when the real path does."""
    assert glob_match(p, x) is glob_match(p, _letterize(x))


@given(p=pattern, x=path.map(_letterize))
@settings(max_examples=400)
def test_agrees_with_wcmatch_on_plain_names(p: str, x: str) -> None:
    """Our matcher against a well-kept library's, on names it handles (no '.'/'..' parts)."""
    assume(not any(part in (".", "..") for part in x.split("/")))
    # Ours lets '**' inside a part cross folders too ('fin**' is 'fin' then anything).
    assume(all(part == "**" or "**" not in part for part in p.split("/")))
    flags = wcglob.GLOBSTAR | wcglob.DOTMATCH | wcglob.CASE | wcglob.FORCEUNIX
    assert glob_match(p, x) is wcglob.globmatch(x, p, flags=flags)


def test_documented_semantics_are_kept() -> None:
    assert glob_match("**/.*", ".hidden") and glob_match("**/.*", "a/.git")  # dot files
    assert glob_match("**/.*/**", ".git/config")
    assert glob_match("*", ".env")
    assert not glob_match("Finance/**", "finance/x")  # case-sensitive
    assert glob_match("a\\b", "a\\b")  # a backslash is a letter, not an escape
    assert glob_match("[]a]", "]") and glob_match("[!]a]", "b") and not glob_match("[!]a]", "]")
    for bad in ("", "/abs/**", "bad[glob", "x[]", "x[!]", "[z-a]"):
        with pytest.raises(ValueError, match="bad glob"):
            glob_match(bad, "x")


# -- the filesystem connector on disk -----------------------------------------------------


@pytest.fixture
def scratch() -> Iterator[Any]:
    def make() -> tempfile.TemporaryDirectory[str]:
        return tempfile.TemporaryDirectory()

    yield make


def _excluded(raw: str) -> bool:
    return raw.startswith(".") or raw.startswith("~$")


def _assert_utf8(doc: SourceDocument) -> None:
    for value in (doc.external_id, doc.title, doc.filename, doc.url or "", *doc.metadata.values()):
        value.encode("utf-8")  # raises on a lone surrogate


@given(names=st.lists(name_bytes, min_size=1, max_size=6, unique=True))
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_a_rule_decides_every_name_on_disk(names: list[bytes], scratch: Any) -> None:
    with scratch() as tmp:
        root = Path(tmp)
        for folder in (b"finance", b"other"):
            os.makedirs(os.path.join(os.fsencode(tmp), folder))
            for raw in names:
                full = os.path.join(os.fsencode(tmp), folder, raw)
                with open(full, "wb") as f:
                    f.write(b"secret " + raw)
                os.chmod(full, 0o644)  # world-readable: the POSIX fallback would be public
        config = FilesystemConfig(root=root, acl_rules=FINANCE_RULES, default_acl="posix")
        connector = FilesystemConnector(config)
        changes, checkpoint = run(connector, None)
        checkpoint.model_dump_json().encode("utf-8")
        assert not failures(changes)
        docs = upserts(changes)
        kept = [os.fsdecode(n) for n in names if not _excluded(os.fsdecode(n))]
        assert len(docs) == 2 * len(kept)  # distinct names stay distinct documents
        for doc in docs.values():
            _assert_utf8(doc)
            if doc.external_id.startswith("finance/"):
                assert doc.acl == Acl.of(["group:finance"]), doc.external_id
            else:
                assert doc.external_id.startswith("other/")
                assert doc.acl == Acl(), doc.external_id
        assert {escape_name(f"{d}/{n}") for d in ("finance", "other") for n in kept} == set(docs)
        assert {r.external_id: r.acl for r in connector.list_ids()} == {
            k: d.acl for k, d in docs.items()
        }
        assert connector.sync_notes() == {"unmatched_acl_rule": 0}


@given(names=st.lists(name_bytes, min_size=1, max_size=5, unique=True))
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_wiki_globs_take_every_name(names: list[bytes], scratch: Any) -> None:
    with scratch() as tmp:
        base = os.fsencode(tmp)
        os.makedirs(os.path.join(base, b"finance"))
        for raw in names:
            with open(os.path.join(base, b"finance", raw + b".md"), "wb") as f:
                f.write(b"# Page\n\ntext\n")
        connector = MarkdownWikiConnector(
            MarkdownWikiConfig(
                root=Path(tmp),
                base_url="https://wiki.example.com",
                acl_rules=[AclRule(glob="finance/**", allow=["group:finance"])],
            )
        )
        changes, checkpoint = run(connector, None)
        checkpoint.model_dump_json().encode("utf-8")
        assert not failures(changes)
        docs = upserts(changes)
        kept = [n for n in names if not n.startswith(b".")]
        assert len(docs) == len(kept)
        for doc in docs.values():
            _assert_utf8(doc)
            assert doc.acl == Acl.of(["group:finance"])
        assert connector.sync_notes() == {"unmatched_acl_rule": 0}


def test_the_newline_file_from_the_issue_gets_the_rule(tmp_path: Path) -> None:
    (tmp_path / "finance").mkdir()
    odd = tmp_path / "finance" / "q4\nboard.txt"
    odd.write_text("board minutes")
    os.chmod(odd, 0o644)
    for default in ("posix", "nobody"):
        config = FilesystemConfig(root=tmp_path, acl_rules=FINANCE_RULES, default_acl=default)
        (doc,) = upserts(run(FilesystemConnector(config), None)[0]).values()
        assert doc.acl == Acl.of(["group:finance"])
        assert not doc.acl.grants({"user:anyone"})


def test_escaped_names_are_stable_and_unambiguous(tmp_path: Path) -> None:
    base = os.fsencode(tmp_path)
    for raw in (b"caf\xe9.txt", b"caf\\xe9.txt", b"caf\xc3\xa9.txt", b"back\\slash.txt"):
        with open(os.path.join(base, raw), "wb") as f:
            f.write(raw)
    config = FilesystemConfig(root=tmp_path, acl_rules=[AclRule(glob="**", allow=["group:x"])])
    changes, _ = run(FilesystemConnector(config), None)
    docs = upserts(changes)
    assert set(docs) == {"caf\\xe9.txt", "caf\\\\xe9.txt", "café.txt", "back\\\\slash.txt"}
    assert docs["caf\\xe9.txt"].read() == b"caf\xe9.txt"
    assert docs["caf\\xe9.txt"].title == "caf\\xe9.txt"
    assert docs["caf\\xe9.txt"].url and docs["caf\\xe9.txt"].url.endswith("/caf%E9.txt")
    assert escape_name(os.fsdecode(b"a\xffb")) == "a\\xffb"


def test_an_undecodable_folder_name_is_escaped_in_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = os.path.join(os.fsencode(tmp_path), b"t\xe9am")
    os.makedirs(bad)
    with open(os.path.join(bad, b"x.txt"), "wb") as f:
        f.write(b"x")
    real = os.scandir

    def scandir(p: Any) -> Any:
        if os.fsencode(p).endswith(b"t\xe9am"):
            raise PermissionError(13, "Permission denied", p)
        return real(p)

    monkeypatch.setattr(os, "scandir", scandir)
    config = FilesystemConfig(root=tmp_path, acl_rules=[AclRule(glob="**", allow=["group:x"])])
    changes, _ = run(FilesystemConnector(config), None)
    (failure,) = (c for c in changes if isinstance(c, Failure))
    assert failure.external_id == "t\\xe9am/"
    (failure.external_id + failure.detail).encode("utf-8")


# -- end to end: a non-UTF-8 name does not fail the source --------------------------------


def test_a_non_utf8_name_does_not_stop_the_source(tmp_path: Path) -> None:
    from context_server.runtime import Runtime
    from context_server.settings import Settings
    from context_server.specs import PrincipalsSpec, SourceSpec
    from indexing.embed import FakeHashEmbedder

    share = tmp_path / "share"
    (share / "finance").mkdir(parents=True)
    (share / "handbook.txt").write_text("The office opens at nine.")
    (share / "gone.txt").write_text("This memo is withdrawn soon.")
    (share / "finance" / "budget.txt").write_text("The budget is 42,000 EUR.")
    rules: list[dict[str, Any]] = [
        {"glob": "finance/**", "allow": ["group:finance"]},
        {"glob": "**", "allow": ["group:everyone"]},
    ]
    rt = Runtime(Settings(home=tmp_path / "home"), embedder=FakeHashEmbedder())
    try:
        rt.load_principals(
            PrincipalsSpec(
                groups={"everyone": ["user:carol", "user:alice"], "finance": ["user:alice"]}
            )
        )
        spec = {"root": str(share), "acl_rules": rules}
        rt.add_source(SourceSpec(name="drive", kind="filesystem", config=spec))
        (first,) = rt.sync("drive")
        assert first.report.upserted == 3

        with open(os.path.join(os.fsencode(share), b"finance", b"r\xe9sum\xe9.txt"), "wb") as f:
            f.write(b"Latin-1 named payroll summary for the finance team.")
        (share / "gone.txt").unlink()
        (share / "new.txt").write_text("A new memo about parking.")
        # Revoke carol's access to the handbook: an ACL-only change that must be applied.
        narrowed = [{"glob": "handbook.txt", "allow": ["user:alice"]}, *rules]
        rt.add_source(
            SourceSpec(name="drive", kind="filesystem", config={**spec, "acl_rules": narrowed})
        )
        (second,) = rt.sync("drive")
        r = second.report
        assert second.status == "completed", r
        assert (r.upserted, r.deleted, r.acl_updated, r.failed) == (2, 1, 1, 0)
        carol = {x.title for x in rt.search("office parking memo payroll", "user:carol", k=20)}
        alice = {x.title for x in rt.search("payroll summary finance", "user:alice", k=20)}
        assert "handbook.txt" not in carol and "new.txt" in carol and "gone.txt" not in carol
        assert "r\\xe9sum\\xe9.txt" in alice and "r\\xe9sum\\xe9.txt" not in carol
    finally:
        rt.close()
