"""Links that could republish a file under a wider ACL, loops, and special files.

The property: the ACL a document is indexed with is never wider than the ACL of the real
file's path (of every real path, for hard links), and each real file is one document.
Both connectors that walk folders (filesystem, markdown_wiki) are held to it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.base import Acl, Change, DocRef, SourceDocument, Upsert
from connectors.filesystem.config import AclRule, FilesystemConfig
from connectors.filesystem.connector import FilesystemConnector
from connectors.globs import glob_match
from connectors.markdown_wiki.config import MarkdownWikiConfig
from connectors.markdown_wiki.connector import MarkdownWikiConnector
from tests.contract.connector_contract import failures, run, upserts

fs_module = importlib.import_module("connectors.filesystem.connector")
wiki_module = importlib.import_module("connectors.markdown_wiki.connector")

RULES = [
    AclRule(glob="secret/**", allow=["group:hr"]),
    AclRule(glob="public/**", public=True),
    AclRule(glob="team/**", allow=["group:team", "group:hr"]),
    AclRule(glob="**", allow=[]),
]
#: Principal sets that tell the ACLs above apart.
UNIVERSE = [{"user:anyone"}, {"group:hr"}, {"group:team"}, {"group:everyone"}]
KINDS = ["filesystem", "markdown_wiki"]


def rule_acl(relpath: str) -> Acl:
    for rule in RULES:
        if glob_match(rule.glob, relpath):
            return Acl.of(rule.allow, rule.deny, public=rule.public)
    raise AssertionError("the last rule matches everything")


def wider(a: Acl, b: Acl) -> bool:
    """Whether ``a`` grants some principal set that ``b`` refuses."""
    return any(a.grants(p) and not b.grants(p) for p in UNIVERSE)


def ext(kind: str) -> str:
    return ".txt" if kind == "filesystem" else ".md"


def connector(kind: str, root: Path, follow: bool = False) -> Any:
    if kind == "filesystem":
        return FilesystemConnector(
            FilesystemConfig(root=root, acl_rules=RULES, follow_symlinks=follow)
        )
    return MarkdownWikiConnector(
        MarkdownWikiConfig(
            root=root, base_url="https://wiki.example.com", acl_rules=RULES, follow_symlinks=follow
        )
    )


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {text}\n\n{text}\n")
    return path


def real_paths(root: Path) -> dict[tuple[int, int], list[str]]:
    """Every regular file below root by inode, with the paths that reach it without links."""
    found: dict[tuple[int, int], list[str]] = {}
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            st_ = path.lstat()
            if stat.S_ISREG(st_.st_mode):
                found.setdefault((st_.st_dev, st_.st_ino), []).append(
                    path.relative_to(root).as_posix()
                )
    return found


def check(kind: str, root: Path, follow: bool) -> dict[str, SourceDocument]:
    """The property, for one tree: never wider than any real path, one document per file,
    list_ids() agreeing with sync()."""
    c = connector(kind, root, follow)
    changes, _ = run(c, None)
    upserted = [ch.document for ch in changes if isinstance(ch, Upsert)]
    docs = upserts(changes)
    assert len(upserted) == len(docs), "a document was yielded twice"
    by_inode = real_paths(root)
    seen: set[tuple[int, int]] = set()
    for doc_id, doc in docs.items():
        path = root / doc_id
        assert not path.is_symlink() and os.path.realpath(path) == str(path), doc_id
        st_ = path.stat()
        key = (st_.st_dev, st_.st_ino)
        assert key not in seen, f"{doc_id}: a second document for the same file"
        seen.add(key)
        for real in by_inode[key]:
            assert not wider(doc.acl, rule_acl(real)), (doc_id, real, doc.acl)
    refs: dict[str, DocRef] = {r.external_id: r for r in c.list_ids()}
    assert {k: r.acl for k, r in refs.items()} == {k: d.acl for k, d in docs.items()}
    return docs


# -- topologies ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_link_to_a_restricted_file_is_not_republished(kind: str, tmp_path: Path) -> None:
    e = ext(kind)
    write(tmp_path, f"secret/salaries{e}", "salaries are secret")
    write(tmp_path, f"public/readme{e}", "hello")
    (tmp_path / "public" / f"notes{e}").symlink_to(Path("..") / "secret" / f"salaries{e}")
    docs = check(kind, tmp_path, follow=False)
    assert set(docs) == {f"secret/salaries{e}", f"public/readme{e}"}
    salaries = docs[f"secret/salaries{e}"].acl
    assert not salaries.grants({"user:anyone"}) and not salaries.public
    assert all(b"salaries" not in d.read() for k, d in docs.items() if k.startswith("public/"))


@pytest.mark.parametrize("kind", KINDS)
def test_a_followed_link_to_a_restricted_folder_is_not_republished(
    kind: str, tmp_path: Path
) -> None:
    e = ext(kind)
    write(tmp_path, f"secret/a{e}", "a")
    write(tmp_path, f"secret/deep/b{e}", "b")
    (tmp_path / "public").mkdir()
    (tmp_path / "public" / "hr").symlink_to(Path("..") / "secret", target_is_directory=True)
    docs = check(kind, tmp_path, follow=True)
    assert set(docs) == {f"secret/a{e}", f"secret/deep/b{e}"}
    assert all(not d.acl.grants({"user:anyone"}) for d in docs.values())


@pytest.mark.parametrize("kind", KINDS)
def test_a_link_to_the_parent_yields_each_file_once(kind: str, tmp_path: Path) -> None:
    e = ext(kind)
    write(tmp_path, f"team/x{e}", "x")
    write(tmp_path, f"public/y{e}", "y")
    (tmp_path / "team" / "up").symlink_to("..", target_is_directory=True)
    (tmp_path / "team" / "here").symlink_to(".", target_is_directory=True)
    (tmp_path / "public" / "loop").symlink_to("../public", target_is_directory=True)
    changes, _ = run(connector(kind, tmp_path, follow=True), None)
    assert [c.document.external_id for c in changes if isinstance(c, Upsert)] == [
        f"public/y{e}",
        f"team/x{e}",
    ]
    assert not failures(changes)
    docs = check(kind, tmp_path, follow=True)
    # team/x is also reached as team/up/public/../team/x paths: never wider than team/**.
    assert not docs[f"team/x{e}"].acl.grants({"user:anyone"})


@pytest.mark.parametrize("kind", KINDS)
def test_link_loops_are_failures_not_hangs(kind: str, tmp_path: Path) -> None:
    e = ext(kind)
    write(tmp_path, f"team/ok{e}", "ok")
    (tmp_path / "team" / f"l1{e}").symlink_to(f"l2{e}")
    (tmp_path / "team" / f"l2{e}").symlink_to(f"l1{e}")
    (tmp_path / "team" / f"self{e}").symlink_to(f"self{e}")
    (tmp_path / "team" / f"broken{e}").symlink_to(f"nothing{e}")
    changes, _ = run(connector(kind, tmp_path, follow=True), None)
    assert set(upserts(changes)) == {f"team/ok{e}"}
    assert {k: f.reason for k, f in failures(changes).items()} == {
        f"team/{n}{e}": "unreadable" for n in ("l1", "l2", "self", "broken")
    }


@pytest.mark.parametrize("kind", KINDS)
def test_hard_links_across_folders_are_one_document_with_the_narrower_acl(
    kind: str, tmp_path: Path
) -> None:
    e = ext(kind)
    secret = write(tmp_path, f"secret/x{e}", "hard linked")
    (tmp_path / "public").mkdir()
    os.link(secret, tmp_path / "public" / f"x{e}")
    docs = check(kind, tmp_path, follow=False)
    (doc,) = docs.values()
    assert doc.external_id == f"public/x{e}"  # the first path in sorted order
    assert doc.acl == Acl.of(["group:hr"])  # public ∩ secret


@pytest.mark.parametrize("kind", KINDS)
def test_a_link_out_of_the_root_is_a_failure(kind: str, tmp_path: Path) -> None:
    e = ext(kind)
    outside = write(tmp_path, f"outside{e}", "root password")
    root = tmp_path / "root"
    write(root, f"public/a{e}", "a")
    (root / "public" / f"leak{e}").symlink_to(outside)
    (root / "public" / "leakdir").symlink_to(tmp_path, target_is_directory=True)
    changes, _ = run(connector(kind, root, follow=True), None)
    assert set(upserts(changes)) == {f"public/a{e}"}
    assert set(failures(changes)) == {f"public/leak{e}", "public/leakdir"}


@pytest.mark.parametrize("kind", KINDS)
def test_a_link_to_a_rule_with_a_deny_keeps_the_deny(kind: str, tmp_path: Path) -> None:
    """Deny is the union: a path's deny survives whichever path the rules favour."""
    e = ext(kind)
    write(tmp_path, f"team/plan{e}", "plan")
    (tmp_path / "public").mkdir()
    (tmp_path / "public" / f"plan{e}").symlink_to(Path("..") / "team" / f"plan{e}")
    rules = [AclRule(glob="public/**", public=True, deny=["user:eve"]), *RULES]
    if kind == "filesystem":
        c: Any = FilesystemConnector(FilesystemConfig(root=tmp_path, acl_rules=rules))
    else:
        c = MarkdownWikiConnector(
            MarkdownWikiConfig(root=tmp_path, base_url="https://w.example.com", acl_rules=rules)
        )
    (doc,) = upserts(run(c, None)[0]).values()
    assert doc.acl == Acl.of(["group:team", "group:hr"], deny=["user:eve"])


# -- the property over random trees -------------------------------------------------------

FOLDERS = ["secret", "public", "team", "secret/deep"]
op = st.one_of(
    st.tuples(st.just("file"), st.sampled_from(FOLDERS), st.integers(0, 3)),
    st.tuples(st.just("link"), st.sampled_from(FOLDERS), st.integers(0, 3)),
    st.tuples(st.just("hard"), st.sampled_from(FOLDERS), st.integers(0, 3)),
    st.tuples(st.just("dirlink"), st.sampled_from(FOLDERS), st.sampled_from([*FOLDERS, ".."])),
)


def build(root: Path, kind: str, ops: list[tuple[str, str, Any]]) -> None:
    e = ext(kind)
    files: list[Path] = []
    for folder in FOLDERS:
        files.append(write(root, f"{folder}/base{e}", f"{folder} base"))
    for n, (what, folder, arg) in enumerate(ops):
        where = root / folder
        name = where / f"n{n}{e}"
        if what == "file":
            files.append(write(root, f"{folder}/n{n}{e}", f"file {n}"))
        elif what == "link":
            target = files[arg % len(files)]
            name.symlink_to(os.path.relpath(target, where))
        elif what == "hard":
            os.link(files[arg % len(files)], name)
        else:
            target_dir = root / arg if arg != ".." else where.parent
            (where / f"d{n}").symlink_to(
                os.path.relpath(target_dir, where), target_is_directory=True
            )


@given(
    kind=st.sampled_from(KINDS),
    follow=st.booleans(),
    ops=st.lists(op, min_size=1, max_size=10),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_no_document_is_wider_than_its_real_path(
    kind: str, follow: bool, ops: list[tuple[str, str, Any]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root, kind, ops)
        docs = check(kind, root, follow)
        assert len(docs) == len(real_paths(root))  # every real file, once


# -- special files ------------------------------------------------------------------------


def within(seconds: float, fn: Callable[[], Any], unblock: Callable[[], None]) -> Any:
    """``fn()`` on a thread; fail (and ``unblock`` it) if it does not return in time."""
    out: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # handed back to the test
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        unblock()
        thread.join(5)
        pytest.fail(f"blocked for more than {seconds}s (a FIFO was opened?)")
    if errors:
        raise errors[0]
    return out[0]


def unblock_fifos(paths: list[Path]) -> Callable[[], None]:
    def unblock() -> None:
        for path in paths:
            with contextlib.suppress(OSError):  # opening the writer end frees a reader
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    return unblock


@pytest.fixture
def special(tmp_path: Path) -> Iterator[tuple[Path, list[Path]]]:
    root = tmp_path / "share"
    root.mkdir()
    fifos = [root / "pipe.txt", root / "pipe.md"]
    for fifo in fifos:
        os.mkfifo(fifo)
    (root / "link-to-pipe.md").symlink_to("pipe.md")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock.md"))
    yield root, fifos
    sock.close()


@pytest.mark.parametrize("kind", KINDS)
def test_special_files_are_failures_and_never_opened(
    kind: str, special: tuple[Path, list[Path]]
) -> None:
    root, fifos = special
    write(root, f"public/ok{ext(kind)}", "ok")
    try:
        os.mknod(root / "null.md", 0o644 | stat.S_IFCHR, os.makedev(1, 3))
        device = True
    except OSError:  # not root: no device node
        device = False
    c = connector(kind, root)
    changes: list[Change] = within(10, lambda: run(c, None)[0], unblock_fifos(fifos))
    assert set(upserts(changes)) == {f"public/ok{ext(kind)}"}
    expected = {"pipe.md", "link-to-pipe.md", "sock.md"} | ({"null.md"} if device else set())
    if kind == "filesystem":
        expected.add("pipe.txt")
    assert {k: f.reason for k, f in failures(changes).items()} == dict.fromkeys(
        expected, "special_file"
    )
    within(10, lambda: list(c.list_ids()), unblock_fifos(fifos))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("swap", ["fifo", "link"])
def test_a_file_swapped_after_the_walk_is_not_read(
    kind: str, swap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = ext(kind)
    root = tmp_path / "root"
    target = write(root, f"public/a{e}", "a")
    outside = tmp_path / "secret.txt"
    outside.write_text("root password")

    def swap_it() -> None:
        target.unlink()
        if swap == "fifo":
            os.mkfifo(target)
        else:
            target.symlink_to(outside)

    module: Any = fs_module if kind == "filesystem" else wiki_module
    real_walk = module.walk

    def walk_then_swap(*args: Any, **kwargs: Any) -> Iterator[Any]:
        entries = list(real_walk(*args, **kwargs))
        swap_it()
        return iter(entries)

    monkeypatch.setattr(module, "walk", walk_then_swap)
    c = connector(kind, root)
    changes: list[Change] = within(10, lambda: run(c, None)[0], unblock_fifos([target]))
    assert not upserts(changes)
    assert failures(changes)[f"public/a{e}"].reason == "unreadable"


def test_a_document_read_after_a_swap_is_refused(tmp_path: Path) -> None:
    """The pipeline reads a document after the walk: a FIFO or a link put in its place since
    is refused, not opened."""
    root = tmp_path / "root"
    target = write(root, "public/a.txt", "a")
    outside = tmp_path / "secret.txt"
    outside.write_text("root password")
    (doc,) = upserts(run(connector("filesystem", root), None)[0]).values()
    target.unlink()
    os.mkfifo(target)
    with pytest.raises(OSError):
        within(10, doc.read, unblock_fifos([target]))
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(OSError):
        doc.read()
