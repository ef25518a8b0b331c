"""The GitHub REST API as the connector needs it: authenticated GETs, Link pagination, and
the one write (``POST`` an issue comment).

Every request goes through one ``HttpClient`` (retries, backoff, ``Retry-After`` and the
``X-RateLimit-*`` headers GitHub sends). The token is resolved on the first request, not
when the connector is built.

Imports: stdlib, httpx and ``connectors``.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from connectors.errors import SourceError
from connectors.http import HttpClient
from connectors.secrets import SecretRef

API_VERSION = "2022-11-28"

JsonObject = dict[str, Any]


class Page:
    """One page of a list endpoint and when the server answered it."""

    def __init__(self, items: list[JsonObject], response: httpx.Response) -> None:
        self.items = items
        self.server_time = _server_time(response)


class GitHubClient:
    def __init__(
        self,
        base_url: str,
        token: SecretRef,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._transport = transport
        self._sleep = sleep
        self._http: HttpClient | None = None

    @property
    def http(self) -> HttpClient:
        if self._http is None:
            secret = self._token.resolve().get_secret_value()
            self._http = HttpClient(
                self.base_url,
                headers={
                    "Authorization": f"Bearer {secret}",
                    "Accept": "application/vnd.github+json",
                    "X-GitHub-Api-Version": API_VERSION,
                },
                transport=self._transport,
                sleep=self._sleep,
            )
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def get(
        self, path: str, params: Mapping[str, Any] | None = None, *, allow: Collection[int] = ()
    ) -> httpx.Response:
        # HttpClient looks for rate-limit signs before honouring ``allow``: GitHub's
        # secondary limits are 403s with Retry-After, waited out and retried there.
        return self.http.request("GET", path, params=params, allow=allow)

    def post(self, path: str, body: JsonObject, *, allow: Collection[int] = ()) -> httpx.Response:
        """``POST`` a JSON body; a status in ``allow`` is returned rather than raised."""
        return self.http.request("POST", path, json=body, allow=allow)

    def get_object(self, path: str, *, allow: Collection[int] = ()) -> JsonObject | None:
        """A single object; ``None`` when the status is in ``allow``."""
        response = self.get(path, allow=allow)
        if response.status_code in allow:
            return None
        body = _json(response)
        if not isinstance(body, dict):
            raise SourceError(f"{response.request.url} did not return a JSON object")
        return body

    def pages(
        self, path: str, params: Mapping[str, Any] | None = None, *, allow: Collection[int] = ()
    ) -> Iterator[Page]:
        """Every page of a list endpoint, following ``Link: <…>; rel="next"``.

        A first page answered with a status in ``allow`` raises ``Refused`` (the caller
        decides what that means: a forbidden repository, a team gone since).
        """
        url: str | None = path
        query: Mapping[str, Any] | None = params
        while url is not None:
            response = self.get(url, query, allow=allow)
            if response.status_code in allow:
                raise Refused(response.status_code, str(response.request.url))
            body = _json(response)
            if not isinstance(body, list):
                raise SourceError(f"{response.request.url} did not return a JSON list")
            yield Page([item for item in body if isinstance(item, dict)], response)
            url = response.links.get("next", {}).get("url")
            query = None  # the next link carries every parameter
            if url is not None:
                self._same_origin(url)

    def _same_origin(self, url: str) -> None:
        # The Authorization header goes with every request: never follow a link elsewhere.
        ours, theirs = urlsplit(self.base_url), urlsplit(url)
        if (ours.scheme, ours.netloc) != (theirs.scheme, theirs.netloc):
            raise SourceError(f"refusing to follow a pagination link off {self.base_url}: {url}")


class Refused(SourceError):
    """A request answered with a status the caller allowed (403, 404, 410, …)."""

    def __init__(self, status: int, url: str) -> None:
        super().__init__(f"{url} answered {status}")
        self.status = status


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise SourceError(f"{response.request.url} did not return JSON: {exc}") from exc


def _server_time(response: httpx.Response) -> datetime:
    """The server's clock (``Date`` header), else ours: cursors follow the server's time."""
    value = response.headers.get("Date")
    if value:
        try:
            return email.utils.parsedate_to_datetime(value).astimezone(UTC)
        except (TypeError, ValueError):
            pass
    return datetime.now(UTC)


def parse_time(value: str) -> datetime:
    """GitHub's ISO 8601 timestamps (``2024-05-01T10:00:00Z``)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
