"""The MediaWiki Action API (``<base_url>/api.php``) over the shared ``HttpClient``.

Every request asks for ``format=json&formatversion=2``. MediaWiki reports API errors with
HTTP 200 and an ``error`` object; they are mapped here: permission and login codes
(``readapidenied``, ``assertuserfailed``, OAuth codes …) → ``CredentialError``, ``maxlag``
and ``ratelimited`` → a wait (``Retry-After``) and a retry, anything else → ``SourceError``.

Authentication, resolved on the first request (never at construction):

- ``token``: an OAuth 2 owner-only access token, sent as ``Authorization: Bearer``;
- ``username`` + ``password``: a bot password, ``action=login`` with a login token from
  ``meta=tokens``; the session cookie stays in the client. Requests then carry
  ``assert=user`` so an expired session fails loudly (``assertuserfailed``) instead of
  silently reading as an anonymous user; it is renewed once by logging in again;
- neither: anonymous reads (public wikis).

Imports: stdlib, httpx, connectors.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import httpx

from connectors.errors import CredentialError, SourceError
from connectors.http import HttpClient
from connectors.mediawiki.config import MediaWikiConfig

API = "/api.php"

CREDENTIAL_CODES = frozenset(
    {
        "readapidenied",
        "permissiondenied",
        "assertuserfailed",
        "assertbotfailed",
        "assertnameduserfailed",
        "notloggedin",
        "badtoken",
        "mwoauth-invalid-authorization",
        "mwoauth-invalid-authorization-invalid-user",
        "mwoauth-invalid-authorization-wrong-user",
        "mwoauth-invalid-authorization-not-approved",
        "mwoauth-invalid-authorization-blocked-user",
    }
)
WAIT_CODES = frozenset({"maxlag", "ratelimited"})
#: The most ids or titles one ``action=query`` takes (500 with ``apihighlimits``).
BATCH = 50


class MediaWikiApi:
    def __init__(
        self,
        config: MediaWikiConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_api_waits: int = 5,
    ) -> None:
        self.config = config
        self.http = HttpClient(config.base_url, transport=transport, sleep=sleep)
        self._sleep = sleep
        self._max_api_waits = max_api_waits
        self._authenticated = False

    def close(self) -> None:
        self.http.close()

    @property
    def logs_in(self) -> bool:
        return self.config.username is not None or self.config.token is not None

    # -- requests ------------------------------------------------------------------------

    def get(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """One API GET, errors mapped; authenticates first when configured."""
        self._authenticate()
        renewed = False
        waits = 0
        while True:
            full = {**params, "format": "json", "formatversion": "2"}
            if self.config.username is not None:
                full["assert"] = "user"
            response = self.http.request("GET", API, params=full)
            body = _json(response)
            error = body.get("error")
            if not isinstance(error, dict):
                return body
            code = str(error.get("code", ""))
            if code == "assertuserfailed" and not renewed:
                renewed = True  # the session expired: log in again, once
                self._login()
                continue
            if code in WAIT_CODES and waits < self._max_api_waits:
                waits += 1
                self._sleep(_retry_after(response, default=5.0 * waits))
                continue
            raise _api_error(code, str(error.get("info", "")), self.config)

    def query(self, params: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """``action=query`` and its continuations (the ``continue`` object), one by one."""
        cont: dict[str, Any] = {}
        while True:
            body = self.get({"action": "query", **params, **cont})
            yield body
            nxt = body.get("continue")
            if not isinstance(nxt, dict) or not nxt:
                return
            cont = nxt

    # -- authentication ---------------------------------------------------------------------

    def _authenticate(self) -> None:
        if self._authenticated:
            return
        if self.config.token is not None:
            secret = self.config.token.resolve().get_secret_value()
            self.http.http.headers["Authorization"] = f"Bearer {secret}"
        elif self.config.username is not None:
            self._login()
        self._authenticated = True

    def _login(self) -> None:
        assert self.config.username is not None and self.config.password is not None
        password = self.config.password.resolve().get_secret_value()
        tokens = self.http.get_json(
            API, {"action": "query", "meta": "tokens", "type": "login", **_FORMAT}
        )
        if isinstance(tokens, dict) and isinstance(tokens.get("error"), dict):
            error = tokens["error"]
            raise _api_error(str(error.get("code", "")), str(error.get("info", "")), self.config)
        try:
            login_token = tokens["query"]["tokens"]["logintoken"]
        except (KeyError, TypeError):
            raise SourceError(f"{self._where()} returned no login token") from None
        # action=login takes the password and token only in a POST form body.
        response = self.http.request(
            "POST",
            API,
            params={"action": "login", **_FORMAT},
            data={
                "lgname": self.config.username,
                "lgpassword": password,
                "lgtoken": login_token,
            },
        )
        body = _json(response)
        result = body.get("login", {}) if isinstance(body.get("login"), dict) else {}
        if result.get("result") != "Success":
            reason = result.get("reason") or body.get("error", {}).get("info") or result
            raise CredentialError(
                f"{self._where()} refused the bot password of {self.config.username!r}: {reason}"
            )

    def _where(self) -> str:
        return f"{self.config.base_url}{API}"


_FORMAT = {"format": "json", "formatversion": "2"}


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise SourceError(
            f"{response.request.url} did not return JSON (is base_url the folder of api.php?): "
            f"{exc}"
        ) from exc
    if not isinstance(body, dict):
        raise SourceError(f"{response.request.url} returned {type(body).__name__}, not an object")
    return body


def _retry_after(response: httpx.Response, default: float) -> float:
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else default


def _api_error(code: str, info: str, config: MediaWikiConfig) -> Exception:
    message = f"{config.base_url}{API} answered with API error {code!r}: {info}"
    if code in CREDENTIAL_CODES:
        if code == "readapidenied" and config.username is None and config.token is None:
            message += " (the wiki is not readable anonymously: configure `username`/`password` "
            message += "or `token`)"
        return CredentialError(message)
    return SourceError(message)
