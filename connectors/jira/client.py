"""The Jira Cloud REST API v3 calls the connector makes, with their pagination.

- ``POST /rest/api/3/search/jql`` (enhanced search: ``nextPageToken``, ``isLast``), or the
  classic ``POST /rest/api/3/search`` (``startAt``/``maxResults``/``total``);
- ``GET /rest/api/3/myself``, ``/project/{key}``, ``/project/{key}/role`` and
  ``/project/{key}/role/{id}``;
- ``GET /rest/api/3/issuesecurityschemes/level/member?levelId=`` (``startAt``/``isLast``);
- ``GET /rest/api/3/group/member`` (``startAt``/``isLast``) and ``GET /rest/api/3/user``;
- ``GET /rest/api/3/issue/{id}/comment`` (``startAt``/``total``), with
  ``expand=properties`` for write-back, and ``GET /rest/api/3/comment/{id}/properties/{key}``;
- ``GET /rest/api/3/issue/{idOrKey}`` and ``POST /rest/api/3/issue/{id}/comment`` (write-back).

Every call goes through one ``HttpClient`` (retries, backoff, ``Retry-After``).

Imports: stdlib, httpx, connectors.*.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, Literal

import httpx

from connectors.errors import SourceError
from connectors.http import HttpClient

API = "/rest/api/3"
JsonObject = dict[str, Any]


def _objects(value: object) -> list[JsonObject]:
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, dict)]


class JiraClient:
    def __init__(
        self,
        base_url: str,
        *,
        auth: httpx.Auth | tuple[str, str] | None,
        headers: Mapping[str, str] | None,
        search_api: Literal["jql", "classic"],
        timeout: float,
        transport: httpx.BaseTransport | None,
        sleep: Callable[[float], None] | None,
    ) -> None:
        extra: dict[str, Any] = {}
        if sleep is not None:
            extra["sleep"] = sleep
        self.http = HttpClient(
            base_url,
            auth=auth,
            headers={"Accept": "application/json", **(headers or {})},
            timeout=timeout,
            transport=transport,
            **extra,
        )
        self.search_api = search_api

    def close(self) -> None:
        self.http.close()

    def _get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.http.get_json(API + path, params)

    def _get_or_none(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """``None`` when the resource is missing or hidden from us (404, 403)."""
        return self.http.get_json(API + path, params, allow=(403, 404))

    def myself(self) -> JsonObject:
        data = self._get("/myself")
        if not isinstance(data, dict):
            raise SourceError(f"{self.http.base_url}{API}/myself did not return a user")
        return data

    def project(self, key: str) -> JsonObject | None:
        data = self._get_or_none(f"/project/{key}")
        return data if isinstance(data, dict) else None

    # -- search ---------------------------------------------------------------------------

    def search(self, jql: str, fields: Sequence[str], page_size: int) -> Iterator[JsonObject]:
        """Every issue the JQL finds, page after page, in the query's order."""
        if self.search_api == "classic":
            yield from self._search_classic(jql, fields, page_size)
            return
        token: str | None = None
        while True:
            body: JsonObject = {"jql": jql, "fields": list(fields), "maxResults": page_size}
            if token:
                body["nextPageToken"] = token
            page = self._post(f"{API}/search/jql", body)
            yield from _objects(page.get("issues"))
            token = page.get("nextPageToken")
            if page.get("isLast") is True or not isinstance(token, str) or not token:
                return

    def _search_classic(
        self, jql: str, fields: Sequence[str], page_size: int
    ) -> Iterator[JsonObject]:
        start = 0
        while True:
            body = {"jql": jql, "fields": list(fields), "maxResults": page_size, "startAt": start}
            page = self._post(f"{API}/search", body)
            issues = _objects(page.get("issues"))
            yield from issues
            start += len(issues)
            total = page.get("total")
            if not issues or (isinstance(total, int) and start >= total):
                return

    def _post(self, path: str, body: JsonObject) -> JsonObject:
        response = self.http.request("POST", path, json=body)
        try:
            data = response.json()
        except ValueError as exc:
            raise SourceError(f"{self.http.base_url}{path} did not return JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise SourceError(f"{self.http.base_url}{path} did not return a search page")
        return data

    # -- paged lists ----------------------------------------------------------------------

    def _paged(self, path: str, params: Mapping[str, Any]) -> list[JsonObject] | None:
        """A whole ``startAt`` list (``values`` with ``isLast`` or ``total``); ``None`` when
        the first page is missing or hidden from us (404, 403)."""
        start = 0
        out: list[JsonObject] = []
        while True:
            page = self._get_or_none(path, {**params, "startAt": start})
            if not isinstance(page, dict):
                return None if start == 0 else out
            values = _objects(page.get("values"))
            out.extend(values)
            start += len(values)
            total = page.get("total")
            if (
                not values
                or page.get("isLast") is True
                or (isinstance(total, int) and start >= total)
            ):
                return out

    def roles(self, project: str) -> dict[str, str] | None:
        """Role name → role id; ``None`` when the roles cannot be read."""
        data = self._get_or_none(f"/project/{project}/role")
        if not isinstance(data, dict):
            return None
        roles: dict[str, str] = {}
        for name, url in data.items():
            if isinstance(url, str) and url.rstrip("/").rsplit("/", 1)[-1].isdigit():
                roles[str(name)] = url.rstrip("/").rsplit("/", 1)[-1]
        return roles

    def role_actors(self, project: str, role_id: str) -> list[JsonObject] | None:
        data = self._get_or_none(f"/project/{project}/role/{role_id}")
        if not isinstance(data, dict):
            return None
        return _objects(data.get("actors"))

    def level_members(self, level_id: str) -> list[JsonObject] | None:
        """Holders of an issue security level; ``None`` when we may not see them."""
        return self._paged(
            "/issuesecurityschemes/level/member", {"levelId": level_id, "maxResults": 100}
        )

    def group_members(self, group: JsonObject) -> list[JsonObject] | None:
        params: dict[str, Any] = {"maxResults": 50, "includeInactiveUsers": "false"}
        if group.get("groupId"):
            params["groupId"] = group["groupId"]
        else:
            params["groupname"] = group["name"]
        return self._paged("/group/member", params)

    def user(self, account_id: str) -> JsonObject | None:
        data = self._get_or_none("/user", {"accountId": account_id})
        return data if isinstance(data, dict) else None

    def comments(
        self, issue_id: str, start: int, *, expand: str | None = None
    ) -> Iterator[JsonObject]:
        """Comments from ``start`` on, oldest first (``expand="properties"``: with their
        entity properties)."""
        path = f"{API}/issue/{issue_id}/comment"
        params: dict[str, Any] = {"maxResults": 100, "orderBy": "created"}
        if expand:
            params["expand"] = expand
        while True:
            page = self.http.get_json(path, {**params, "startAt": start})
            values = _objects(page.get("comments")) if isinstance(page, dict) else []
            yield from values
            start += len(values)
            total = page.get("total") if isinstance(page, dict) else None
            if not values or not isinstance(total, int) or start >= total:
                return

    # -- write-back -----------------------------------------------------------------------

    def issue(self, id_or_key: str, fields: Sequence[str]) -> JsonObject | None:
        """One issue with ``fields``; ``None`` when it is missing or hidden from us."""
        data = self._get_or_none(f"/issue/{id_or_key}", {"fields": ",".join(fields)})
        return data if isinstance(data, dict) else None

    def comment_property(self, comment_id: str, key: str) -> JsonObject | None:
        """A comment's entity property ``{"key": …, "value": …}``; ``None`` when unset."""
        data = self.http.get_json(f"{API}/comment/{comment_id}/properties/{key}", allow=(404,))
        return data if isinstance(data, dict) else None

    def add_comment(
        self, issue_id: str, body: JsonObject, *, allow: Collection[int] = ()
    ) -> httpx.Response:
        """``POST`` a comment (ADF ``body``, optional ``properties``); a status in ``allow``
        is returned rather than raised."""
        return self.http.request("POST", f"{API}/issue/{issue_id}/comment", json=body, allow=allow)
