"""Single sign-on for the web pages: OpenID Connect's authorization-code flow with PKCE.

``/ui/login/oidc`` sends the browser to the provider's authorization endpoint with a fresh
``state``, ``nonce`` and S256 code challenge, whose secrets wait in the server-side session
(``Pending``). The provider sends the browser back to ``/ui/login/oidc/callback`` with a
code; ``OidcClient.finish`` checks the state (the callback's CSRF protection, usable once),
exchanges the code at the token endpoint (client secret + code verifier) and verifies the ID
token: RS256 signature against the provider's JWKS (by ``kid``), ``iss``, ``aud``/``azp``,
``exp``/``iat`` with a minute's leeway, and ``nonce``. The claim named by
``oidc_user_claim`` becomes the principal ``user:VALUE``.

Every failure is an ``OidcError`` whose message the login page shows; nothing here logs
anyone in (``auth.log_in_oidc`` does, with the ``Identity`` this returns).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import jwt

from connectors.base import check_principal
from context_server.settings import Settings

DISCOVERY_TTL = 300.0  # seconds the discovery document and the JWKS are reused
HTTP_TIMEOUT = 10.0
LEEWAY = 60  # seconds of clock difference tolerated on exp and iat
PENDING_TTL = 600.0  # a login must come back from the provider within ten minutes
ALGORITHMS = ["RS256"]
REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat", "sub"]


class OidcError(Exception):
    """A single sign-on login failed; the message says why, for the login page."""


@dataclass(frozen=True)
class Pending:
    """A login sent to the provider and not back yet: kept in the server-side session."""

    state: str
    nonce: str
    verifier: str  # the PKCE code verifier; only its S256 hash went to the provider
    next: str
    started: float

    @classmethod
    def from_session(cls, value: object) -> Pending | None:
        if not isinstance(value, dict):
            return None
        try:
            return cls(**value)
        except TypeError:
            return None

    def to_session(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Identity:
    """Who the provider says logged in, and until when its ID token is valid."""

    subject: str  # user:VALUE
    expires_at: float


@dataclass
class _Cached:
    value: dict[str, Any]
    fetched: float


class OidcClient:
    """The relying party for one provider; caches its discovery document and keys."""

    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None) -> None:
        if settings.oidc_issuer is None:
            raise ValueError("OIDC is not configured (CONTEXT_SERVER_OIDC_ISSUER is unset)")
        self.issuer = settings.oidc_issuer
        self.client_id = settings.oidc_client_id or ""
        secret = settings.oidc_client_secret
        self._secret = secret.get_secret_value() if secret else ""
        self.user_claim = settings.oidc_user_claim
        self.scopes = settings.oidc_scopes
        self._transport = transport
        self._lock = threading.Lock()
        self._discovery: _Cached | None = None
        self._jwks: _Cached | None = None

    @property
    def name(self) -> str:
        """What the login button calls the provider: its host."""
        return urlsplit(self.issuer).hostname or self.issuer

    # -- the two steps ---------------------------------------------------------------------

    def start(self, redirect_uri: str, next_page: str) -> tuple[str, Pending]:
        """The provider's authorization URL to send the browser to, and what to remember."""
        discovery = self.discovery()
        methods = discovery.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise OidcError("the provider does not support PKCE with S256; it cannot be used")
        pending = Pending(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            verifier=secrets.token_urlsafe(48),
            next=next_page,
            started=time.time(),
        )
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": self.scopes,
            "state": pending.state,
            "nonce": pending.nonce,
            "code_challenge": code_challenge(pending.verifier),
            "code_challenge_method": "S256",
        }
        url = httpx.URL(discovery["authorization_endpoint"]).copy_merge_params(params)
        return str(url), pending

    def finish(
        self, params: Mapping[str, str], pending: Pending | None, redirect_uri: str
    ) -> Identity:
        """Check the provider's answer to ``pending`` and verify its ID token."""
        _check_response(params, pending)
        assert pending is not None  # _check_response refused a missing one
        discovery = self.discovery()
        id_token = self._exchange(params["code"], pending.verifier, redirect_uri, discovery)
        claims = self._verify(id_token, pending.nonce, discovery)
        return Identity(subject=self._subject(claims), expires_at=float(claims["exp"]))

    # -- the provider's documents ----------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        """``{issuer}/.well-known/openid-configuration``, checked, reused for a few minutes."""
        with self._lock:
            cached = self._discovery
        if cached is not None and time.monotonic() - cached.fetched < DISCOVERY_TTL:
            return cached.value
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = self._get_json(url, "discovery document")
        _check_discovery(document, self.issuer)
        with self._lock:
            self._discovery = _Cached(document, time.monotonic())
        return document

    def _keys(self, discovery: dict[str, Any], refresh: bool = False) -> jwt.PyJWKSet:
        with self._lock:
            cached = self._jwks
        fresh = cached is not None and time.monotonic() - cached.fetched < DISCOVERY_TTL
        if cached is None or refresh or not fresh:
            document = self._get_json(discovery["jwks_uri"], "signing keys (JWKS)")
            cached = _Cached(document, time.monotonic())
            with self._lock:
                self._jwks = cached
        try:
            return jwt.PyJWKSet.from_dict(cached.value)
        except jwt.PyJWTError as exc:
            raise OidcError(f"the provider's signing keys (JWKS) are unusable: {exc}") from exc

    def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            with self._http() as http:
                response = http.get(url)
        except httpx.HTTPError as exc:
            raise OidcError(f"the login provider is unreachable ({what}: {exc})") from exc
        if response.status_code != 200:
            raise OidcError(
                f"the login provider answered {response.status_code} for its {what} ({url})"
            )
        return _json_object(response, what)

    def _http(self) -> httpx.Client:
        return httpx.Client(timeout=HTTP_TIMEOUT, transport=self._transport)

    # -- the code exchange and the ID token ------------------------------------------------

    def _exchange(
        self, code: str, verifier: str, redirect_uri: str, discovery: dict[str, Any]
    ) -> str:
        """POST the code to the token endpoint; the ID token it answers with."""
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        auth: httpx.Auth = httpx.Auth()  # a no-op: client_secret_post sends it in the body
        methods = discovery.get("token_endpoint_auth_methods_supported") or [
            "client_secret_basic"  # the default when the provider names none (OIDC Discovery)
        ]
        if "client_secret_basic" in methods:
            # RFC 6749 2.3.1: both are form-encoded before they go into the Basic header
            auth = httpx.BasicAuth(quote(self.client_id, safe=""), quote(self._secret, safe=""))
        elif "client_secret_post" in methods:
            data.update(client_id=self.client_id, client_secret=self._secret)
        else:
            raise OidcError(
                "the provider accepts neither client_secret_basic nor client_secret_post "
                f"at its token endpoint (it offers {methods})"
            )
        try:
            with self._http() as http:
                response = http.post(discovery["token_endpoint"], data=data, auth=auth)
        except httpx.HTTPError as exc:
            raise OidcError(f"the login provider is unreachable (token endpoint: {exc})") from exc
        body = _json_object(response, "token response")
        if response.status_code != 200:
            raise OidcError(f"the provider refused the login code: {_provider_error(body)}")
        id_token = body.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise OidcError("the provider's token response has no ID token (is 'openid' a scope?)")
        return id_token

    def _verify(self, id_token: str, nonce: str, discovery: dict[str, Any]) -> dict[str, Any]:
        key = self._signing_key(id_token, discovery)
        try:
            claims: dict[str, Any] = jwt.decode(
                id_token,
                key,
                algorithms=ALGORITHMS,
                audience=self.client_id,
                issuer=discovery["issuer"],
                leeway=LEEWAY,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.PyJWTError as exc:
            raise OidcError(_token_problem(exc)) from exc
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        azp = claims.get("azp")
        if (azp is not None or len(audiences) > 1) and azp != self.client_id:
            raise OidcError("the ID token was issued to another client (azp)")
        sent = claims.get("nonce")
        if not isinstance(sent, str) or not secrets.compare_digest(sent, nonce):
            raise OidcError("the ID token's nonce does not match this login; start again")
        return claims

    def _signing_key(self, id_token: str, discovery: dict[str, Any]) -> jwt.PyJWK:
        """The provider's key the token names by ``kid`` (keys refetched once if unknown)."""
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError as exc:
            raise OidcError(f"the provider sent an ID token that is not a JWT: {exc}") from exc
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise OidcError(f"the ID token is signed with {alg!r}; only RS256 is accepted")
        kid = header.get("kid")
        for refresh in (False, True):
            keys = [
                k
                for k in self._keys(discovery, refresh).keys
                if k.key_type == "RSA" and k.public_key_use in (None, "sig")
            ]
            if kid is None and len(keys) == 1:
                return keys[0]
            found = [k for k in keys if kid is not None and k.key_id == kid]
            if found:
                return found[0]
        if kid is None:
            raise OidcError("the ID token names no key (kid) and the provider has several")
        raise OidcError(
            f"the ID token is signed with key {kid!r}, which the provider does not list"
        )

    def _subject(self, claims: dict[str, Any]) -> str:
        claim = self.user_claim
        value = claims.get(claim)
        if not isinstance(value, str) or not value.strip():
            raise OidcError(
                f"the provider's ID token has no {claim!r} claim, which names the user here "
                "(CONTEXT_SERVER_OIDC_USER_CLAIM; its scope may be missing from "
                "CONTEXT_SERVER_OIDC_SCOPES)"
            )
        if claim == "email" and claims.get("email_verified") is False:
            raise OidcError(f"the provider has not verified the email address {value!r}")
        try:
            return check_principal(f"user:{value.strip()}")
        except ValueError as exc:
            raise OidcError(
                f"the {claim!r} claim {value!r} does not make a user principal: {exc}"
            ) from exc


def code_challenge(verifier: str) -> str:
    """PKCE's S256: base64url(sha256(verifier)), unpadded (RFC 7636 4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _check_response(params: Mapping[str, str], pending: Pending | None) -> None:
    """The callback's query: for the login started here, in time, with a code."""
    if pending is None:
        raise OidcError(
            "this login response is not for a login started in this browser, or it was "
            "already used; start again"
        )
    if time.time() - pending.started > PENDING_TTL:
        raise OidcError("the login took more than ten minutes; start again")
    state = params.get("state", "")
    if not secrets.compare_digest(state.encode(), pending.state.encode()):
        raise OidcError("the login response does not match the login started here (state)")
    if params.get("error"):
        raise OidcError(f"the provider refused the login: {_provider_error(params)}")
    if not params.get("code"):
        raise OidcError("the provider sent no authorization code")


def _check_discovery(document: dict[str, Any], issuer: str) -> None:
    for name in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri"):
        value = document.get(name)
        if not isinstance(value, str) or urlsplit(value).scheme not in ("https", "http"):
            raise OidcError(f"the provider's discovery document has no usable {name!r}")
    if document["issuer"].rstrip("/") != issuer.rstrip("/"):
        raise OidcError(
            f"the discovery document names issuer {document['issuer']!r}, not the configured "
            f"{issuer!r}"
        )


def _json_object(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise OidcError(f"the provider's {what} is not a JSON object (HTTP {response.status_code})")
    return body


def _provider_error(body: Mapping[str, Any]) -> str:
    """The provider's ``error`` (and description), shortened: it is shown on the page."""
    error = str(body.get("error") or "unknown error")[:100]
    description = body.get("error_description")
    return f"{error} ({str(description)[:200]})" if description else error


def _token_problem(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.InvalidSignatureError):
        return "the ID token's signature does not verify against the provider's keys"
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "the ID token has expired; log in again (check the server's clock if it repeats)"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "the ID token was issued for another client (aud)"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "the ID token was issued by another issuer (iss)"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "the ID token is dated in the future (iat/nbf); check the clocks"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"the ID token lacks the {exc.claim!r} claim"
    return f"the ID token is not valid: {exc}"
