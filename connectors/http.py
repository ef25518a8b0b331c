"""One resilient HTTP client for every connector that talks to a web API.

``HttpClient`` wraps one ``httpx.Client`` (connection reuse, timeouts) and adds what every
vendor API needs, so connectors only deal with their API's shape:

- retries with exponential backoff and jitter on connection errors, timeouts and 5xx
  (tenacity), a bounded number of times;
- ``429 Too Many Requests`` (and GitHub-style ``403`` with ``Retry-After`` or an exhausted
  ``X-RateLimit-Remaining``): waits as the server says (``Retry-After`` in seconds or as an
  HTTP date, or until ``X-RateLimit-Reset``), then retries; a wait longer than
  ``max_wait`` is an error rather than a silent hour-long stall;
- an exhausted quota reported on a *successful* response pauses the next request until the
  reset time, instead of spending a request to learn it;
- ``401`` (and ``403`` without rate-limit signs) become ``CredentialError``; other 4xx
  become ``SourceError``, except the statuses a caller lists in ``allow`` (e.g. 404 for
  "deleted since");
- a response body larger than ``max_response_bytes`` (by its ``Content-Length`` or as it
  streams in) is a ``SourceError``, read no further: one huge answer or download never
  takes the sync's memory (a lazy document read failing so is that document's failure).

``base_url`` is every connector's setting, so self-hosted installs and local fakes in
tests work the same. Pass ``transport=httpx.MockTransport(...)`` in unit tests, and
``sleep``/``clock`` to test waits without waiting.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from connectors.errors import CredentialError, SourceError

RETRY_STATUSES = frozenset({500, 502, 503, 504})
#: Largest response body read: above the pipeline's largest document (50 MB) and any page
#: of a listing an API sends.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
USER_AGENT = "context-server-connector/0.1"


@dataclass(frozen=True)
class _Body:
    json: Any = None
    data: Mapping[str, Any] | None = None
    content: bytes | None = None


class _Retry(Exception):
    """A failed attempt worth repeating; ``wait`` overrides the backoff when set."""

    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait


class HttpClient:
    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        auth: httpx.Auth | tuple[str, str] | None = None,
        timeout: float = 30.0,
        max_attempts: int = 6,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        max_wait: float = 300.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        rate_limited: Callable[[httpx.Response], bool] | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        """``rate_limited``: an API-specific test for a 403 that means "slow down" (e.g.
        Google's ``userRateLimitExceeded`` in the body), beside the standard headers."""
        self.base_url = base_url.rstrip("/")
        self.max_response_bytes = max_response_bytes
        self._rate_limited_hook = rate_limited
        self.max_wait = max_wait
        self._sleep = sleep
        self._clock = clock
        self._paused_until = 0.0
        self._backoff = wait_exponential_jitter(multiplier=backoff_initial, max=backoff_max)
        self._max_attempts = max_attempts
        self.http = httpx.Client(
            base_url=self.base_url,
            headers={"User-Agent": USER_AGENT, **(headers or {})},
            auth=auth,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=True,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- requests ------------------------------------------------------------------------

    def get_json(
        self, url: str, params: Mapping[str, Any] | None = None, *, allow: Collection[int] = ()
    ) -> Any:
        """GET and decode JSON; ``None`` for a status in ``allow``."""
        response = self.request("GET", url, params=params, allow=allow)
        if response.status_code in allow:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise SourceError(f"{self._where(url)} did not return JSON: {exc}") from exc

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Mapping[str, Any] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        allow: Collection[int] = (),
    ) -> httpx.Response:
        """Send with retries; a response in 2xx/3xx or in ``allow`` is returned. ``data``
        is a form body, ``content`` raw bytes, ``json`` a JSON body."""
        body = _Body(json=json, data=data, content=content)
        retrying = Retrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(_Retry),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self._once(method, url, params, body, headers, allow)
        except _Retry as exc:
            raise SourceError(
                f"{self._where(url)} failed {self._max_attempts} times; last: {exc}"
            ) from exc
        raise AssertionError("unreachable")  # pragma: no cover - tenacity reraises

    def _once(
        self,
        method: str,
        url: str,
        params: Mapping[str, Any] | None,
        body: _Body,
        headers: Mapping[str, str] | None,
        allow: Collection[int],
    ) -> httpx.Response:
        pause = self._paused_until - self._clock()
        if pause > 0:
            self._sleep(pause)
        try:
            request = self.http.build_request(
                method,
                url,
                params=params,
                json=body.json,
                data=body.data,
                content=body.content,
                headers=headers,
            )
            response = self.http.send(request, stream=True)
            try:
                self._read_bounded(response, url)
            finally:
                response.close()
        except httpx.TransportError as exc:  # connection refused, reset, timeouts
            raise _Retry(f"{type(exc).__name__}: {exc}") from exc
        self._note_quota(response)
        status = response.status_code
        if status < 400:
            return response
        # Rate limits first: an allowed 403 may be GitHub's secondary rate limit.
        if status == 429 or (status == 403 and self._is_rate_limit(response)):
            wait = self._server_wait(response)
            if wait is not None and wait > self.max_wait:
                raise SourceError(
                    f"{self._where(url)} is rate limited for {wait:.0f}s, longer than the "
                    f"{self.max_wait:.0f}s this client waits; the next sync resumes"
                )
            raise _Retry(f"{status} rate limited", wait)
        if status in allow:
            return response
        if status in RETRY_STATUSES:
            raise _Retry(f"{status} {response.reason_phrase}")
        detail = _excerpt(response)
        if status in (401, 403):
            raise CredentialError(
                f"{self._where(url)} refused the credentials ({status}): {detail}"
            )
        raise SourceError(f"{self._where(url)} answered {status}: {detail}")

    def _read_bounded(self, response: httpx.Response, url: str) -> None:
        """Read the body into ``response`` unless it is larger than ``max_response_bytes``."""
        limit = self.max_response_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise SourceError(
                f"{self._where(url)} sent {declared} bytes, more than the {limit} this client "
                "reads (max_response_bytes)"
            )
        chunks, total = [], 0
        for chunk in response.iter_bytes():
            total += len(chunk)
            if total > limit:
                raise SourceError(
                    f"{self._where(url)} sent more than the {limit} bytes this client reads "
                    "(max_response_bytes)"
                )
            chunks.append(chunk)
        response._content = b"".join(chunks)  # what read() would have set, bounded

    # -- waits -----------------------------------------------------------------------------

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retry) and exc.wait is not None:
            return max(0.0, exc.wait)
        return float(self._backoff(state))

    def _server_wait(self, response: httpx.Response) -> float | None:
        """Seconds the server asks us to wait, from Retry-After or the rate-limit reset."""
        retry_after = response.headers.get("Retry-After")
        if retry_after:
            if retry_after.strip().isdigit():
                return float(retry_after)
            try:
                when = email.utils.parsedate_to_datetime(retry_after)
            except (TypeError, ValueError):
                when = None
            if when is not None:
                return max(0.0, when.timestamp() - self._clock())
        reset = response.headers.get("X-RateLimit-Reset")
        if reset and reset.strip().isdigit():
            return max(0.0, float(reset) - self._clock()) + 1.0
        return None

    def _is_rate_limit(self, response: httpx.Response) -> bool:
        if "Retry-After" in response.headers:
            return True
        if response.headers.get("X-RateLimit-Remaining") == "0":
            return True
        return self._rate_limited_hook is not None and self._rate_limited_hook(response)

    def _note_quota(self, response: httpx.Response) -> None:
        if response.status_code < 400 and response.headers.get("X-RateLimit-Remaining") == "0":
            reset = response.headers.get("X-RateLimit-Reset", "")
            if reset.strip().isdigit():
                self._paused_until = min(float(reset) + 1.0, self._clock() + self.max_wait)

    def _where(self, url: str) -> str:
        return url if url.startswith("http") else f"{self.base_url}{url}"


def _excerpt(response: httpx.Response, limit: int = 300) -> str:
    text = " ".join(response.text.split())
    return text[:limit] + ("…" if len(text) > limit else "")
