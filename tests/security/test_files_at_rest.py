"""The data dir holds every document's text, key hashes and the audit log: it is 0700 and
the files the server makes in it 0600, whatever the umask; at start a looser dir or file is
tightened (with a warning), and a data dir owned by someone else is refused."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from context_server.client import ServerInfo, write_server_file
from context_server.runtime import Runtime
from context_server.settings import Settings
from context_server.store import db
from indexing.embed import FakeHashEmbedder


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)  # the usual default: files 0644, folders 0755
    try:
        yield
    finally:
        os.umask(old)


def start(home: Path) -> Runtime:
    runtime = Runtime(Settings(home=home), embedder=FakeHashEmbedder())
    with runtime.sessions() as session:  # a write: the WAL and its index come into being
        runtime.create_key("user", "user:alice")
        session.commit()
    return runtime


def test_a_new_data_dir_and_its_store_are_private(tmp_path: Path, loose_umask: None) -> None:
    home = tmp_path / "data" / "home"
    runtime = start(home)
    try:
        assert mode(home) == 0o700
        store = home / "store.sqlite3"
        assert mode(store) == 0o600
        for companion in ("store.sqlite3-wal", "store.sqlite3-shm"):
            if (home / companion).exists():
                assert mode(home / companion) == 0o600, companion
        runtime.open_index()
        index = runtime.settings.index_path
        assert mode(index) == 0o700
        write_server_file(runtime.settings.server_file, ServerInfo("http://x", 1, "t"))
        assert mode(runtime.settings.server_file) == 0o600
    finally:
        runtime.close()


def test_a_loose_data_dir_is_tightened_at_start_with_a_warning(
    tmp_path: Path, loose_umask: None, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "home"
    start(home).close()
    home.chmod(0o755)
    (home / "store.sqlite3").chmod(0o644)
    (home / "server.json").write_text("{}")
    (home / "server.json").chmod(0o644)
    with caplog.at_level(logging.WARNING):
        runtime = start(home)
    try:
        assert mode(home) == 0o700
        assert mode(home / "store.sqlite3") == 0o600
        assert mode(home / "server.json") == 0o600
        warned = " ".join(r.getMessage() for r in caplog.records)
        assert str(home) in warned and "0o755" in warned
    finally:
        runtime.close()


def test_a_data_dir_owned_by_someone_else_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    me = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: me + 1)  # as if another user ran it
    with pytest.raises(db.DataDirError, match="owned by"):
        Runtime(Settings(home=home), embedder=FakeHashEmbedder())


def test_a_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.write_text("not a folder")
    with pytest.raises(db.DataDirError, match="not a folder"):
        Runtime(Settings(home=home), embedder=FakeHashEmbedder())
