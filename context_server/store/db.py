"""Engine, migrations and sessions: one URL picks SQLite (embedded) or PostgreSQL; and the
data dir that holds the embedded store and index, kept private.

The data dir holds every document's text, the key hashes and the audit log: it is made
``0700``, and the SQLite file ``0600`` before SQLite opens it (SQLite gives its ``-wal``
and ``-shm`` files the database file's mode). At start, ``secure_data_dir`` tightens a
looser dir or file with a logged warning, and refuses (``DataDirError``) a data dir that is
not a folder or is owned by another user: tightening someone else's folder would fail, and
trusting it would hand them our data.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from context_server.errors import ContextServerError

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"

#: Files the server makes in the data dir, kept 0600.
PRIVATE_FILES = (
    "store.sqlite3",
    "store.sqlite3-wal",
    "store.sqlite3-shm",
    "store.sqlite3-journal",
    "server.json",
)
#: Folders the server makes in the data dir, kept 0700.
PRIVATE_DIRS = ("index",)


class DataDirError(ContextServerError):
    """The data dir cannot be made private: not a folder, or another user's."""


def _tighten(path: Path, private: int) -> None:
    """``path`` (ours) to ``private`` if it allows more, with a warning saying so."""
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        return  # a link's target is not ours to judge; the data dir's mode guards it
    if info.st_uid != os.geteuid():
        raise DataDirError(
            f"{path} is owned by uid {info.st_uid}, not by this user (uid {os.geteuid()}); "
            "the server refuses to keep its data there: give it to this user or choose "
            "another CONTEXT_SERVER_HOME"
        )
    current = stat.S_IMODE(info.st_mode)
    if current & ~private:
        log.warning(
            "%s was readable by others (mode %s); tightened to %s", path, oct(current), oct(private)
        )
        path.chmod(private)


def secure_data_dir(home: Path) -> None:
    """Create the data dir ``0700`` (or check it), its folders ``0700`` and its files
    ``0600``; ``DataDirError`` when it is not a folder or belongs to another user."""
    if home.exists() and not home.is_dir():
        raise DataDirError(f"the data dir {home} is not a folder (CONTEXT_SERVER_HOME)")
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise DataDirError(f"cannot create the data dir {home}: {exc}") from exc
    _tighten(home, 0o700)
    for name in PRIVATE_DIRS:
        folder = home / name
        if not folder.exists():
            folder.mkdir(mode=0o700)
        _tighten(folder, 0o700)
    for name in PRIVATE_FILES:
        if (home / name).exists():
            _tighten(home / name, 0o600)


def _create_private(path: Path) -> None:
    """The SQLite file, created ``0600`` before SQLite would create it ``0644``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            _create_private(Path(path))
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


#: PostgreSQL advisory lock key held while migrating (any constant shared by all processes).
MIGRATION_LOCK_KEY = 0x636F6E7465787400


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """One process migrates at a time: two processes started at once on a new store would
    otherwise both see no schema and both create it. SQLite: an exclusive lock on a file
    beside the database; PostgreSQL: an advisory lock taken inside the migration's
    transaction (see ``migrate``)."""
    database = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    fd = os.open(f"{database}.migrate.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def migrate(engine: Engine) -> None:
    """Bring the schema to the latest revision (idempotent; safe for concurrent starts)."""
    config = alembic_config()
    with _migration_lock(engine), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
