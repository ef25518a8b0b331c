"""The ``filesystem`` connector: walks a folder tree, yields every file with its ACL.

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
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote

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

_HASH_BLOCK = 1 << 20


class FileState(BaseModel):
    mtime_ns: int
    size: int
    hash: str


class FilesystemCheckpoint(Checkpoint):
    files: dict[str, FileState] = Field(default_factory=dict)


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path``, links followed, is below ``root`` (realpath: loops do not raise)."""
    return Path(os.path.realpath(path)).is_relative_to(root)


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

    def check(self) -> None:
        if not self.root.exists():
            raise ConfigError(f"filesystem root {self.root} does not exist")
        if not self.root.is_dir():
            raise ConfigError(f"filesystem root {self.root} is not a folder")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise ConfigError(f"filesystem root {self.root} is not readable by this process")

    def acl_for(self, relpath: str, st: os.stat_result) -> Acl:
        for rule in self.config.acl_rules:
            if glob_match(rule.glob, relpath):
                return Acl.of(rule.allow, rule.deny, public=rule.public)
        return posix_acl(st)

    def _walk(self) -> Iterator[tuple[str, Path, os.stat_result | OSError]]:
        """Every file below root in a stable order, with its stat or why it has none."""
        self.check()
        stack = [self.root]
        while stack:
            folder = stack.pop()
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)
            except OSError as exc:
                # Unlistable for now: reported for the whole folder ("x/"), never as deletions.
                relfolder = folder.relative_to(self.root).as_posix()
                yield ("" if relfolder == "." else relfolder + "/"), folder, exc
                continue
            for entry in entries:
                path = Path(entry.path)
                relpath = path.relative_to(self.root).as_posix()
                if any(glob_match(g, relpath) for g in self.config.exclude):
                    continue
                try:
                    if entry.is_symlink() and not _inside(path, self.root):
                        # A link must not smuggle a file from outside the share in under the
                        # share's ACL rules.
                        yield relpath, path, PermissionError(f"link points outside {self.root}")
                    elif entry.is_dir(follow_symlinks=self.config.follow_symlinks):
                        stack.append(path)
                    elif entry.is_file(follow_symlinks=True):
                        yield relpath, path, entry.stat(follow_symlinks=True)
                except OSError as exc:  # a broken link loop, a file gone mid-walk, …
                    yield relpath, path, exc

    def _url(self, relpath: str, path: Path) -> str:
        if self.config.url_prefix:
            return self.config.url_prefix.rstrip("/") + "/" + quote(relpath)
        return path.as_uri()

    def _document(
        self, relpath: str, path: Path, st: os.stat_result, digest: str
    ) -> SourceDocument:
        read: Callable[[], bytes] = path.read_bytes
        updated = datetime.fromtimestamp(st.st_mtime, UTC)
        return SourceDocument(
            external_id=relpath,
            title=path.name,
            acl=self.acl_for(relpath, st),
            content_hash=digest,
            read=read,
            filename=path.name,
            url=self._url(relpath, path),
            mime_type=mimetypes.guess_type(path.name)[0],
            size=st.st_size,
            version=updated.isoformat(),
            updated_at=updated,
            author=_user_name(st.st_uid),
        )

    def sync(
        self, since: FilesystemCheckpoint | None
    ) -> Generator[Change, None, FilesystemCheckpoint]:
        previous = since.files if since else {}
        files: dict[str, FileState] = {}
        for relpath, path, st in self._walk():
            known = previous.get(relpath)
            if isinstance(st, OSError):
                # Unreadable for now is not deleted; a folder's failure ("x/") covers its files.
                files.update({k: previous[k] for k in covered_by(relpath, previous)})
                yield Failure(relpath, "unreadable", f"{type(st).__name__}: {st}")
                continue
            if known and known.mtime_ns == st.st_mtime_ns and known.size == st.st_size:
                digest = known.hash
            else:
                try:
                    digest = _file_hash(path)
                except OSError as exc:
                    if known:
                        files[relpath] = known
                    yield Failure(relpath, "unreadable", f"{type(exc).__name__}: {exc}")
                    continue
            files[relpath] = FileState(mtime_ns=st.st_mtime_ns, size=st.st_size, hash=digest)
            yield Upsert(self._document(relpath, path, st, digest))
        for relpath in sorted(previous.keys() - files.keys()):
            yield Delete(relpath)
        return FilesystemCheckpoint(files=files)

    def list_ids(self) -> Iterator[DocRef]:
        for relpath, _path, st in self._walk():
            if isinstance(st, OSError):
                continue
            version = datetime.fromtimestamp(st.st_mtime, UTC).isoformat()
            yield DocRef(relpath, version, self.acl_for(relpath, st))
