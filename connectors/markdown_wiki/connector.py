"""The ``markdown_wiki`` connector: a folder (or git checkout) of markdown pages.

Walks ``root`` for pages with :func:`connectors.walk.walk` (``include``/``exclude`` globs;
hidden files and folders such as ``.git`` are never entered; one document per real file,
links never widen its ACL, special files never opened), renders each with
:mod:`connectors.markdown_wiki.pages` (front matter out, title kept as the heading,
relative links made absolute under ``base_url``) and yields it with the ACL of the first
matching rule, else ``default_acl``, else nobody, intersected over every path the page is
reached by and narrowed by its ``access`` list.
Ids, titles and checkpoint keys are :func:`~connectors.names.escape_name` of the path.

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
import posixpath
from collections.abc import Callable, Generator, Iterator
from datetime import UTC, datetime
from functools import reduce
from typing import ClassVar

from pydantic import BaseModel, Field

from connectors.base import (
    MALFORMED_ITEM,
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
    malformed,
)
from connectors.errors import ConfigError
from connectors.globs import glob_match
from connectors.markdown_wiki.config import MarkdownWikiConfig
from connectors.markdown_wiki.pages import Page, PageError, Site, render
from connectors.names import escape_name
from connectors.walk import FileEntry, Skipped, open_regular, walk

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


def narrow(acl: Acl, access: list[str] | None) -> Acl:
    """``acl`` narrowed by a page's ``access`` list: never wider than ``acl``.

    A public page becomes readable by the listed principals only; otherwise only the
    principals both ``acl`` and ``access`` name (exactly: groups are not expanded) remain.
    ``deny`` is kept either way.
    """
    if access is None:
        return acl
    return acl.intersect(Acl.of(access))


class PageTooLarge(Exception):
    """A page larger than ``max_page_bytes``: recorded ``too_large``, never read whole."""


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
        self._unmatched = 0

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

    def rule_acl(self, relpath: str) -> Acl | None:
        """The ACL of the first rule matching ``relpath``; ``None`` when none does."""
        for rule in self.config.acl_rules:
            if glob_match(rule.glob, relpath):
                return Acl.of(rule.allow, rule.deny, public=rule.public)
        return None

    def acl_for(self, relpath: str, access: list[str] | None = None) -> Acl:
        """The ACL one path gives a page: its first rule, else ``default_acl``, narrowed."""
        acl = self.rule_acl(relpath)
        return narrow(self.default_acl if acl is None else acl, access)

    def _acl(self, entry: FileEntry, access: list[str] | None) -> tuple[Acl, bool]:
        """The page's ACL over every path it is reached by, and whether some path matched
        no rule."""
        acls = [self.rule_acl(p) for p in entry.paths]
        acl = reduce(Acl.intersect, (self.default_acl if a is None else a for a in acls))
        return narrow(acl, access), any(a is None for a in acls)

    @staticmethod
    def _hidden(relpath: str) -> bool:
        return posixpath.basename(relpath).startswith(".")  # .git, .github, editor droppings

    def _walk(self) -> Iterator[FileEntry | Skipped]:
        """Every page below root once, in a stable order, or why an entry was skipped."""
        self.check()
        return walk(
            self.root,
            follow_symlinks=self.config.follow_symlinks,
            skip=self._hidden,
            wanted=self.is_page,
        )

    def _read(self, entry: FileEntry) -> Page:
        """Raises ``OSError``, ``PageError`` or ``PageTooLarge``."""
        limit = self.config.max_page_bytes
        if entry.st.st_size > limit:
            raise PageTooLarge(f"{entry.st.st_size} bytes > max_page_bytes ({limit})")
        with open_regular(entry.path, entry.key) as f:
            data = f.read(limit + 1)  # the file may have grown since it was listed
        if len(data) > limit:
            raise PageTooLarge(f"more than max_page_bytes ({limit}) bytes")
        page = render(data, entry.relpath, self.site)
        if page.access is not None:
            for principal in page.access:
                try:
                    check_principal(principal)
                except ValueError as exc:
                    raise PageError(f"front matter 'access': {exc}") from None
        return page

    def _lazy(self, entry: FileEntry) -> Callable[[], bytes]:
        return lambda: self._read(entry).text.encode("utf-8")

    def _document(
        self,
        entry: FileEntry,
        state: PageState,
        acl: Acl,
        read: Callable[[], bytes],
    ) -> SourceDocument:
        st = entry.st
        updated = datetime.fromtimestamp(st.st_mtime, UTC)
        stem = posixpath.splitext(posixpath.basename(entry.relpath))[0]
        return SourceDocument(
            external_id=entry.external_id,
            title=state.title,
            acl=acl,
            content_hash=state.hash,
            read=read,
            filename=escape_name(stem) + ".md",
            url=self.site.url_for(entry.relpath),
            mime_type="text/markdown",
            size=st.st_size,
            version=updated.isoformat(),
            updated_at=updated,
            author=state.author,
            metadata={**state.metadata, "path": entry.external_id},
        )

    # -- the contract ---------------------------------------------------------------------

    def sync(
        self, since: MarkdownWikiCheckpoint | None
    ) -> Generator[Change, None, MarkdownWikiCheckpoint]:
        previous = since.pages if since else {}
        reusable = since is not None and since.render == self.fingerprint
        pages: dict[str, PageState] = {}
        self._unmatched = 0
        for entry in self._walk():
            if isinstance(entry, Skipped):
                # Unreadable for now is not deleted; a folder's failure ("x/") covers its pages.
                failure = entry.failure()
                pages.update({k: previous[k] for k in covered_by(failure.external_id, previous)})
                yield failure
                continue
            doc_id, st = entry.external_id, entry.st
            known = previous.get(doc_id)
            if reusable and known and known.mtime_ns == st.st_mtime_ns and known.size == st.st_size:
                state, read = known, self._lazy(entry)
            else:
                try:
                    page = self._read(entry)
                except PageTooLarge as exc:
                    if known:
                        pages[doc_id] = known
                    yield Failure(doc_id, "too_large", str(exc))
                    continue
                except OSError as exc:
                    if known:
                        pages[doc_id] = known
                    yield Failure(doc_id, "unreadable", escape_name(f"{type(exc).__name__}: {exc}"))
                    continue
                except MALFORMED_ITEM as exc:  # PageError, or odd front matter a step missed
                    if known:
                        pages[doc_id] = known
                    yield malformed(doc_id, exc)
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
            acl, unmatched = self._acl(entry, state.access)
            self._unmatched += unmatched
            pages[doc_id] = state
            yield Upsert(self._document(entry, state, acl, read))
        for doc_id in sorted(previous.keys() - pages.keys()):
            yield Delete(doc_id)
        return MarkdownWikiCheckpoint(render=self.fingerprint, pages=pages)

    def sync_notes(self) -> dict[str, int]:
        """``unmatched_acl_rule``: pages of the last sync that some path of matched no ACL
        rule, so ``default_acl`` (or nobody) decided (part of) their ACL."""
        return {"unmatched_acl_rule": self._unmatched}

    def list_ids(self) -> Iterator[DocRef]:
        """Every readable page with its ACL; reads each page for its front matter ``access``."""
        for entry in self._walk():
            if isinstance(entry, Skipped):
                continue
            try:
                page = self._read(entry)
            except (OSError, PageTooLarge):
                continue
            except MALFORMED_ITEM:  # as sync(): a failure, not listed
                continue
            version = datetime.fromtimestamp(entry.st.st_mtime, UTC).isoformat()
            access = list(page.access) if page.access is not None else None
            yield DocRef(entry.external_id, version, self._acl(entry, access)[0])

    def memberships(self) -> Iterator[tuple[str, str]]:
        for name, members in sorted(self.config.groups.items()):
            for member in members:
                yield member, f"group:{name}"
