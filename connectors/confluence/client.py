"""Confluence Cloud REST calls the connector makes, over one ``HttpClient``.

v2 (``/wiki/api/v2``) for spaces, space permissions and pages, paginated by an opaque
cursor: the next page is the ``_links.next`` URL of the body (or the ``Link: <…>;
rel="next"`` header). v1 (``/wiki/rest/api``) where v2 has nothing: content read
restrictions, groups and group members, user lookups; paginated by ``start``/``limit``
while the body has a ``_links.next``.

A next-page URL is followed only when it is relative or on the configured site, so the
credentials are never sent elsewhere. Imports: stdlib, httpx, connectors.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from connectors.errors import SourceError
from connectors.http import HttpClient

V2 = "/wiki/api/v2"
V1 = "/wiki/rest/api"

#: Statuses that mean "this one thing is gone or hidden from us", not "stop the sync".
MISSING = (403, 404)


class Missing(Exception):
    """A listing answered 403/404: the container cannot be read (it is not empty)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"answered {status}")
        self.status = status


@dataclass(frozen=True)
class Restriction:
    """A read restriction: raw v1 user objects and groups as ``(id, name)``."""

    users: tuple[Mapping[str, Any], ...]
    groups: tuple[tuple[str, str], ...]


class ConfluenceClient:
    def __init__(self, http: HttpClient, page_limit: int) -> None:
        self.http = http
        self.limit = page_limit
        self._origin = _origin(http.base_url)

    def _next_url(self, link: str) -> str:
        if link.startswith("http://") or link.startswith("https://"):
            if _origin(link) != self._origin:
                raise SourceError(f"refusing to follow a next link off the site: {link}")
            parts = urlsplit(link)
            return parts.path + (f"?{parts.query}" if parts.query else "")
        if not link.startswith("/"):
            link = "/" + link
        return link if link.startswith("/wiki/") else "/wiki" + link

    def _get(
        self, url: str, params: Mapping[str, Any] | None = None, allow: Collection[int] = ()
    ) -> tuple[Any, httpx.Response]:
        response = self.http.request("GET", url, params=params, allow=allow)
        if response.status_code in allow:
            raise Missing(response.status_code)
        try:
            return response.json(), response
        except ValueError as exc:
            raise SourceError(f"{url} did not return JSON: {exc}") from exc

    # -- pagination ------------------------------------------------------------------------

    def cursor_pages(
        self, path: str, params: Mapping[str, Any], allow: Collection[int] = MISSING
    ) -> Iterator[Mapping[str, Any]]:
        """Every result of a v2 listing, following the cursor."""
        url: str | None = path
        query: Mapping[str, Any] | None = {**params, "limit": self.limit}
        while url is not None:
            data, response = self._get(url, query, allow)
            yield from _results(data, url)
            link = (data.get("_links") or {}).get("next") or response.links.get("next", {}).get(
                "url"
            )
            url, query = (self._next_url(link), None) if link else (None, None)

    def offset_pages(
        self, path: str, params: Mapping[str, Any] | None = None, allow: Collection[int] = MISSING
    ) -> Iterator[Mapping[str, Any]]:
        """Every result of a v1 listing, by start/limit while there is a next page."""
        start = 0
        while True:
            data, _ = self._get(
                path, {**(params or {}), "start": start, "limit": self.limit}, allow
            )
            results = _results(data, path)
            yield from results
            if not results or not (data.get("_links") or {}).get("next"):
                return
            start += len(results)

    # -- calls -----------------------------------------------------------------------------

    def space(self, key: str) -> Mapping[str, Any] | None:
        data, _ = self._get(f"{V2}/spaces", {"keys": key, "limit": 1})
        for space in _results(data, "spaces"):
            if space.get("key") == key:
                return space
        return None

    def space_permissions(self, space_id: str) -> Iterator[Mapping[str, Any]]:
        return self.cursor_pages(f"{V2}/spaces/{space_id}/permissions", {})

    def pages(self, space_id: str) -> Iterator[Mapping[str, Any]]:
        """Current and archived pages (v2's default statuses), metadata only."""
        return self.cursor_pages(f"{V2}/spaces/{space_id}/pages", {"depth": "all"})

    def page_body(self, page_id: str, status: str = "current") -> Mapping[str, Any]:
        """One page with its storage body; ``status`` as listed (an archived page is only
        returned when asked for as archived)."""
        params = {"body-format": "storage", "status": status}
        data, _ = self._get(f"{V2}/pages/{page_id}", params, MISSING)
        if not isinstance(data, Mapping):
            raise SourceError(f"page {page_id}: expected an object")
        return data

    def ancestors(self, page_id: str) -> list[str]:
        """Ids of a page's ancestors, top-down (pages, folders, …)."""
        return [
            str(a["id"])
            for a in self.cursor_pages(f"{V2}/pages/{page_id}/ancestors", {})
            if "id" in a
        ]

    def read_restriction(self, content_id: str) -> Restriction:
        users: list[Mapping[str, Any]] = []
        groups: list[tuple[str, str]] = []
        start = 0
        path = f"{V1}/content/{content_id}/restriction/byOperation/read"
        while True:
            data, _ = self._get(path, {"start": start, "limit": self.limit}, MISSING)
            restrictions = (data.get("restrictions") or {}) if isinstance(data, Mapping) else {}
            page_users = (restrictions.get("user") or {}).get("results") or []
            page_groups = (restrictions.get("group") or {}).get("results") or []
            users.extend(u for u in page_users if isinstance(u, Mapping))
            groups.extend(
                (str(g.get("id", "")), str(g["name"]))
                for g in page_groups
                if isinstance(g, Mapping) and g.get("name")
            )
            # The site may cap the page size below what we asked: trust the limit it echoes.
            limit = (restrictions.get("user") or {}).get("limit") or self.limit
            if not isinstance(limit, int) or max(len(page_users), len(page_groups)) < limit:
                return Restriction(tuple(users), tuple(groups))
            start += limit

    def groups(self) -> Iterator[Mapping[str, Any]]:
        return self.offset_pages(f"{V1}/group")

    def group_members(self, group_id: str) -> Iterator[Mapping[str, Any]]:
        return self.offset_pages(f"{V1}/group/{group_id}/membersByGroupId")

    def user(self, account_id: str) -> Mapping[str, Any]:
        data, _ = self._get(f"{V1}/user", {"accountId": account_id}, MISSING)
        if not isinstance(data, Mapping):
            raise SourceError(f"user {account_id}: expected an object")
        return data


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _results(data: Any, where: str) -> list[Mapping[str, Any]]:
    results = data.get("results") if isinstance(data, Mapping) else None
    if not isinstance(results, list):
        raise SourceError(f"{where}: expected an object with a 'results' list")
    return [r for r in results if isinstance(r, Mapping)]
