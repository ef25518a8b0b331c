"""The connectors' HTTP client against httpx.MockTransport: retries, waits, errors."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from connectors.errors import CredentialError, SourceError
from connectors.http import HttpClient

NOW = 1_800_000_000.0


def client(
    handler: Callable[[httpx.Request], httpx.Response], slept: list[float], **kw: object
) -> HttpClient:
    return HttpClient(
        "https://api.example.test/",
        transport=httpx.MockTransport(handler),
        sleep=slept.append,
        clock=lambda: NOW,
        **kw,  # type: ignore[arg-type]
    )


def sequence(*responses: httpx.Response | Exception) -> Callable[[httpx.Request], httpx.Response]:
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        item = queue.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    return handler


def test_5xx_and_connection_errors_are_retried_with_backoff() -> None:
    slept: list[float] = []
    handler = sequence(
        httpx.Response(500),
        httpx.ConnectError("refused"),
        httpx.Response(503),
        httpx.Response(200, json={"ok": True}),
    )
    assert client(handler, slept).get_json("/things") == {"ok": True}
    assert len(slept) == 3 and all(0 < s <= 30 for s in slept)


def test_429_waits_as_retry_after_says_seconds_or_date() -> None:
    slept: list[float] = []
    handler = sequence(
        httpx.Response(429, headers={"Retry-After": "7"}),
        httpx.Response(429, headers={"Retry-After": "Fri, 15 Jan 2027 08:00:20 GMT"}),
        httpx.Response(200, json=[]),
    )
    c = client(handler, slept)
    c._clock = lambda: 1_800_000_000.0  # 2027-01-15T08:00:00Z
    assert c.get_json("/x") == []
    assert slept == [7.0, 20.0]


def test_github_style_exhausted_quota_waits_until_reset() -> None:
    slept: list[float] = []
    reset = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) + 30)}
    handler = sequence(httpx.Response(403, headers=reset), httpx.Response(200, json={}))
    assert client(handler, slept).get_json("/x") == {}
    assert slept == [31.0]


def test_quota_exhausted_on_success_pauses_the_next_request() -> None:
    slept: list[float] = []
    reset = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) + 10)}
    handler = sequence(httpx.Response(200, json=1, headers=reset), httpx.Response(200, json=2))
    c = client(handler, slept)
    assert c.get_json("/a") == 1 and slept == []
    assert c.get_json("/b") == 2 and slept == [11.0]


def test_a_wait_longer_than_max_wait_is_an_error() -> None:
    slept: list[float] = []
    handler = sequence(httpx.Response(429, headers={"Retry-After": "3600"}))
    with pytest.raises(SourceError, match="rate limited for 3600s"):
        client(handler, slept, max_wait=60).get_json("/x")
    assert slept == []


def test_giving_up_after_max_attempts_says_what_happened() -> None:
    slept: list[float] = []
    handler = sequence(*[httpx.Response(502)] * 3)
    with pytest.raises(SourceError, match=r"failed 3 times; last: 502"):
        client(handler, slept, max_attempts=3).get_json("/x")
    assert len(slept) == 2


def test_bad_credentials_and_other_errors_are_clear() -> None:
    slept: list[float] = []
    unauthorized = sequence(httpx.Response(401, json={"message": "Bad credentials"}))
    with pytest.raises(CredentialError, match=r"refused the credentials \(401\).*Bad credentials"):
        client(unauthorized, slept).get_json("/user")
    missing = sequence(httpx.Response(404, text="no such repo"))
    with pytest.raises(SourceError, match="answered 404: no such repo"):
        client(missing, slept).get_json("/repos/x/y")
    allowed = sequence(httpx.Response(404))
    assert client(allowed, slept).get_json("/repos/x/y", allow=(404,)) is None
    assert slept == []


def test_an_api_specific_403_rate_limit_and_form_bodies() -> None:
    slept: list[float] = []
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        if len(seen) == 1:
            return httpx.Response(
                403, json={"error": {"errors": [{"reason": "rateLimitExceeded"}]}}
            )
        return httpx.Response(200, json={"access_token": "t"})

    c = client(handler, slept, rate_limited=lambda r: "rateLimitExceeded" in r.text)
    response = c.request("POST", "/token", data={"grant_type": "jwt", "assertion": "a.b.c"})
    assert response.json() == {"access_token": "t"}
    assert len(slept) == 1
    assert seen[-1] == b"grant_type=jwt&assertion=a.b.c"
