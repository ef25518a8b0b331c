"""The filesystem connector against the shared contract, plus its own ACL rules."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from connectors.base import Acl
from connectors.errors import ConfigError
from connectors.filesystem.config import AclRule, FilesystemConfig
from connectors.filesystem.connector import FilesystemConnector
from tests.contract.connector_contract import ConnectorContract, deletes, failures, run, upserts


class TestFilesystemContract(ConnectorContract):
    @pytest.fixture(autouse=True)
    def _root(self, tmp_path: Path) -> None:
        self.root = tmp_path / "share"
        self.root.mkdir()
        self.rules = [AclRule(glob="**", allow=["group:everyone"])]

    def connector(self) -> Any:
        return FilesystemConnector(FilesystemConfig(root=self.root, acl_rules=self.rules))

    def external_id(self, name: str) -> str:
        return f"{name}.txt"

    def add(self, name: str, text: str) -> None:
        (self.root / f"{name}.txt").write_text(text)

    def change(self, name: str, text: str) -> None:
        path = self.root / f"{name}.txt"
        path.write_text(text)
        # Bump mtime past the file system's timestamp granularity.
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))

    def remove(self, name: str) -> None:
        (self.root / f"{name}.txt").unlink()

    def restrict(self, name: str, principal: str) -> Any:
        self.rules = [AclRule(glob=f"{name}.txt", allow=[principal]), *self.rules]
        return self.connector()

    def break_(self, name: str) -> None:
        path = self.root / f"{name}.txt"
        path.unlink()
        path.symlink_to(path)  # a link to itself: listed, never readable


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_first_matching_rule_wins_and_deny_is_kept(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "finance/payroll-notes.txt": "p",
            "finance/budget.txt": "b",
            "handbook/welcome.md": "w",
        },
    )
    config = FilesystemConfig(
        root=tmp_path,
        acl_rules=[
            AclRule(glob="finance/payroll-*", allow=["group:finance"], deny=["user:bob"]),
            AclRule(glob="finance/**", allow=["group:finance"]),
            AclRule(glob="**", allow=["group:everyone"]),
        ],
    )
    docs = upserts(run(FilesystemConnector(config), None)[0])
    assert docs["finance/payroll-notes.txt"].acl == Acl.of(["group:finance"], deny=["user:bob"])
    assert docs["finance/budget.txt"].acl == Acl.of(["group:finance"])
    assert docs["handbook/welcome.md"].acl == Acl.of(["group:everyone"])


def test_posix_acl_when_no_rule_matches_and_default_acl_is_posix(tmp_path: Path) -> None:
    _tree(tmp_path, {"open.txt": "o", "team.txt": "t", "mine.txt": "m", "x/ruled.txt": "r"})
    os.chmod(tmp_path / "open.txt", 0o644)
    os.chmod(tmp_path / "team.txt", 0o640)
    os.chmod(tmp_path / "mine.txt", 0o600)
    rules = [AclRule(glob="x/**", allow=["user:x"])]
    config = FilesystemConfig(root=tmp_path, acl_rules=rules, default_acl="posix")
    connector = FilesystemConnector(config)
    docs = upserts(run(connector, None)[0])
    assert docs["open.txt"].acl.public
    team = docs["team.txt"].acl
    assert not team.public and len(team.groups) == 1 and len(team.users) == 1
    mine = docs["mine.txt"].acl
    assert not mine.public and mine.groups == () and len(mine.users) == 1
    assert connector.sync_notes() == {"unmatched_acl_rule": 3}


def test_a_file_no_rule_matches_is_readable_by_nobody_by_default(tmp_path: Path) -> None:
    _tree(tmp_path, {"open.txt": "o", "x/ruled.txt": "r"})
    os.chmod(tmp_path / "open.txt", 0o644)
    rules = [AclRule(glob="x/**", allow=["user:x"])]
    connector = FilesystemConnector(FilesystemConfig(root=tmp_path, acl_rules=rules))
    assert FilesystemConfig(root=tmp_path).default_acl == "nobody"
    changes, _ = run(connector, None)
    docs = upserts(changes)
    assert docs["open.txt"].acl == Acl() and not docs["open.txt"].acl.grants({"user:anyone"})
    assert docs["x/ruled.txt"].acl == Acl.of(["user:x"])
    assert connector.sync_notes() == {"unmatched_acl_rule": 1}
    assert {r.external_id: r.acl for r in connector.list_ids()} == {
        k: d.acl for k, d in docs.items()
    }
    with pytest.raises(ValueError):
        FilesystemConfig(root=tmp_path, default_acl="public")


def test_unchanged_files_are_not_read_again(tmp_path: Path, monkeypatch: Any) -> None:
    _tree(tmp_path, {"a.txt": "a", "b.txt": "b"})
    connector = FilesystemConnector(FilesystemConfig(root=tmp_path))
    _, checkpoint = run(connector, None)
    hashed: list[Path] = []
    import connectors.filesystem.connector as module

    real = module._file_hash
    monkeypatch.setattr(module, "_file_hash", lambda p, k: hashed.append(p) or real(p, k))
    changes, _ = run(connector, checkpoint)
    assert len(upserts(changes)) == 2
    assert hashed == []


def test_hidden_and_lock_files_are_excluded(tmp_path: Path) -> None:
    _tree(tmp_path, {"a.txt": "a", ".git/config": "x", ".hidden": "h", "~$lock.docx": "l"})
    docs = upserts(run(FilesystemConnector(FilesystemConfig(root=tmp_path)), None)[0])
    assert set(docs) == {"a.txt"}


def test_url_prefix(tmp_path: Path) -> None:
    _tree(tmp_path, {"Team Docs/plan 1.md": "x"})
    config = FilesystemConfig(root=tmp_path, url_prefix="https://files.example.com/share/")
    (doc,) = upserts(run(FilesystemConnector(config), None)[0]).values()
    assert doc.url == "https://files.example.com/share/Team%20Docs/plan%201.md"


def test_missing_root_is_a_clear_config_error(tmp_path: Path) -> None:
    connector = FilesystemConnector(FilesystemConfig(root=tmp_path / "nope"))
    with pytest.raises(ConfigError, match="does not exist"):
        connector.check()
    with pytest.raises(ConfigError):
        run(connector, None)


def test_bad_rules_are_refused() -> None:
    with pytest.raises(ValueError):
        AclRule(glob="finance/**", allow=["finance"])
    with pytest.raises(ValueError):
        AclRule(glob="/abs/**", allow=["group:finance"])


def test_a_link_out_of_the_share_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("root password")
    share = tmp_path / "share"
    _tree(share, {"a.txt": "a", "inside/b.txt": "b"})
    (share / "leak.txt").symlink_to(secret)
    (share / "leakdir").symlink_to(tmp_path, target_is_directory=True)
    (share / "ok.txt").symlink_to(share / "a.txt")
    config = FilesystemConfig(root=share, follow_symlinks=True)
    changes, _ = run(FilesystemConnector(config), None)
    # ok.txt is a.txt: one document under its real path, not two (tests/security/test_links.py).
    assert set(upserts(changes)) == {"a.txt", "inside/b.txt"}
    assert set(failures(changes)) == {"leak.txt", "leakdir"}


def test_an_unlistable_folder_is_a_failure_not_a_deletion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tree(tmp_path, {"a.txt": "a", "team/b.txt": "b", "team/deep/c.txt": "c"})
    connector = FilesystemConnector(FilesystemConfig(root=tmp_path))
    _, checkpoint = run(connector, None)
    real = os.scandir

    def scandir(path: Any) -> Any:  # a fake outage of one folder (we run as root here)
        if Path(path).name == "team":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    changes, after = run(connector, checkpoint)
    assert deletes(changes) == set()
    assert set(failures(changes)) == {"team/"}
    assert set(after.files) == {"a.txt", "team/b.txt", "team/deep/c.txt"}
