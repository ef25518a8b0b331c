"""One folder walker for the connectors that read a tree of files (filesystem, markdown_wiki).

What a walk promises, and why:

- **One document per real file.** Files are identified by ``(st_dev, st_ino)``. A file
  reached by several paths (symbolic links, hard links, a bind mount or a followed link
  that shows a folder twice) is one :class:`FileEntry`. Its ``relpath`` (the document's id)
  is a path the walk reached it by *without following any link* (its real path; for hard
  links the first in sorted order among the wanted ones). A link to a file the walk did
  not reach by itself (excluded, hidden, below a folder not entered) brings nothing in.
  ``paths`` lists every path it is reached by, so a connector can give it the intersection
  of their ACLs: a link never widens access, whichever side of it the rules favour.
- **Loop-safe.** Folders are visited once each, by ``(st_dev, st_ino)``: a link to ``..``,
  a link loop or a bind mount of an ancestor is walked once. A folder met again (through
  a followed link or a bind mount) is recorded as an *alias*: the files below it are also
  reached by the alias's paths (one level of aliasing is expanded, which is finite; aliases
  of aliases only add narrower paths and are not needed for "never wider than the real
  path"). A file with more than :data:`MAX_PATHS` paths is refused (``too_many_paths``).
- **Links never leave root.** A link whose target (``realpath``) is outside ``root`` is
  refused (``unreadable``, "link points outside root"); a broken link or a link loop is
  ``unreadable``. Links to folders are followed only with ``follow_symlinks``, and then they
  only add alias paths: the folder itself is walked by its real path.
- **Special files are never opened.** A FIFO, socket or device is a :class:`Skipped` entry
  (``special_file``): opening a FIFO would block the sync. :func:`open_regular` re-checks at
  open time (non-blocking, no link followed, same inode as listed) so a file swapped for a
  FIFO or a link after the walk is refused instead of read.
- **Names as os gives them.** ``relpath`` and ``paths`` are ``str`` as ``os`` spells them,
  non-UTF-8 bytes as lone surrogates, so ACL globs match the real bytes. What a connector
  *emits* goes through :func:`connectors.names.escape_name` (``external_id``, ``failure``).

Nothing is yielded before the whole tree is listed: the paths of a file are only known then.
Memory is one small record per file, as the connectors' checkpoints already are.

Imports: stdlib and connectors.base / connectors.names.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from connectors.base import Failure
from connectors.names import escape_name

__all__ = ["MAX_PATHS", "FileEntry", "Skipped", "escape_name", "open_regular", "walk"]

#: More paths than this to one file (many aliases of its folders) and it is refused.
MAX_PATHS = 256

Key = tuple[int, int]

_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def _kind(mode: int) -> str:
    for test, name in _SPECIAL_KINDS:
        if test(mode):
            return name
    return f"special file (mode {stat.S_IFMT(mode):o})"


def _key(st: os.stat_result) -> Key:
    return (st.st_dev, st.st_ino)


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


@dataclass(frozen=True)
class FileEntry:
    """A regular file, once, with every path it is reached by (``relpath`` first)."""

    relpath: str
    path: Path
    st: os.stat_result
    paths: tuple[str, ...]

    @property
    def external_id(self) -> str:
        return escape_name(self.relpath)

    @property
    def key(self) -> Key:
        return _key(self.st)


@dataclass(frozen=True)
class Skipped:
    """An entry the walk could not take: a folder that cannot be listed (``relpath`` ends
    in ``/``), an unreadable entry, a link out of root, a special file."""

    relpath: str
    reason: str
    detail: str

    @property
    def external_id(self) -> str:
        return escape_name(self.relpath)

    def failure(self) -> Failure:
        return Failure(self.external_id, self.reason, escape_name(self.detail))


@dataclass
class _Found:
    st: os.stat_result
    walked: list[str] = field(default_factory=list)  # paths reached without a link
    linked: list[str] = field(default_factory=list)  # paths that are symbolic links to it


def _error(exc: OSError) -> str:
    return f"{type(exc).__name__}: {exc}"


def walk(
    root: Path,
    *,
    follow_symlinks: bool,
    skip: Callable[[str], bool],
    wanted: Callable[[str], bool] = lambda _path: True,
) -> Iterator[FileEntry | Skipped]:
    """Every wanted regular file below ``root`` (resolved), once, and every entry skipped
    for a reason, sorted by path. ``skip(relpath)`` prunes an entry silently (excluded by
    configuration; a pruned folder is not entered); ``wanted(relpath)`` says which files
    are documents (problems with unwanted files are not reported)."""
    files: dict[Key, _Found] = {}
    dirs: dict[Key, str] = {}
    aliases: dict[str, list[str]] = {}
    links: list[tuple[str, Path]] = []
    out: list[FileEntry | Skipped] = []

    dirs[_key(os.stat(root))] = ""
    stack: list[tuple[str, Path]] = [("", root)]
    while stack:
        folder, folder_path = stack.pop()
        try:
            with os.scandir(folder_path) as it:
                entries = sorted(it, key=lambda e: e.name, reverse=True)
        except OSError as exc:
            # Unlistable for now: one failure for the folder ("x/"), never deletions below it.
            out.append(Skipped(folder + "/" if folder else "", "unreadable", _error(exc)))
            continue
        for entry in entries:
            rel = _join(folder, entry.name)
            if skip(rel):
                continue
            try:
                if entry.is_symlink():
                    links.append((rel, Path(entry.path)))
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:  # gone mid-walk, …
                if wanted(rel):
                    out.append(Skipped(rel, "unreadable", _error(exc)))
                continue
            if stat.S_ISDIR(st.st_mode):
                key = _key(st)
                if key in dirs:  # a bind mount showing a folder again
                    aliases.setdefault(dirs[key], []).append(rel)
                else:
                    dirs[key] = rel
                    stack.append((rel, Path(entry.path)))
            elif stat.S_ISREG(st.st_mode):
                files.setdefault(_key(st), _Found(st)).walked.append(rel)
            elif wanted(rel):
                out.append(Skipped(rel, "special_file", f"{_kind(st.st_mode)}: never opened"))

    for rel, link in links:
        _link(rel, link, root, follow_symlinks, wanted, files, dirs, aliases, out)

    for found in files.values():
        entry_or_skip = _entry(root, found, aliases, wanted)
        if entry_or_skip is not None:
            out.append(entry_or_skip)
    out.sort(key=lambda item: item.relpath)
    yield from out


def _link(
    rel: str,
    link: Path,
    root: Path,
    follow_symlinks: bool,
    wanted: Callable[[str], bool],
    files: dict[Key, _Found],
    dirs: dict[Key, str],
    aliases: dict[str, list[str]],
    out: list[FileEntry | Skipped],
) -> None:
    """Record one symbolic link: an alias of a folder or file the walk found, or a problem."""
    try:
        st: os.stat_result | None = os.stat(link)  # follows the link; never opens the target
        error = None
    except OSError as exc:  # broken, or a loop (ELOOP)
        st, error = None, exc
    real = Path(os.path.realpath(link))
    is_dir = st is not None and stat.S_ISDIR(st.st_mode)
    if not real.is_relative_to(root):
        # A link must not bring a file from elsewhere in under the share's rules.
        if is_dir or wanted(rel):
            out.append(Skipped(rel, "unreadable", f"link points outside {root}"))
        return
    if st is None:
        if wanted(rel):
            assert error is not None
            out.append(Skipped(rel, "unreadable", _error(error)))
        return
    key = _key(st)
    if is_dir:
        # A followed link only adds alias paths; the folder is walked by its real path. A
        # folder the walk did not enter (excluded, hidden) stays out.
        if follow_symlinks and key in dirs:
            aliases.setdefault(dirs[key], []).append(rel)
    elif stat.S_ISREG(st.st_mode):
        if key in files:
            files[key].linked.append(rel)
        # else: the target is excluded or below a folder that was not entered: it stays out.
    elif wanted(rel):
        out.append(Skipped(rel, "special_file", f"link to a {_kind(st.st_mode)}: never opened"))


def _entry(
    root: Path, found: _Found, aliases: dict[str, list[str]], wanted: Callable[[str], bool]
) -> FileEntry | Skipped | None:
    candidates = sorted(p for p in found.walked if wanted(p))
    if not candidates:
        return None  # no path that is a document (a wiki's image, say)
    relpath = candidates[0]
    direct = sorted({*found.walked, *found.linked})
    paths = {relpath, *direct}
    for p in direct:
        folder = posixpath.dirname(p)
        while True:
            rest = p[len(folder) + 1 :] if folder else p
            for alias in aliases.get(folder, ()):
                paths.add(_join(alias, rest))
            if not folder:
                break
            folder = posixpath.dirname(folder)
        if len(paths) > MAX_PATHS:
            return Skipped(
                relpath, "too_many_paths", f"reached by more than {MAX_PATHS} paths (links)"
            )
    ordered = (relpath, *sorted(paths - {relpath}))
    return FileEntry(relpath, root / relpath, found.st, ordered)


def open_regular(path: Path, key: Key) -> BinaryIO:
    """``path`` opened for reading if it is still the regular file the walk listed.

    Non-blocking (a FIFO put in its place does not hang us), without following a link in
    the last part, and checked by inode afterwards: ``OSError`` otherwise.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{escape_name(str(path))} is now a {_kind(st.st_mode)}")
        if _key(st) != key:
            raise OSError(f"{escape_name(str(path))} was replaced since it was listed")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path, key: Key, max_bytes: int) -> bytes:
    """The file's bytes, at most ``max_bytes`` of them (its size when it was listed): a file
    that grew since is ``OSError`` (read again at the next sync), never read unbounded."""
    with open_regular(path, key) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(f"{path} grew past {max_bytes} bytes since it was listed")
    return data
