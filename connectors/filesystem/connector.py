"""The ``filesystem`` connector: walks a folder tree, yields every file with its ACL.

The walk is :func:`connectors.walk.walk`: one document per real file (links and hard links
do not make copies), loop-safe, links out of root refused, special files never opened.
A file's ACL is the intersection of the ACLs of every path it is reached by (its first
matching rule, else ``default_acl``), so a link never widens access.

Ids, titles and checkpoint keys are the path's :func:`~connectors.names.escape_name` (valid
UTF-8 whatever bytes the name has); globs match the real name.

Incremental by mtime + size: a file whose mtime and size match the checkpoint reuses the
recorded content hash without being read; any other file is hashed. Files in the previous
checkpoint that are gone are yielded as deletes. ``sync(None)`` yields every file.
"""

from __future__ import annotations

import grp
import hashlib
import mimetypes
import os
import pwd
import stat
from collections.abc import Callable, Generator, Iterator
from datetime import UTC, datetime
from functools import reduce
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, Field

from connectors.base import (
    Acl,
    Change,
    Checkpoint,
    Delete,
    DocRef,
    Failure,
    SourceDocument,
    Upsert,
    covered_by,
)
from connectors.errors import ConfigError
from connectors.filesystem.config import FilesystemConfig
from connectors.globs import glob_match
from connectors.names import escape_name, quote_name
from connectors.walk import FileEntry, Key, Skipped, open_regular, read_regular, walk

_HASH_BLOCK = 1 << 20


class FileState(BaseModel):
    mtime_ns: int
    size: int
    hash: str


class FilesystemCheckpoint(Checkpoint):
    files: dict[str, FileState] = Field(default_factory=dict)


def _file_hash(path: Path, key: Key) -> str:
    digest = hashlib.sha256()
    with open_regular(path, key) as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def _reader(path: Path, key: Key, size: int) -> Callable[[], bytes]:
    return lambda: read_regular(path, key, size)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid-{uid}"


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid-{gid}"


def posix_acl(st: os.stat_result) -> Acl:
    """ACL implied by a file's owner, group and mode (see config.py)."""
    users = (f"user:{_user_name(st.st_uid)}",) if st.st_mode & stat.S_IRUSR else ()
    groups = (f"group:{_group_name(st.st_gid)}",) if st.st_mode & stat.S_IRGRP else ()
    return Acl(users=users, groups=groups, public=bool(st.st_mode & stat.S_IROTH))


class FilesystemConnector:
    kind: ClassVar[str] = "filesystem"
    config_model: ClassVar[type[FilesystemConfig]] = FilesystemConfig
    checkpoint_model: ClassVar[type[FilesystemCheckpoint]] = FilesystemCheckpoint

    def __init__(self, config: FilesystemConfig) -> None:
        self.config = config
        self.root = config.root.expanduser().resolve()
        self._unmatched = 0

    def check(self) -> None:
        if not self.root.exists():
            raise ConfigError(f"filesystem root {self.root} does not exist")
        if not self.root.is_dir():
            raise ConfigError(f"filesystem root {self.root} is not a folder")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise ConfigError(f"filesystem root {self.root} is not readable by this process")

    def rule_acl(self, relpath: str) -> Acl | None:
        """The ACL of the first rule matching ``relpath``; ``None`` when none does."""
        for rule in self.config.acl_rules:
            if glob_match(rule.glob, relpath):
                return Acl.of(rule.allow, rule.deny, public=rule.public)
        return None

    def _fallback(self, st: os.stat_result) -> Acl:
        return posix_acl(st) if self.config.default_acl == "posix" else Acl()

    def acl_for(self, relpath: str, st: os.stat_result) -> Acl:
        """The ACL one path gives a file: its first matching rule, else ``default_acl``."""
        acl = self.rule_acl(relpath)
        return self._fallback(st) if acl is None else acl

    def _acl(self, entry: FileEntry) -> tuple[Acl, bool]:
        """The file's ACL over every path it is reached by, and whether some path matched
        no rule."""
        acls = [self.rule_acl(p) for p in entry.paths]
        unmatched = any(a is None for a in acls)
        fallback = self._fallback(entry.st)
        acl = reduce(Acl.intersect, (fallback if a is None else a for a in acls))
        return acl, unmatched

    def _excluded(self, relpath: str) -> bool:
        return any(glob_match(g, relpath) for g in self.config.exclude)

    def _walk(self) -> Iterator[FileEntry | Skipped]:
        """Every file below root once, in a stable order, or why an entry was skipped."""
        self.check()
        return walk(self.root, follow_symlinks=self.config.follow_symlinks, skip=self._excluded)

    def _url(self, entry: FileEntry) -> str:
        if self.config.url_prefix:
            return self.config.url_prefix.rstrip("/") + "/" + quote_name(entry.relpath)
        return entry.path.as_uri()

    def _document(self, entry: FileEntry, acl: Acl, digest: str) -> SourceDocument:
        st = entry.st
        name = escape_name(entry.path.name)
        updated = datetime.fromtimestamp(st.st_mtime, UTC)
        return SourceDocument(
            external_id=entry.external_id,
            title=name,
            acl=acl,
            content_hash=digest,
            read=_reader(entry.path, entry.key, entry.st.st_size),
            filename=name,
            url=self._url(entry),
            mime_type=mimetypes.guess_type(name)[0],
            size=st.st_size,
            version=updated.isoformat(),
            updated_at=updated,
            author=escape_name(_user_name(st.st_uid)),
        )

    def sync(
        self, since: FilesystemCheckpoint | None
    ) -> Generator[Change, None, FilesystemCheckpoint]:
        previous = since.files if since else {}
        files: dict[str, FileState] = {}
        self._unmatched = 0
        for entry in self._walk():
            if isinstance(entry, Skipped):
                # Unreadable for now is not deleted; a folder's failure ("x/") covers its files.
                failure = entry.failure()
                files.update({k: previous[k] for k in covered_by(failure.external_id, previous)})
                yield failure
                continue
            doc_id, st = entry.external_id, entry.st
            known = previous.get(doc_id)
            if known and known.mtime_ns == st.st_mtime_ns and known.size == st.st_size:
                digest = known.hash
            else:
                try:
                    digest = _file_hash(entry.path, entry.key)
                except OSError as exc:
                    if known:
                        files[doc_id] = known
                    detail = escape_name(f"{type(exc).__name__}: {exc}")
                    yield Failure(doc_id, "unreadable", detail)
                    continue
            acl, unmatched = self._acl(entry)
            self._unmatched += unmatched
            files[doc_id] = FileState(mtime_ns=st.st_mtime_ns, size=st.st_size, hash=digest)
            yield Upsert(self._document(entry, acl, digest))
        for doc_id in sorted(previous.keys() - files.keys()):
            yield Delete(doc_id)
        return FilesystemCheckpoint(files=files)

    def sync_notes(self) -> dict[str, int]:
        """``unmatched_acl_rule``: files of the last sync that some path of matched no ACL
        rule, so ``default_acl`` decided (part of) their ACL."""
        return {"unmatched_acl_rule": self._unmatched}

    def list_ids(self) -> Iterator[DocRef]:
        for entry in self._walk():
            if isinstance(entry, Skipped):
                continue
            version = datetime.fromtimestamp(entry.st.st_mtime, UTC).isoformat()
            yield DocRef(entry.external_id, version, self._acl(entry)[0])
