"""The ``markdown_wiki`` connector: a folder (or git checkout) of markdown pages.

Walks ``root`` for pages (``include``/``exclude`` globs; hidden files and folders such as
``.git`` are never entered), renders each with :mod:`connectors.markdown_wiki.pages` (front
matter out, title kept as the heading, relative links made absolute under ``base_url``) and
yields it with the ACL of the first matching rule, else ``default_acl``, else nobody.

Incremental as the filesystem connector: a page whose mtime and size match the checkpoint
(and whose URL settings have not changed) reuses the recorded hash, title and front matter
without being read; any other page is read and rendered. ``content_hash`` covers the title
and the rendered text, never the ACL, so a changed rule or ``access`` list re-indexes
nothing. Pages in the previous checkpoint that are gone are yielded as deletes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Generator, Iterator
from datetime import UTC, datetime
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
    check_principal,
    covered_by,
)
from connectors.errors import ConfigError
from connectors.globs import glob_match
from connectors.markdown_wiki.config import MarkdownWikiConfig
from connectors.markdown_wiki.pages import Page, PageError, Site, render

#: Bump when rendering changes, so every page is rendered again once.
RENDER_VERSION = 1


class PageState(BaseModel):
    """What a page was at the last sync: enough to yield it again without reading it."""

    mtime_ns: int
    size: int
    hash: str
    title: str
    author: str | None = None
    access: list[str] | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class MarkdownWikiCheckpoint(Checkpoint):
    render: str = Field(default="", description="Fingerprint of the URL settings pages used.")
    pages: dict[str, PageState] = Field(default_factory=dict)


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path``, links followed, is below ``root`` (realpath: loops do not raise)."""
    return Path(os.path.realpath(path)).is_relative_to(root)


def narrow(acl: Acl, access: list[str] | None) -> Acl:
    """``acl`` narrowed by a page's ``access`` list: never wider than ``acl``.

    A public page becomes readable by the listed principals only; otherwise only the
    principals both ``acl`` and ``access`` name (exactly: groups are not expanded) remain.
    ``deny`` is kept either way.
    """
    if access is None:
        return acl
    if acl.public:
        return Acl.of(access, acl.deny)
    listed = set(access)
    return Acl(
        users=tuple(u for u in acl.users if u in listed),
        groups=tuple(g for g in acl.groups if g in listed),
        deny=acl.deny,
    )


def _reader(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def _digest(page: Page) -> str:
    # The title heads every embedded chunk, so a changed title must change the hash.
    data = page.title.encode("utf-8") + b"\x00" + page.text.encode("utf-8")
    return "sha256:" + hashlib.sha256(data).hexdigest()


class MarkdownWikiConnector:
    kind: ClassVar[str] = "markdown_wiki"
    config_model: ClassVar[type[MarkdownWikiConfig]] = MarkdownWikiConfig
    checkpoint_model: ClassVar[type[MarkdownWikiCheckpoint]] = MarkdownWikiCheckpoint

    def __init__(self, config: MarkdownWikiConfig) -> None:
        self.config = config
        self.root = config.root.expanduser().resolve()
        self.site = Site(config.base_url, tuple(config.index_names))
        fingerprint = [RENDER_VERSION, config.base_url, sorted(config.index_names)]
        self.fingerprint = hashlib.sha256(json.dumps(fingerprint).encode()).hexdigest()[:16]
        self.default_acl = config.default_acl.to_acl() if config.default_acl else Acl()

    def check(self) -> None:
        if not self.root.exists():
            raise ConfigError(f"markdown_wiki root {self.root} does not exist")
        if not self.root.is_dir():
            raise ConfigError(f"markdown_wiki root {self.root} is not a folder")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise ConfigError(f"markdown_wiki root {self.root} is not readable by this process")

    # -- pages -----------------------------------------------------------------------------

    def is_page(self, relpath: str) -> bool:
        return any(glob_match(g, relpath) for g in self.config.include) and not any(
            glob_match(g, relpath) for g in self.config.exclude
        )

    def acl_for(self, relpath: str, access: list[str] | None = None) -> Acl:
        for rule in self.config.acl_rules:
            if glob_match(rule.glob, relpath):
                return narrow(Acl.of(rule.allow, rule.deny, public=rule.public), access)
        return narrow(self.default_acl, access)

    def _walk(self) -> Iterator[tuple[str, Path, os.stat_result | OSError]]:
        """Every page below root in a stable order, with its stat or why it has none."""
        self.check()
        stack = [self.root]
        seen = {self.root}
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
                if entry.name.startswith("."):  # .git, .github, editor droppings
                    continue
                path = Path(entry.path)
                relpath = path.relative_to(self.root).as_posix()
                try:
                    is_dir = entry.is_dir(follow_symlinks=True)
                    if entry.is_symlink() and not _inside(path, self.root):
                        # A link must not bring a page from elsewhere in under the wiki's rules.
                        if is_dir or self.is_page(relpath):
                            yield relpath, path, PermissionError(f"link points outside {self.root}")
                    elif is_dir:
                        real = Path(os.path.realpath(path))
                        if (self.config.follow_symlinks or not entry.is_symlink()) and (
                            real not in seen
                        ):
                            seen.add(real)
                            stack.append(path)
                    elif self.is_page(relpath):
                        yield relpath, path, entry.stat(follow_symlinks=True)
                except OSError as exc:  # a link loop, a page gone mid-walk, …
                    if self.is_page(relpath):
                        yield relpath, path, exc

    def _read(self, relpath: str, path: Path) -> Page:
        """Raises ``OSError`` or ``PageError``."""
        page = render(path.read_bytes(), relpath, self.site)
        if page.access is not None:
            for principal in page.access:
                try:
                    check_principal(principal)
                except ValueError as exc:
                    raise PageError(f"front matter 'access': {exc}") from None
        return page

    def _lazy(self, relpath: str, path: Path) -> Callable[[], bytes]:
        return lambda: self._read(relpath, path).text.encode("utf-8")

    def _document(
        self,
        relpath: str,
        st: os.stat_result,
        state: PageState,
        read: Callable[[], bytes],
    ) -> SourceDocument:
        updated = datetime.fromtimestamp(st.st_mtime, UTC)
        return SourceDocument(
            external_id=relpath,
            title=state.title,
            acl=self.acl_for(relpath, state.access),
            content_hash=state.hash,
            read=read,
            filename=Path(relpath).stem + ".md",
            url=self.site.url_for(relpath),
            mime_type="text/markdown",
            size=st.st_size,
            version=updated.isoformat(),
            updated_at=updated,
            author=state.author,
            metadata={**state.metadata, "path": relpath},
        )

    # -- the contract ---------------------------------------------------------------------

    def sync(
        self, since: MarkdownWikiCheckpoint | None
    ) -> Generator[Change, None, MarkdownWikiCheckpoint]:
        previous = since.pages if since else {}
        reusable = since is not None and since.render == self.fingerprint
        pages: dict[str, PageState] = {}
        for relpath, path, st in self._walk():
            known = previous.get(relpath)
            if isinstance(st, OSError):
                # Unreadable for now is not deleted; a folder's failure ("x/") covers its pages.
                pages.update({k: previous[k] for k in covered_by(relpath, previous)})
                yield Failure(relpath, "unreadable", f"{type(st).__name__}: {st}")
                continue
            if reusable and known and known.mtime_ns == st.st_mtime_ns and known.size == st.st_size:
                state, read = known, self._lazy(relpath, path)
            else:
                try:
                    page = self._read(relpath, path)
                except (OSError, PageError) as exc:
                    if known:
                        pages[relpath] = known
                    reason = "malformed" if isinstance(exc, PageError) else "unreadable"
                    yield Failure(relpath, reason, f"{type(exc).__name__}: {exc}")
                    continue
                state = PageState(
                    mtime_ns=st.st_mtime_ns,
                    size=st.st_size,
                    hash=_digest(page),
                    title=page.title,
                    author=page.author,
                    access=list(page.access) if page.access is not None else None,
                    metadata=page.metadata,
                )
                read = _reader(page.text.encode("utf-8"))
            pages[relpath] = state
            yield Upsert(self._document(relpath, st, state, read))
        for relpath in sorted(previous.keys() - pages.keys()):
            yield Delete(relpath)
        return MarkdownWikiCheckpoint(render=self.fingerprint, pages=pages)

    def list_ids(self) -> Iterator[DocRef]:
        """Every readable page with its ACL; reads each page for its front matter ``access``."""
        for relpath, path, st in self._walk():
            if isinstance(st, OSError):
                continue
            try:
                page = self._read(relpath, path)
            except (OSError, PageError):
                continue
            version = datetime.fromtimestamp(st.st_mtime, UTC).isoformat()
            access = list(page.access) if page.access is not None else None
            yield DocRef(relpath, version, self.acl_for(relpath, access))

    def memberships(self) -> Iterator[tuple[str, str]]:
        for name, members in sorted(self.config.groups.items()):
            for member in members:
                yield member, f"group:{name}"
