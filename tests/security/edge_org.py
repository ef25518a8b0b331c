"""A small org for the HTTP-edge tests (request limits, schema fuzzing, web sessions, files
at rest): the org of test_context_api.py over SQLite, the fake hashing embedder (named so:
ranking is not under test), the app built with a known admin token, and one key of each
kind. ``serving`` runs the app in uvicorn on a free port, for tests that need a real socket
(a streamed body whose consumption is measured)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

from context_server.api.app import create_app
from context_server.runtime import Runtime
from context_server.settings import Settings
from indexing.embed import FakeHashEmbedder
from tests.fakes.uvicorn_server import serving as serve_app
from tests.integration.test_context_api import AGENTS, FILES, PRINCIPALS, RULES
from tests.orgs import seed, write_files

ADMIN_TOKEN = "edge-admin-token"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


ADMIN = bearer(ADMIN_TOKEN)


@dataclass
class EdgeOrg:
    settings: Settings
    runtime: Runtime
    app: FastAPI
    client: TestClient
    keys: dict[str, str] = field(default_factory=dict)  # admin, agent, user

    def headers(self, kind: str) -> dict[str, str]:
        return bearer(self.keys[kind]) if kind in self.keys else {}


@contextmanager
def edge_org(tmp_path: Path, **settings: Any) -> Iterator[EdgeOrg]:
    share = write_files(tmp_path / "share", FILES)
    config = Settings(home=tmp_path / "home", **settings)
    config.agents_path.mkdir(parents=True)
    for spec in AGENTS.values():
        (config.agents_path / f"{spec['name']}.yaml").write_text(yaml.safe_dump(spec))
    runtime = Runtime(config, embedder=FakeHashEmbedder())
    app = create_app(config, runtime=runtime, admin_token=ADMIN_TOKEN)
    try:
        with TestClient(app) as client:
            seed(client, ADMIN, principals=PRINCIPALS, share=share, rules=RULES)
            org = EdgeOrg(config, runtime, app, client)
            org.keys["admin"] = ADMIN_TOKEN
            for kind, body in (("agent", {"agent": "helpdesk"}), ("user", {"user": "user:alice"})):
                r = client.post("/v1/keys", json=body, headers=ADMIN)
                assert r.status_code == 200, r.text
                org.keys[kind] = r.json()["key"]
            yield org
    finally:
        runtime.close()


def serving(app: FastAPI) -> AbstractContextManager[str]:
    """uvicorn in a thread on a free port (the app's lifespan already runs elsewhere)."""
    return serve_app(app, lifespan="off")
