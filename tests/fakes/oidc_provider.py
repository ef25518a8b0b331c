"""``FakeOidcProvider``: a fake OpenID Connect provider on a real local port.

It serves what a relying party uses: the discovery document, its JWKS (an RSA key made
with ``cryptography``), ``/authorize`` (records the request and sends the browser straight
back to ``redirect_uri`` with a code and the state — or with ``deny``'s error) and
``/token`` (checks the code, the client's secret, the redirect URI and the PKCE verifier
against the stored challenge, then answers an ID token signed RS256 with its key). ::

    with FakeOidcProvider() as idp:
        idp.user = {"sub": "u-17", "preferred_username": "amara"}
        idp.fault = "expired"   # the next ID tokens are expired
        ...
        assert idp.token_requests[-1].form["code_verifier"]

``fault`` makes the ID token wrong in one way: ``bad_signature`` (signed by another key
under the same kid), ``wrong_audience``, ``wrong_issuer``, ``expired``, ``wrong_nonce``,
``missing_claim`` (no ``preferred_username`` nor ``email``). Codes are single-use: any
exchange, good or bad, spends the code. A plain ``ThreadingHTTPServer`` in a daemon thread.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fakes.local_server import LocalServer

FAULTS = (
    "bad_signature",
    "wrong_audience",
    "wrong_issuer",
    "expired",
    "wrong_nonce",
    "missing_claim",
)


@dataclass(frozen=True)
class TokenRequest:
    """One POST to ``/token``: its form and how the client authenticated."""

    form: dict[str, str]
    auth_method: str  # client_secret_basic | client_secret_post | none
    client_id: str | None
    refusal: str | None  # the error answered, or None when an ID token was issued


@dataclass(frozen=True)
class _Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    user: dict[str, Any]


@dataclass
class _Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class FakeOidcProvider(LocalServer):
    """A fake OIDC provider; ``url`` is its issuer."""

    def __init__(
        self,
        client_id: str = "context-server",
        client_secret: str = "fake-client-secret",
        *,
        auth_methods: tuple[str, ...] = ("client_secret_basic", "client_secret_post"),
        token_lifetime: int = 300,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.auth_methods = auth_methods
        self.token_lifetime = token_lifetime
        self.user: dict[str, Any] = {
            "sub": "0b7e-amara",
            "preferred_username": "amara",
            "email": "amara@northwind.example",
            "email_verified": True,
        }
        self.fault: str | None = None
        self.deny: str | None = None  # an error code /authorize answers with, e.g. access_denied
        self.authorize_requests: list[dict[str, str]] = []
        self.token_requests: list[TokenRequest] = []
        self.kid = "fake-key-1"
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._other_key: rsa.RSAPrivateKey | None = None
        self._grants: dict[str, _Grant] = {}
        self._lock = threading.Lock()
        super().__init__(self._handler(), "fake-oidc-provider")

    @property
    def url(self) -> str:
        return self.origin

    # -- documents -------------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.url,
            "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token",
            "jwks_uri": f"{self.url}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": list(self.auth_methods),
            "scopes_supported": ["openid", "profile", "email"],
        }

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid=self.kid, use="sig", alg="RS256")
        return {"keys": [jwk]}

    def id_token(self, grant: _Grant) -> str:
        """The ID token for ``grant``, wrong in the way ``fault`` says."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": grant.client_id,
            "iat": now,
            "exp": now + self.token_lifetime,
            "auth_time": now,
            **grant.user,
        }
        if grant.nonce is not None:
            claims["nonce"] = grant.nonce
        key = self.key
        if self.fault == "bad_signature":
            key = self._other()
        elif self.fault == "wrong_audience":
            claims["aud"] = "someone-elses-client"
        elif self.fault == "wrong_issuer":
            claims["iss"] = "https://impostor.example"
        elif self.fault == "expired":
            claims.update(iat=now - 7200, exp=now - 3600)
        elif self.fault == "wrong_nonce":
            claims["nonce"] = "not-the-nonce-of-this-login"
        elif self.fault == "missing_claim":
            claims.pop("preferred_username", None)
            claims.pop("email", None)
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": self.kid})

    def _other(self) -> rsa.RSAPrivateKey:
        if self._other_key is None:
            self._other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self._other_key

    # -- endpoints -------------------------------------------------------------------------

    def _authorize(self, query: dict[str, str]) -> _Reply:
        with self._lock:
            self.authorize_requests.append(query)
        redirect_uri = query.get("redirect_uri", "")
        problem = self._authorize_problem(query)
        if problem:
            return _Reply(400, {"error": "invalid_request", "error_description": problem})
        if self.deny:
            back = {"error": self.deny, "error_description": "the user said no"}
        else:
            code = secrets.token_urlsafe(24)
            grant = _Grant(
                client_id=query["client_id"],
                redirect_uri=redirect_uri,
                challenge=query["code_challenge"],
                nonce=query.get("nonce"),
                user=dict(self.user),
            )
            with self._lock:
                self._grants[code] = grant
            back = {"code": code}
        back["state"] = query.get("state", "")
        return _Reply(302, b"", {"Location": f"{redirect_uri}?{urlencode(back)}"})

    def _authorize_problem(self, query: dict[str, str]) -> str | None:
        if query.get("client_id") != self.client_id:
            return "unknown client_id"
        if query.get("response_type") != "code":
            return "response_type must be code"
        if "openid" not in query.get("scope", "").split():
            return "scope must include openid"
        if not query.get("redirect_uri", "").startswith("http"):
            return "redirect_uri is missing"
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            return "PKCE with S256 is required"
        return None

    def _token(self, form: dict[str, str], authorization: str) -> _Reply:
        method, client_id, secret = _client_auth(form, authorization)
        refusal, reply = self._token_reply(form, method, client_id, secret)
        with self._lock:
            self.token_requests.append(TokenRequest(form, method, client_id, refusal))
        return reply

    def _token_reply(
        self, form: dict[str, str], method: str, client_id: str | None, secret: str | None
    ) -> tuple[str | None, _Reply]:
        def refuse(status: int, error: str, description: str) -> tuple[str, _Reply]:
            body = {"error": error, "error_description": description}
            return f"{error}: {description}", _Reply(status, body)

        if method not in self.auth_methods:
            return refuse(401, "invalid_client", f"{method} is not accepted")
        if client_id != self.client_id or secret != self.client_secret:
            return refuse(401, "invalid_client", "bad client credentials")
        if form.get("grant_type") != "authorization_code":
            return refuse(400, "unsupported_grant_type", "only authorization_code")
        with self._lock:
            grant = self._grants.pop(form.get("code", ""), None)  # single-use, however it goes
        if grant is None:
            return refuse(400, "invalid_grant", "unknown or used code")
        if form.get("redirect_uri") != grant.redirect_uri:
            return refuse(400, "invalid_grant", "redirect_uri differs from the authorization")
        if s256(form.get("code_verifier", "")) != grant.challenge:
            return refuse(400, "invalid_grant", "PKCE verification failed")
        body = {
            "access_token": secrets.token_urlsafe(24),
            "token_type": "Bearer",
            "expires_in": self.token_lifetime,
            "id_token": self.id_token(grant),
        }
        return None, _Reply(200, body, {"Cache-Control": "no-store"})

    def _respond(self, method: str, target: str, body: bytes, authorization: str) -> _Reply:
        parts = urlsplit(target)
        query = dict(parse_qsl(parts.query))
        if method == "GET" and parts.path == "/.well-known/openid-configuration":
            return _Reply(200, self.discovery())
        if method == "GET" and parts.path == "/jwks":
            return _Reply(200, self.jwks())
        if method == "GET" and parts.path == "/authorize":
            return self._authorize(query)
        if method == "POST" and parts.path == "/token":
            return self._token(dict(parse_qsl(body.decode())), authorization)
        return _Reply(404, {"error": f"no route {method} {parts.path}"})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                auth = self.headers.get("Authorization", "")
                reply = fake._respond(self.command, self.path, raw, auth)
                data = (
                    reply.body
                    if isinstance(reply.body, bytes)
                    else json.dumps(reply.body).encode("utf-8")
                )
                self.send_response(reply.status)
                if not isinstance(reply.body, bytes):
                    self.send_header("Content-Type", "application/json")
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: tests read the recorded requests instead

        return Handler


def _client_auth(form: dict[str, str], authorization: str) -> tuple[str, str | None, str | None]:
    """How the client authenticated at ``/token``, and the id and secret it sent."""
    if authorization.startswith("Basic "):
        decoded = base64.b64decode(authorization.removeprefix("Basic ")).decode()
        client_id, _, secret = decoded.partition(":")
        return "client_secret_basic", unquote(client_id), unquote(secret)
    if "client_secret" in form:
        return "client_secret_post", form.get("client_id"), form["client_secret"]
    return "none", form.get("client_id"), None
