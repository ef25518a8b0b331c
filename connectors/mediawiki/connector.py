"""The ``mediawiki`` connector: the pages of chosen namespaces of a MediaWiki wiki.

Full sync (no checkpoint, a changed ``namespaces``/ACL configuration, or a cursor older
than the wiki keeps recent changes): ``list=allpages`` per namespace (redirects excluded),
then the current revision's wikitext of up to 50 pages per request
(``prop=info|revisions&rvslots=main``), converted to markdown (``wikitext.py``).

Incremental sync: ``list=recentchanges`` from the cursor minus an overlap window, oldest
first. Every page an edit, creation or log event (deletion, restore, move, import, …)
touched is looked up again by page id and by title, and its *current* state decides: in a
synced namespace and not a redirect → upsert; missing, moved out of the synced namespaces
or turned into a redirect → delete. Re-reading state instead of replaying events makes
overlapping windows and interrupted runs harmless.

The external id is the page id (it survives moves); the checkpoint keeps each synced page's
title, to resolve a deletion reported by title and to delete pages a re-listing no longer
finds (the pipeline reconciles only syncs from no checkpoint).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import httpx
from pydantic import Field

from connectors.base import (
    MALFORMED_ITEM,
    Change,
    Checkpoint,
    Delete,
    DocRef,
    Failure,
    SourceDocument,
    Upsert,
    malformed,
)
from connectors.errors import ConfigError, CredentialError, SourceError
from connectors.mediawiki.client import BATCH, MediaWikiApi
from connectors.mediawiki.config import MediaWikiConfig
from connectors.mediawiki.wikitext import convert

#: Content models whose text is indexed as it is (wikitext is converted to markdown).
PLAIN_MODELS = frozenset({"text", "css", "sanitized-css", "javascript", "json", "Scribunto"})
RC_TYPES = "edit|new|log"
#: A cursor this close to the recent-changes horizon is treated as past it.
HORIZON_MARGIN = timedelta(hours=1)


class MediaWikiCheckpoint(Checkpoint):
    cursor: str | None = Field(
        default=None, description="Timestamp of the newest recent change seen (ISO 8601, UTC)."
    )
    scope: str = Field(default="", description="Fingerprint of namespaces and ACL settings.")
    pages: dict[str, str] = Field(
        default_factory=dict, description="Page id → full title of every synced page."
    )


def _reader(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def _timestamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _format(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _batches(items: Iterable[str], size: int = BATCH) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class MediaWikiConnector:
    kind: ClassVar[str] = "mediawiki"
    config_model: ClassVar[type[MediaWikiConfig]] = MediaWikiConfig
    checkpoint_model: ClassVar[type[MediaWikiCheckpoint]] = MediaWikiCheckpoint

    def __init__(
        self,
        config: MediaWikiConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.api = MediaWikiApi(config, transport=transport, sleep=sleep)
        self._now = now
        self._site: dict[str, Any] | None = None

    # -- site ------------------------------------------------------------------------------

    def site(self) -> dict[str, Any]:
        """``meta=siteinfo`` general info and namespaces, fetched once."""
        if self._site is None:
            body = self.api.get(
                {"action": "query", "meta": "siteinfo", "siprop": "general|namespaces"}
            )
            query = body.get("query")
            if not isinstance(query, dict) or not isinstance(query.get("general"), dict):
                raise SourceError(
                    f"{self.config.base_url}/api.php returned no siteinfo; is it a MediaWiki?"
                )
            self._site = query
        return self._site

    def article_url(self, title: str) -> str:
        pattern = self.config.article_path
        if pattern is None:
            general = self.site()["general"]
            server = str(general.get("server", ""))
            if server.startswith("//"):
                server = urlsplit(self.config.base_url).scheme + ":" + server
            pattern = server + str(general.get("articlepath", "/index.php/$1"))
        return pattern.replace("$1", quote(title.replace(" ", "_"), safe=";@$!*(),/~:"))

    def check(self) -> None:
        general = self.site()["general"]
        if self.api.logs_in:
            body = self.api.get({"action": "query", "meta": "userinfo", "uiprop": "rights"})
            info = body.get("query", {}).get("userinfo", {})
            if info.get("anon") or not info.get("id"):
                raise CredentialError(
                    f"{self.config.base_url}/api.php sees an anonymous user: the credentials "
                    "were not accepted"
                )
            if "read" not in info.get("rights", ["read"]):
                raise CredentialError(f"user {info.get('name')!r} lacks the 'read' right")
        known = self.site().get("namespaces", {})
        if isinstance(known, dict) and known:
            missing = [n for n in self.config.namespaces if str(n) not in known]
            if missing:
                raise ConfigError(
                    f"the wiki {general.get('sitename', '')!r} has no namespace {missing}; "
                    f"it has {sorted(int(k) for k in known)}"
                )

    # -- listing ---------------------------------------------------------------------------

    def _allpages(self, ns: int) -> Iterator[tuple[str, int, str]]:
        """(page id, namespace, title) of every non-redirect page of ``ns``."""
        params = {
            "list": "allpages",
            "apnamespace": ns,
            "aplimit": "max",
            "apfilterredir": "nonredirects",
        }
        for body in self.api.query(params):
            for page in body.get("query", {}).get("allpages", []):
                yield str(page["pageid"]), int(page["ns"]), str(page["title"])

    def _pages(self, key: str, values: Iterable[str]) -> Iterator[dict[str, Any]]:
        """Current state (info + latest revision) of pages by ``pageids`` or ``titles``."""
        for batch in _batches(values):
            merged: dict[str, dict[str, Any]] = {}
            params = {
                "prop": "info|revisions",
                key: "|".join(batch),
                "rvprop": "ids|timestamp|user|content",
                "rvslots": "main",
            }
            # Large pages make the API return some pages without revisions and an
            # rvcontinue: the continuations fill them in.
            for body in self.api.query(params):
                for page in body.get("query", {}).get("pages", []):
                    slot = str(page.get("pageid") or "title:" + str(page.get("title")))
                    if slot in merged:
                        if page.get("revisions"):
                            merged[slot]["revisions"] = page["revisions"]
                    else:
                        merged[slot] = dict(page)
            yield from merged.values()

    def _document(self, page: dict[str, Any]) -> SourceDocument | Failure:
        pid = str(page["pageid"])
        title = str(page["title"])
        revisions = page.get("revisions") or []
        if not revisions:
            return Failure(pid, "unreadable", f"{title}: the API returned no revision")
        rev = revisions[0]
        slot = (rev.get("slots") or {}).get("main") or {}
        if slot.get("texthidden"):
            return Failure(pid, "forbidden", f"{title}: the current revision's text is hidden")
        content = slot.get("content")
        if slot.get("textmissing") or not isinstance(content, str):
            return Failure(pid, "unreadable", f"{title}: the current revision has no text")
        if len(content.encode("utf-8")) > self.config.max_page_bytes:
            return Failure(
                pid, "too_large", f"{title}: wikitext over {self.config.max_page_bytes} bytes"
            )
        model = str(slot.get("contentmodel", "wikitext"))
        metadata = {"namespace": str(page["ns"]), "revision": str(rev.get("revid", ""))}
        if model == "wikitext":
            converted = convert(content)
            text, suffix = converted.markdown, "md"
            if converted.categories:
                metadata["categories"] = ", ".join(converted.categories)
        elif model in PLAIN_MODELS:
            text, suffix = content, "txt"
            metadata["content_model"] = model
        else:
            return Failure(pid, "unsupported_type", f"{title}: content model {model!r}")
        # An empty page is still findable by its title.
        data = (text if text.strip() else title).encode("utf-8")
        # The title heads every chunk, so a move (a new title) must change the hash too.
        digest = hashlib.sha256(title.encode("utf-8") + b"\x00" + data).hexdigest()
        timestamp = rev.get("timestamp")
        return SourceDocument(
            external_id=pid,
            title=title,
            acl=self.config.acl_for(int(page["ns"]), title),
            content_hash="sha256:" + digest,
            read=_reader(data),
            filename=f"{pid}.{suffix}",
            url=self.article_url(title),
            mime_type="text/markdown" if suffix == "md" else "text/plain",
            size=len(data),
            version=str(rev["revid"]) if "revid" in rev else None,
            updated_at=_timestamp(timestamp) if isinstance(timestamp, str) else None,
            author=rev.get("user") if isinstance(rev.get("user"), str) else None,
            metadata=metadata,
        )

    def _emit(self, pages: Iterable[dict[str, Any]], seen: dict[str, str]) -> Iterator[Change]:
        """Upsert (or fail) each page, recording it in ``seen`` (id → title)."""
        for page in pages:
            raw_id = page.get("pageid") if isinstance(page, dict) else None
            if not isinstance(raw_id, int | str) or not str(raw_id):
                continue  # nothing to name it by: the API sent no page
            pid = str(raw_id)
            try:
                item = self._document(page)
                seen[pid] = str(page["title"])
            except MALFORMED_ITEM as exc:  # one odd page, never the whole sync
                seen.setdefault(pid, str(page.get("title") or ""))  # failed is not deleted
                yield malformed(pid, exc, f"page {page.get('title')!r}")
                continue
            yield Upsert(item) if isinstance(item, SourceDocument) else item

    # -- recent changes ----------------------------------------------------------------------

    def _newest_change(self) -> str:
        """The newest recent change's timestamp (server clock), else the server's time."""
        body = self.api.get(
            {
                "action": "query",
                "list": "recentchanges",
                "rcprop": "timestamp",
                "rctype": RC_TYPES,
                "rclimit": 1,
            }
        )
        changes = body.get("query", {}).get("recentchanges", [])
        if changes and isinstance(changes[0].get("timestamp"), str):
            return str(changes[0]["timestamp"])
        server_time = self.site()["general"].get("time")
        return str(server_time) if isinstance(server_time, str) else _format(self._now())

    def _recent_changes(self, start: datetime) -> Iterator[dict[str, Any]]:
        params = {
            "list": "recentchanges",
            "rcstart": _format(start),
            "rcdir": "newer",
            "rcprop": "title|ids|timestamp|loginfo|user",
            "rctype": RC_TYPES,
            "rclimit": "max",
        }
        for body in self.api.query(params):
            yield from body.get("query", {}).get("recentchanges", [])

    def _stale(self, cursor: str) -> bool:
        horizon = self._now() - timedelta(days=self.config.rc_max_age_days) + HORIZON_MARGIN
        return _timestamp(cursor) - timedelta(seconds=self.config.overlap_seconds) < horizon

    # -- the contract ------------------------------------------------------------------------

    def sync(
        self, since: MediaWikiCheckpoint | None
    ) -> Generator[Change, None, MediaWikiCheckpoint]:
        scope = self.config.scope_fingerprint()
        if (
            since is None
            or since.cursor is None
            or since.scope != scope
            or self._stale(since.cursor)
        ):
            return (yield from self._full(since, scope))
        return (yield from self._incremental(since, scope))

    def _full(
        self, since: MediaWikiCheckpoint | None, scope: str
    ) -> Generator[Change, None, MediaWikiCheckpoint]:
        # Taken before listing: whatever changes while we list is read again next time.
        cursor = self._newest_change()
        seen: dict[str, str] = {}
        for ns in self.config.namespaces:
            ids = (pid for pid, _, _ in self._allpages(ns))
            for batch in _batches(ids, BATCH):
                yield from self._emit(self._pages("pageids", batch), seen)
        # A page listed and then gone before its content was fetched is absent from both.
        for pid in sorted((since.pages if since else {}).keys() - seen.keys(), key=int):
            yield Delete(pid)
        return MediaWikiCheckpoint(cursor=cursor, scope=scope, pages=seen)

    def _incremental(
        self, since: MediaWikiCheckpoint, scope: str
    ) -> Generator[Change, None, MediaWikiCheckpoint]:
        assert since.cursor is not None
        known = since.pages
        by_title = {title: pid for pid, title in known.items()}
        synced = set(self.config.namespaces)
        cursor = since.cursor
        ids: set[str] = set()
        titles: set[str] = set()
        start = _timestamp(since.cursor) - timedelta(seconds=self.config.overlap_seconds)
        for rc in self._recent_changes(start):
            if isinstance(rc.get("timestamp"), str) and rc["timestamp"] > cursor:
                cursor = rc["timestamp"]
            pid = str(rc.get("pageid") or "")
            title = str(rc.get("title", ""))
            raw_params = rc.get("logparams")
            params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
            target_ns = params.get("target_ns")
            relevant = (
                rc.get("ns") in synced
                or pid in known
                or title in by_title
                or (rc.get("logtype") == "move" and target_ns in synced)
            )
            if not relevant:
                continue
            if pid and pid != "0":
                ids.add(pid)
            if rc.get("type") == "log" and title:
                titles.add(title)
                if rc.get("logtype") == "move" and isinstance(params.get("target_title"), str):
                    titles.add(params["target_title"])
        present: dict[str, dict[str, Any]] = {}
        gone: set[str] = set()
        pages = [
            *self._pages("pageids", sorted(ids, key=int)),
            *self._pages("titles", sorted(titles)),
        ]
        for page in pages:
            pid = str(page.get("pageid") or "")
            if page.get("missing") or page.get("invalid") or not pid:
                pid = pid or by_title.get(str(page.get("title")), "")
                if pid:
                    gone.add(pid)
            elif page.get("ns") in synced and not page.get("redirect"):
                present[pid] = page
            else:
                gone.add(pid)  # moved out of the synced namespaces, or now a redirect
        pages_now = dict(known)
        yield from self._emit(present.values(), pages_now)
        # Only ids we synced or were told about: a move's left-behind redirect is neither.
        for pid in sorted(gone - present.keys(), key=int):
            pages_now.pop(pid, None)
            if pid in known or pid in ids:
                yield Delete(pid)
        return MediaWikiCheckpoint(cursor=cursor, scope=scope, pages=pages_now)

    def list_ids(self) -> Iterator[DocRef]:
        for ns in self.config.namespaces:
            for pid, page_ns, title in self._allpages(ns):
                yield DocRef(pid, None, self.config.acl_for(page_ns, title))

    def memberships(self) -> Iterator[tuple[str, str]]:
        """The config's ``groups``: MediaWiki user groups grant rights, not page access."""
        for name, members in sorted(self.config.groups.items()):
            for member in members:
                yield member, f"group:{name}"
