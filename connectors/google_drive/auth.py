"""OAuth 2.0 access tokens for Google APIs, as an ``httpx.Auth``.

Two sources:

- ``StaticToken``: an access token the operator gives (``token: {env|file}``), read when a
  request is sent, so a rotated file or variable is picked up without a restart;
- ``ServiceAccountTokens``: a service account's JSON key; a JWT signed with its RSA key
  (RS256) is exchanged at ``token_url`` for an hour-long token (RFC 7523 grant, as Google's
  "OAuth 2.0 for Server to Server Applications" documents), cached until shortly before it
  expires and fetched again once when an API answers 401.

Signing needs ``cryptography``, imported only here and only when a service account is
configured (it is installed with the project's document parsers, not declared by us).

Imports: stdlib, httpx; ``cryptography`` lazily.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Generator
from typing import Protocol

import httpx

from connectors.errors import ConfigError, CredentialError, SourceError
from connectors.secrets import SecretRef

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: Tokens are fetched again this long before Google says they expire.
EXPIRY_MARGIN = 60.0


class TokenSource(Protocol):
    refreshable: bool

    def token(self) -> str: ...

    def invalidate(self) -> None: ...


class StaticToken:
    refreshable = False

    def __init__(self, ref: SecretRef) -> None:
        self.ref = ref

    def token(self) -> str:
        return self.ref.resolve().get_secret_value()

    def invalidate(self) -> None:
        pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign_rs256(private_key_pem: str, signing_input: bytes) -> bytes:
    try:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding, rsa
    except ImportError as exc:  # pragma: no cover - installed with the parsers
        raise ConfigError(
            "service_account_key needs the 'cryptography' package to sign its JWT; "
            "install it or give an access token"
        ) from exc
    try:
        key = serialization.load_pem_private_key(private_key_pem.encode("utf-8"), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"the service account's private_key is not a PEM RSA key: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError("the service account's private_key is not an RSA key")
    return key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())


class ServiceAccountTokens:
    refreshable = True

    def __init__(
        self,
        key_ref: SecretRef,
        *,
        token_url: str,
        scopes: list[str],
        subject: str | None,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
        timeout: float = 30.0,
    ) -> None:
        self.key_ref = key_ref
        self.token_url = token_url
        self.scopes = scopes
        self.subject = subject
        self.clock = clock
        self._http = httpx.Client(timeout=httpx.Timeout(timeout), transport=transport)
        self._token: str | None = None
        self._expires = 0.0

    def close(self) -> None:
        self._http.close()

    def invalidate(self) -> None:
        self._token = None

    def _key(self) -> tuple[str, str]:
        raw = self.key_ref.resolve().get_secret_value()
        where = self.key_ref.describe()
        try:
            key = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"the service account key in {where} is not JSON: {exc}") from None
        if not isinstance(key, dict):
            raise ConfigError(f"the service account key in {where} is not a JSON object")
        email, pem = key.get("client_email"), key.get("private_key")
        if not isinstance(email, str) or not isinstance(pem, str):
            raise ConfigError(
                f"the service account key in {where} lacks client_email or private_key"
            )
        return email, pem

    def assertion(self) -> str:
        email, pem = self._key()
        now = int(self.clock())
        claims: dict[str, object] = {
            "iss": email,
            "scope": " ".join(self.scopes),
            "aud": self.token_url,
            "iat": now,
            "exp": now + 3600,
        }
        if self.subject:
            claims["sub"] = self.subject
        header = {"alg": "RS256", "typ": "JWT"}
        signing_input = (
            _b64(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = sign_rs256(pem, signing_input.encode("ascii"))
        return signing_input + "." + _b64(signature)

    def token(self) -> str:
        if self._token is not None and self.clock() < self._expires:
            return self._token
        form = {"grant_type": JWT_GRANT, "assertion": self.assertion()}
        response: httpx.Response | None = None
        for attempt in range(3):
            try:
                response = self._http.post(self.token_url, data=form)
            except httpx.TransportError as exc:
                if attempt == 2:
                    raise SourceError(f"{self.token_url} is unreachable: {exc}") from exc
                continue
            if response.status_code < 500:
                break
        assert response is not None
        if response.status_code in (400, 401, 403):
            # Google answers invalid_grant / unauthorized_client with 400.
            raise CredentialError(
                f"{self.token_url} refused the service account ({response.status_code}): "
                f"{' '.join(response.text.split())[:300]}"
            )
        if response.status_code >= 300:
            raise SourceError(f"{self.token_url} answered {response.status_code}")
        try:
            body = response.json()
            token = body["access_token"]
            lifetime = float(body.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError) as exc:
            raise SourceError(f"{self.token_url} returned no access_token: {exc}") from exc
        if not isinstance(token, str) or not token:
            raise SourceError(f"{self.token_url} returned an empty access_token")
        self._token = token
        self._expires = self.clock() + max(0.0, lifetime - EXPIRY_MARGIN)
        return token


class BearerAuth(httpx.Auth):
    """Adds ``Authorization: Bearer``; a refreshable source gets one more try on 401."""

    def __init__(self, tokens: TokenSource) -> None:
        self.tokens = tokens

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.tokens.token()}"
        response = yield request
        if response.status_code == 401 and self.tokens.refreshable:
            self.tokens.invalidate()
            request.headers["Authorization"] = f"Bearer {self.tokens.token()}"
            yield request
