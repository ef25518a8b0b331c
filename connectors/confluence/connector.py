"""The ``confluence`` connector: the pages of Confluence Cloud spaces, with read ACLs.

Every sync lists every page of every configured space (v2, metadata only, 250 a request)
and computes each page's ACL (the space's read permission intersected with the read
restrictions of the page and its ancestors, see ``acl.py``). It then yields:

* from no checkpoint: every page, bodies fetched (v2 ``body-format=storage``);
* from a checkpoint: pages whose version number changed (body fetched again) or whose ACL
  changed (the stored content hash, so the pipeline only updates the ACL), and a
  ``Delete`` for each page of the checkpoint no longer listed (trashed, purged, moved out,
  or hidden from the account).

Why not a last-modified cursor: v2 cannot filter by date, and neither restriction edits nor
deletions touch a page's last-modified date, so the id listing is needed on every sync
anyway; the version number in it is an exact change signal without a clock-skew window.

A space that cannot be read is one ``Failure`` (``<KEY>/``) and nothing in it is deleted.
A page whose restrictions or body cannot be read is a ``Failure`` and keeps its place in
the checkpoint (fetched again next time).
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Callable, Generator, Iterator, Mapping
from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

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
    malformed,
)
from connectors.confluence.acl import (
    Level,
    account_principal,
    effective_acl,
    email_principal,
    fingerprint,
    group_principal,
)
from connectors.confluence.client import ConfluenceClient, Missing, Restriction
from connectors.confluence.config import ConfluenceConfig
from connectors.errors import ConfigError, CredentialError, SourceError
from connectors.http import HttpClient


class PageState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(description="The page's version number; 0 = fetch again.")
    content_hash: str
    acl: str = Field(description="Fingerprint of the ACL last yielded.")


class ConfluenceCheckpoint(Checkpoint):
    pages: dict[str, PageState] = Field(
        default_factory=dict, description="External id (<SPACE>/<page id>) → state."
    )


def _reader(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def render(title: str, storage: str) -> bytes:
    """The page as an HTML document: its title, then the storage-format (XHTML) body."""
    t = html.escape(title)
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{t}</title></head>'
        f"<body><h1>{t}</h1>\n{storage}\n</body></html>\n"
    ).encode()


def _hash(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _Unreadable(Exception):
    """A page's ACL cannot be computed (a restriction or ancestor listing is refused)."""


class _Space:
    """One space's listing and ACL inputs, for one sync."""

    def __init__(self, key: str, data: Mapping[str, Any], pages: list[Mapping[str, Any]]):
        self.key = key
        self.id = str(data["id"])
        self.pages = {str(p["id"]): p for p in pages if "id" in p}
        self.level = Level(frozenset(), frozenset())

    def external_id(self, page_id: str) -> str:
        return f"{self.key}/{page_id}"


class ConfluenceConnector:
    kind: ClassVar[str] = "confluence"
    config_model: ClassVar[type[ConfluenceConfig]] = ConfluenceConfig
    checkpoint_model: ClassVar[type[ConfluenceCheckpoint]] = ConfluenceCheckpoint

    def __init__(
        self,
        config: ConfluenceConfig,
        *,
        transport: Any = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.config = config
        self._transport = transport
        self._sleep = sleep
        self._client: ConfluenceClient | None = None
        self._reset_caches()

    def _reset_caches(self) -> None:
        self._restrictions: dict[str, Restriction | None] = {}
        self._ancestors: dict[str, list[str] | None] = {}
        self._group_names: dict[str, str] | None = None  # group id → name
        self._members: dict[str, frozenset[str] | None] = {}  # group principal → users
        self._emails: dict[str, str | None] = {}

    @property
    def client(self) -> ConfluenceClient:
        # Built on first use: the token is resolved only when we talk to the site.
        if self._client is None:
            token = self.config.api_token.resolve().get_secret_value()
            kwargs: dict[str, Any] = {"transport": self._transport}
            if self._sleep is not None:
                kwargs["sleep"] = self._sleep
            http = HttpClient(
                self.config.base_url,
                auth=(self.config.email, token),
                headers={"Accept": "application/json"},
                timeout=self.config.timeout,
                **kwargs,
            )
            self._client = ConfluenceClient(http, self.config.page_limit)
        return self._client

    # -- check -----------------------------------------------------------------------------

    def check(self) -> None:
        where = f"Confluence at {self.config.base_url}"
        missing = []
        for key in self.config.spaces:
            try:
                space = self.client.space(key)
            except CredentialError as exc:
                raise CredentialError(
                    f"{where} refused {self.config.email} with the API token from "
                    f"{self.config.api_token.describe()}: check the email and the token ({exc})"
                ) from exc
            except Missing:
                space = None
            if space is None:
                missing.append(key)
        if missing:
            raise ConfigError(
                f"{where}: no space {', '.join(missing)} visible to {self.config.email} "
                "(check the key and that the account may view the space)"
            )

    # -- principals ------------------------------------------------------------------------

    def _user(self, user: Mapping[str, Any]) -> str | None:
        account_id = user.get("accountId")
        if not isinstance(account_id, str) or not account_id:
            return None
        if self.config.user_id_field == "accountId":
            return account_principal(account_id)
        if "email" in user:
            self._emails.setdefault(account_id, user.get("email") or None)
        return self._user_by_id(account_id)

    def _user_by_id(self, account_id: str) -> str | None:
        if self.config.user_id_field == "accountId":
            return account_principal(account_id)
        if account_id not in self._emails:
            try:
                email = self.client.user(account_id).get("email")
            except Missing:
                email = None
            self._emails[account_id] = email if isinstance(email, str) else None
        return email_principal(self._emails[account_id])

    def _group_directory(self) -> dict[str, str]:
        if self._group_names is None:
            try:
                self._group_names = {
                    str(g["id"]): str(g["name"])
                    for g in self.client.groups()
                    if g.get("id") and g.get("name")
                }
            except Missing:
                self._group_names = {}  # no group can be named: groups grant nothing
        return self._group_names

    def _members_of(self, group: str) -> frozenset[str] | None:
        """Users of a group principal (``None`` when they cannot be read: fail closed)."""
        if group not in self._members:
            ids = [i for i, n in self._group_directory().items() if group_principal(n) == group]
            users: set[str] = set()
            try:
                for group_id in ids:
                    for member in self.client.group_members(group_id):
                        if (p := self._user(member)) is not None:
                            users.add(p)
                self._members[group] = frozenset(users) if ids else None
            except Missing:
                self._members[group] = None
        return self._members[group]

    def _space_level(self, space_id: str) -> Level:
        users: set[str] = set()
        groups: set[str] = set()
        for perm in self.client.space_permissions(space_id):
            op = perm.get("operation") or {}
            if op.get("key") != "read" or op.get("targetType") != "space":
                continue
            principal = perm.get("principal") or {}
            kind, pid = principal.get("type"), principal.get("id")
            if not isinstance(pid, str) or not pid:
                continue
            if kind == "user":
                if (u := self._user_by_id(pid)) is not None:
                    users.add(u)
            elif kind == "group":
                name = self._group_directory().get(pid)
                if name is not None and (g := group_principal(name)) is not None:
                    groups.add(g)
            # Roles, anonymous and anything newer grant nothing here: fail closed.
        return Level(frozenset(users), frozenset(groups))

    # -- ACLs ------------------------------------------------------------------------------

    def _restriction_level(self, content_id: str) -> Level | None:
        """The content's read restriction as a level; ``None`` when it has none."""
        if content_id not in self._restrictions:
            try:
                self._restrictions[content_id] = self.client.read_restriction(content_id)
            except Missing:
                self._restrictions[content_id] = None
        restriction = self._restrictions[content_id]
        if restriction is None:
            raise _Unreadable(f"the read restrictions of content {content_id} cannot be read")
        users = {p for u in restriction.users if (p := self._user(u)) is not None}
        groups = {p for _, name in restriction.groups if (p := group_principal(name)) is not None}
        if not restriction.users and not restriction.groups:
            return None
        # A restriction naming only principals we cannot map still restricts: an empty level.
        return Level(frozenset(users), frozenset(groups))

    def _chain(self, space: _Space, page_id: str) -> list[str]:
        """The page and its ancestors (nearest first)."""
        chain: list[str] = []
        current: str | None = page_id
        while current is not None and current in space.pages and current not in chain:
            chain.append(current)
            parent = space.pages[current].get("parentId")
            current = str(parent) if parent else None
        if current is not None and current not in chain:
            # The parent is not a listed page (a folder, or a page hidden from us): ask v2.
            top = chain[-1]
            if top not in self._ancestors:
                try:
                    self._ancestors[top] = self.client.ancestors(top)
                except Missing:
                    self._ancestors[top] = None
            above = self._ancestors[top]
            if above is None:
                raise _Unreadable(f"the ancestors of page {top} cannot be listed")
            chain.extend(reversed(above))
        return chain

    def _acl(self, space: _Space, page_id: str) -> Acl:
        levels = [space.level]
        for content_id in self._chain(space, page_id):
            level = self._restriction_level(content_id)
            if level is not None:
                levels.append(level)
        return effective_acl(levels, self._members_of)

    # -- documents -------------------------------------------------------------------------

    def _document(
        self,
        space: _Space,
        page: Mapping[str, Any],
        acl: Acl,
        content_hash: str,
        data: bytes | None,
    ) -> SourceDocument:
        page_id = str(page["id"])
        version = page.get("version") or {}
        webui = (page.get("_links") or {}).get("webui")
        metadata = {"space": space.key, "status": str(page.get("status", ""))}
        if page.get("parentId"):
            metadata["parent_id"] = str(page["parentId"])
        if version.get("authorId"):
            metadata["last_editor"] = str(version["authorId"])
        return SourceDocument(
            external_id=space.external_id(page_id),
            title=str(page.get("title") or page_id),
            acl=acl,
            content_hash=content_hash,
            read=_reader(data)
            if data is not None
            else self._lazy_read(page_id, str(page.get("status") or "current")),
            filename=f"{page_id}.html",
            url=f"{self.config.base_url}/wiki{webui}" if isinstance(webui, str) else None,
            mime_type="text/html",
            size=len(data) if data is not None else None,
            version=str(version.get("number", "")) or None,
            updated_at=_parse_time(version.get("createdAt")),
            author=str(page["authorId"]) if page.get("authorId") else None,
            metadata=metadata,
        )

    def _lazy_read(self, page_id: str, status: str) -> Callable[[], bytes]:
        def read() -> bytes:
            data, _ = self._fetch(page_id, status)
            return data

        return read

    def _fetch(self, page_id: str, status: str) -> tuple[bytes, Mapping[str, Any]]:
        page = self.client.page_body(page_id, status)
        storage = ((page.get("body") or {}).get("storage") or {}).get("value")
        if not isinstance(storage, str):
            raise SourceError(f"page {page_id} has no storage body")
        return render(str(page.get("title") or page_id), storage), page

    # -- the contract ----------------------------------------------------------------------

    def _spaces(self) -> Iterator[_Space | Failure]:
        for key in self.config.spaces:
            container = f"{key}/"
            try:
                data = self.client.space(key)
                if data is None:
                    yield Failure(container, "not_found", f"no space {key} visible to the account")
                    continue
                space = _Space(key, data, list(self.client.pages(str(data["id"]))))
                space.level = self._space_level(space.id)
            except Missing as exc:
                yield Failure(container, "forbidden", f"space {key} cannot be listed: {exc}")
                continue
            except SourceError as exc:
                yield Failure(container, "unavailable", str(exc))
                continue
            except MALFORMED_ITEM as exc:  # the space's listing is not what the API documents
                yield malformed(container, exc, f"space {key}")
                continue
            yield space

    def _page(
        self,
        space: _Space,
        page_id: str,
        page: Mapping[str, Any],
        before: PageState | None,
        state: dict[str, PageState],
    ) -> Iterator[Change]:
        """The change for one listed page, recording it in ``state``. Raises one of
        ``MALFORMED_ITEM`` (before yielding anything) when the page's data is not what
        the API documents."""
        external_id = space.external_id(page_id)
        try:
            acl = self._acl(space, page_id)
        except (_Unreadable, SourceError) as exc:
            if before is not None:
                state[external_id] = before.model_copy(update={"version": 0})
            yield Failure(external_id, "acl_unreadable", str(exc))
            return
        number = int((page.get("version") or {}).get("number") or 0)
        acl_print = fingerprint(acl)
        if before is not None and before.version == number and number > 0:
            state[external_id] = PageState(
                version=number, content_hash=before.content_hash, acl=acl_print
            )
            if before.acl != acl_print:
                yield Upsert(self._document(space, page, acl, before.content_hash, None))
            return
        try:
            data, fresh = self._fetch(page_id, str(page.get("status") or "current"))
        except Missing as exc:
            if before is not None:
                state[external_id] = before.model_copy(update={"version": 0})
            reason = "forbidden" if exc.status == 403 else "not_found"
            yield Failure(external_id, reason, f"the page body {exc}")
            return
        except SourceError as exc:
            if before is not None:
                state[external_id] = before.model_copy(update={"version": 0})
            yield Failure(external_id, "unreadable", str(exc))
            return
        # The body may be newer than the listing: describe the version we read.
        page = {**page, **{k: fresh[k] for k in ("title", "version") if k in fresh}}
        number = int((page.get("version") or {}).get("number") or 0)
        content_hash = _hash(data)
        state[external_id] = PageState(version=number, content_hash=content_hash, acl=acl_print)
        yield Upsert(self._document(space, page, acl, content_hash, data))

    def sync(
        self, since: ConfluenceCheckpoint | None
    ) -> Generator[Change, None, ConfluenceCheckpoint]:
        self._reset_caches()
        previous = since.pages if since else {}
        state: dict[str, PageState] = {}
        kept: list[str] = []  # containers that failed: their pages are kept as they were
        for space in self._spaces():
            if isinstance(space, Failure):
                kept.append(space.external_id)
                yield space
                continue
            for page_id, page in space.pages.items():
                external_id = space.external_id(page_id)
                before = previous.get(external_id)
                try:
                    yield from self._page(space, page_id, page, before, state)
                except MALFORMED_ITEM as exc:  # one odd page, never the whole sync
                    # Read again next time; never recorded as indexed when it was not.
                    if before is not None:
                        state[external_id] = before.model_copy(update={"version": 0})
                    else:
                        state.pop(external_id, None)
                    yield malformed(external_id, exc)
        for external_id in sorted(previous.keys() - state.keys()):
            if any(external_id.startswith(c) for c in kept):
                state[external_id] = previous[external_id]
            else:
                yield Delete(external_id)
        return ConfluenceCheckpoint(pages=state)

    def list_ids(self) -> Iterator[DocRef]:
        self._reset_caches()
        for space in self._spaces():
            if isinstance(space, Failure):
                continue
            for page_id, page in space.pages.items():
                try:
                    acl = self._acl(space, page_id)
                    number = (page.get("version") or {}).get("number")
                except (_Unreadable, SourceError):
                    continue
                except MALFORMED_ITEM:  # as sync(): a failure, not listed
                    continue
                yield DocRef(space.external_id(page_id), str(number) if number else None, acl)

    def memberships(self) -> Iterator[tuple[str, str]]:
        """``(user, group:confluence-<name>)`` for every member of every site group."""
        self._reset_caches()
        try:
            directory = {str(g["id"]): str(g["name"]) for g in self.client.groups() if g.get("id")}
        except Missing as exc:
            # Raise rather than yield nothing: the runtime would wipe the source's memberships.
            raise SourceError(f"the site's groups cannot be listed: {exc}") from exc
        for group_id, name in sorted(directory.items(), key=lambda x: x[1]):
            group = group_principal(name)
            if group is None:
                continue
            try:
                members = list(self.client.group_members(group_id))
            except Missing:
                continue  # a group we may not list: its members get nothing from it
            for member in members:
                if (user := self._user(member)) is not None:
                    yield user, group
