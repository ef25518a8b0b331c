"""How CLI commands reach the system: through a running `serve`, or by opening it themselves.

The embedded index is owned by one process. While `serve` runs it records its address,
pid and an admin token in ``<home>/server.json`` (mode 0600); commands find it there and
go through its API. Otherwise they open the store and index in-process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol
from urllib.parse import quote

import httpx

from connectors import registry
from context_server.audit import parse_time
from context_server.errors import ServerError
from context_server.keys import ADMIN, KeyKind
from context_server.routing import ContextFilters, ContextRouter
from context_server.runtime import Runtime, SearchMode
from context_server.settings import Settings
from context_server.specs import PrincipalsSpec, SourceSpec, resolve_paths
from indexing.pipeline import SyncReport

ProgressFn = Callable[[str, SyncReport], None]


@dataclass(frozen=True)
class ServerInfo:
    url: str
    pid: int
    token: str


def write_server_file(path: Path, info: ServerInfo) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": info.url, "pid": info.pid, "token": info.token}, f)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_server(settings: Settings) -> ServerInfo | None:
    """The live `serve` of this data dir, if any (a stale file is removed)."""
    path = settings.server_file
    try:
        data = json.loads(path.read_text())
        info = ServerInfo(url=str(data["url"]), pid=int(data["pid"]), token=str(data["token"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        raise ServerError(f"{path} is unreadable; remove it if no server runs") from None
    if not _pid_alive(info.pid):
        path.unlink(missing_ok=True)
        return None
    return info


class Backend(Protocol):
    def add_source(self, spec: SourceSpec, base_dir: Path) -> dict[str, Any]: ...
    def list_sources(self) -> list[dict[str, Any]]: ...
    def failures(self, name: str) -> list[dict[str, str]]: ...
    def sync(self, name: str | None, progress: ProgressFn | None) -> list[dict[str, Any]]: ...
    def search(
        self, query: str, principal: str, k: int, mode: SearchMode
    ) -> list[dict[str, Any]]: ...
    def load_principals(self, spec: PrincipalsSpec) -> dict[str, int]: ...
    def context(
        self,
        agent: str,
        on_behalf_of: str,
        query: str,
        budget_tokens: int | None,
        sources: list[str] | None,
    ) -> dict[str, Any]: ...
    def bundle(self, bundle_id: str, as_user: str | None = None) -> dict[str, Any]: ...
    def check_bundle(self, bundle_id: str, as_user: str | None = None) -> dict[str, Any]: ...
    def document(
        self, document_id: str, agent: str | None, on_behalf_of: str | None
    ) -> dict[str, Any]: ...
    def list_agents(self) -> dict[str, Any]: ...
    def create_key(self, kind: KeyKind, subject: str, label: str) -> dict[str, Any]: ...
    def list_keys(self) -> list[dict[str, Any]]: ...
    def revoke_key(self, key_id: str) -> dict[str, Any]: ...
    def audit_export(self, since: str | None, until: str | None) -> Iterator[dict[str, Any]]: ...
    def close(self) -> None: ...


class LocalBackend:
    """Opens the store and the index in this process."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.router = ContextRouter(runtime)

    def add_source(self, spec: SourceSpec, base_dir: Path) -> dict[str, Any]:
        return self.runtime.add_source(spec, base_dir).to_json()

    def list_sources(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.runtime.list_sources()]

    def failures(self, name: str) -> list[dict[str, str]]:
        return self.runtime.failures(name)

    def sync(self, name: str | None, progress: ProgressFn | None) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.runtime.sync(name, progress)]

    def search(self, query: str, principal: str, k: int, mode: SearchMode) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.runtime.search(query, principal, k, mode=mode)]

    def load_principals(self, spec: PrincipalsSpec) -> dict[str, int]:
        return self.runtime.load_principals(spec)

    def context(
        self,
        agent: str,
        on_behalf_of: str,
        query: str,
        budget_tokens: int | None,
        sources: list[str] | None,
    ) -> dict[str, Any]:
        filters = ContextFilters(sources=tuple(sources)) if sources else None
        return self.router.route(ADMIN, agent, on_behalf_of, query, budget_tokens, filters)

    def bundle(self, bundle_id: str, as_user: str | None = None) -> dict[str, Any]:
        return self.router.bundle(ADMIN, bundle_id, as_user)

    def check_bundle(self, bundle_id: str, as_user: str | None = None) -> dict[str, Any]:
        return self.router.check(ADMIN, bundle_id, as_user)

    def document(
        self, document_id: str, agent: str | None, on_behalf_of: str | None
    ) -> dict[str, Any]:
        return self.router.document(ADMIN, document_id, agent, on_behalf_of)

    def list_agents(self) -> dict[str, Any]:
        return self.runtime.list_agents()

    def create_key(self, kind: KeyKind, subject: str, label: str) -> dict[str, Any]:
        return self.runtime.create_key(kind, subject, label)

    def list_keys(self) -> list[dict[str, Any]]:
        return self.runtime.list_keys()

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        return self.runtime.revoke_key(key_id)

    def audit_export(self, since: str | None, until: str | None) -> Iterator[dict[str, Any]]:
        start = parse_time(since) if since else None
        end = parse_time(until) if until else None
        yield from self.runtime.audit_export(start, end)

    def close(self) -> None:
        self.runtime.close()


class RemoteBackend:
    """Talks to the running `serve` that owns the index."""

    def __init__(self, info: ServerInfo, transport: httpx.BaseTransport | None = None) -> None:
        self.info = info
        self.http = httpx.Client(
            base_url=info.url,
            headers={"Authorization": f"Bearer {info.token}"},
            timeout=httpx.Timeout(10.0, read=None),  # a sync may take long
            transport=transport,
        )

    def _call(
        self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None
    ) -> Any:
        try:
            response = self.http.request(method, path, json=body, params=params)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if response.is_error:
            self._raise(response)
        return response.json()

    def _unreachable(self, exc: Exception) -> ServerError:
        return ServerError(
            f"the server at {self.info.url} (pid {self.info.pid}) does not answer: {exc}"
        )

    def _raise(self, response: httpx.Response) -> NoReturn:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise ServerError(f"server refused ({response.status_code}): {detail}")

    def add_source(self, spec: SourceSpec, base_dir: Path) -> dict[str, Any]:
        config = dict(spec.config)
        resolve_paths(registry.connector_class(spec.kind).config_model, config, base_dir)
        body = spec.model_copy(update={"config": config}).model_dump()
        result: dict[str, Any] = self._call("POST", "/v1/sources", body)
        return result

    def list_sources(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/sources")["sources"])

    def failures(self, name: str) -> list[dict[str, str]]:
        return list(self._call("GET", f"/v1/sources/{quote(name)}/failures")["failures"])

    def sync(self, name: str | None, progress: ProgressFn | None) -> list[dict[str, Any]]:
        return list(self._call("POST", "/v1/sync", {"source": name})["runs"])

    def search(self, query: str, principal: str, k: int, mode: SearchMode) -> list[dict[str, Any]]:
        body = {"query": query, "as": principal, "k": k, "mode": mode}
        return list(self._call("POST", "/v1/search", body)["results"])

    def load_principals(self, spec: PrincipalsSpec) -> dict[str, int]:
        result: dict[str, int] = self._call("PUT", "/v1/principals", spec.model_dump())
        return result

    def context(
        self,
        agent: str,
        on_behalf_of: str,
        query: str,
        budget_tokens: int | None,
        sources: list[str] | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"agent": agent, "on_behalf_of": on_behalf_of, "query": query}
        if budget_tokens is not None:
            body["budget_tokens"] = budget_tokens
        if sources:
            body["filters"] = {"sources": sources}
        return dict(self._call("POST", "/v1/context", body))

    def bundle(self, bundle_id: str, as_user: str | None = None) -> dict[str, Any]:
        params = {"as": as_user} if as_user else {}
        return dict(self._call("GET", f"/v1/bundles/{quote(bundle_id)}", params=params))

    def check_bundle(self, bundle_id: str, as_user: str | None = None) -> dict[str, Any]:
        params = {"as": as_user} if as_user else {}
        return dict(self._call("GET", f"/v1/bundles/{quote(bundle_id)}/check", params=params))

    def document(
        self, document_id: str, agent: str | None, on_behalf_of: str | None
    ) -> dict[str, Any]:
        params = {k: v for k, v in (("agent", agent), ("on_behalf_of", on_behalf_of)) if v}
        path = f"/v1/documents/{quote(document_id)}"
        return dict(self._call("GET", path, params=params))

    def list_agents(self) -> dict[str, Any]:
        return dict(self._call("GET", "/v1/agents"))

    def create_key(self, kind: KeyKind, subject: str, label: str) -> dict[str, Any]:
        return dict(self._call("POST", "/v1/keys", {kind: subject, "label": label}))

    def list_keys(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/keys")["keys"])

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        return dict(self._call("DELETE", f"/v1/keys/{quote(key_id)}"))

    def audit_export(self, since: str | None, until: str | None) -> Iterator[dict[str, Any]]:
        params = {k: v for k, v in (("since", since), ("until", until)) if v}
        try:
            with self.http.stream("GET", "/v1/audit", params=params) as response:
                if response.is_error:
                    response.read()
                    self._raise(response)
                for line in response.iter_lines():
                    if line:
                        yield json.loads(line)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc

    def close(self) -> None:
        self.http.close()


def connect(settings: Settings) -> Backend:
    info = running_server(settings)
    if info is not None:
        return RemoteBackend(info)
    return LocalBackend(Runtime(settings))
