"""The Google APIs this connector calls, over one ``HttpClient``.

Drive v3 (``/drive/v3``) and the Admin SDK Directory API (``/admin/directory/v1``) under
one ``base_url``. ``HttpClient`` handles 429/5xx/connection retries; this module adds what
is Google-specific:

- Google reports quota exhaustion as ``403`` with reason ``userRateLimitExceeded`` or
  ``rateLimitExceeded`` (usually without ``Retry-After``), which ``HttpClient`` would take
  for refused credentials: those are retried here with exponential backoff;
- ``nextPageToken`` pagination (``pages``);
- per-file errors (export too large, download forbidden, gone) as ``FileError`` values the
  connector turns into ``Failure``s.

Imports: stdlib, httpx, connectors.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import httpx

from connectors.errors import CredentialError, SourceError
from connectors.http import HttpClient

RATE_LIMIT_REASONS = frozenset({"userRateLimitExceeded", "rateLimitExceeded"})
MAX_RATE_LIMIT_RETRIES = 6


class FileError(Exception):
    """One file could not be read; ``reason`` is the ``Failure`` code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def error_reason(response: httpx.Response) -> tuple[str, str]:
    """``(reason, message)`` from Google's error body ``{"error": {"errors": [...]}}``."""
    try:
        body = response.json()
    except ValueError:
        return "", " ".join(response.text.split())[:300]
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return "", str(body)[:300]
    message = str(error.get("message", ""))
    errors = error.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return str(errors[0].get("reason", "")), message
    details = error.get("details")  # the newer google.rpc.ErrorInfo form
    if isinstance(details, list):
        for item in details:
            if isinstance(item, dict) and item.get("reason"):
                return str(item["reason"]), message
    return str(error.get("status", "")), message


class GoogleApi:
    def __init__(
        self,
        base_url: str,
        auth: httpx.Auth,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.http = HttpClient(base_url, auth=auth, transport=transport, sleep=sleep)
        self._sleep = sleep

    def close(self) -> None:
        self.http.close()

    def get(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        allow: frozenset[int] = frozenset(),
    ) -> httpx.Response:
        """GET with Google's 403 rate limits retried; a 403 in ``allow`` is returned."""
        for attempt in range(MAX_RATE_LIMIT_RETRIES):
            response = self.http.request("GET", path, params=params, allow=allow | {403})
            if response.status_code != 403:
                return response
            reason, message = error_reason(response)
            if reason in RATE_LIMIT_REASONS:
                self._sleep(min(60.0, 2.0**attempt) + random.random())
                continue
            if 403 in allow:
                return response
            raise CredentialError(
                f"{self.http.base_url}{path} was refused (403 {reason}): {message}"
            )
        raise SourceError(
            f"{self.http.base_url}{path} stayed rate limited after "
            f"{MAX_RATE_LIMIT_RETRIES} attempts; the next sync resumes"
        )

    def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        response = self.get(path, params)
        try:
            body = response.json()
        except ValueError as exc:
            raise SourceError(f"{self.http.base_url}{path} did not return JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise SourceError(f"{self.http.base_url}{path} did not return a JSON object")
        return body

    def pages(self, path: str, params: Mapping[str, Any], key: str) -> Iterator[dict[str, Any]]:
        """Every item of ``key`` across ``nextPageToken`` pages."""
        token: str | None = None
        while True:
            query = dict(params)
            if token:
                query["pageToken"] = token
            body = self.get_json(path, query)
            for item in body.get(key) or []:
                if isinstance(item, dict):
                    yield item
            token = body.get("nextPageToken")
            if not token:
                return

    def file_pages(self, path: str, params: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
        """Like ``pages`` for one file's sub-resource: 403/404 are a ``FileError``."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            query = dict(params)
            if token:
                query["pageToken"] = token
            response = self.get(path, query, allow=frozenset({403, 404}))
            if response.status_code != 200:
                reason, message = error_reason(response)
                raise FileError(
                    "forbidden" if response.status_code == 403 else "not_found",
                    f"{reason or response.status_code}: {message}",
                )
            try:
                body = response.json()
            except ValueError as exc:
                raise SourceError(f"{self.http.base_url}{path} did not return JSON") from exc
            items.extend(i for i in body.get(key) or [] if isinstance(i, dict))
            token = body.get("nextPageToken")
            if not token:
                return items

    def content(self, path: str, params: Mapping[str, Any]) -> bytes:
        """A file's bytes (export or ``alt=media``); ``FileError`` for a per-file problem."""
        response = self.get(path, params, allow=frozenset({403, 404}))
        if response.status_code == 200:
            return response.content
        reason, message = error_reason(response)
        if response.status_code == 404:
            raise FileError("not_found", f"gone since it was listed: {message}")
        if reason == "exportSizeLimitExceeded":
            raise FileError("too_large", f"larger than Drive's export limit: {message}")
        raise FileError("forbidden", f"{reason or 'forbidden'}: {message}")
