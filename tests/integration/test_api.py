"""The API skeleton through FastAPI's test client, on a real store and embedded index."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from context_server.api.app import create_app
from context_server.runtime import Runtime
from context_server.settings import Settings
from indexing.embed import FakeHashEmbedder

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    share = tmp_path / "share"
    (share / "finance").mkdir(parents=True)
    (share / "finance" / "budget.md").write_text("# Budget\n\nMarketing gets 42,000 EUR in 2027.")
    (share / "welcome.md").write_text("# Welcome\n\nThe office opens at nine.")
    settings = Settings(home=tmp_path / "home")
    runtime = Runtime(settings, embedder=FakeHashEmbedder())
    with TestClient(create_app(settings, runtime=runtime, admin_token=TOKEN)) as c:
        c.share = share  # type: ignore[attr-defined]
        yield c
    runtime.close()


def test_health_needs_no_token_but_v1_does(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/v1/sources").status_code == 401
    assert client.get("/v1/sources", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/v1/sources", headers=AUTH).json() == {"sources": []}
    assert "/v1/search" in client.get("/openapi.json").json()["paths"]


def test_add_sync_search_over_http(client: TestClient) -> None:
    share = client.share  # type: ignore[attr-defined]
    r = client.put(
        "/v1/principals",
        json={"groups": {"everyone": ["group:finance", "user:carol"], "finance": ["user:alice"]}},
        headers=AUTH,
    )
    assert r.json() == {"groups": 2, "memberships": 3}
    spec = {
        "name": "drive",
        "kind": "filesystem",
        "config": {
            "root": str(share),
            "acl_rules": [
                {"glob": "finance/**", "allow": ["group:finance"]},
                {"glob": "**", "allow": ["group:everyone"]},
            ],
        },
    }
    assert client.post("/v1/sources", json=spec, headers=AUTH).json()["name"] == "drive"
    (run,) = client.post("/v1/sync", json={}, headers=AUTH).json()["runs"]
    assert (run["upserted"], run["failed"], run["status"]) == (2, 0, "completed")

    def search(who: str) -> set[str]:
        body = {"query": "marketing budget", "as": who, "k": 10}
        r = client.post("/v1/search", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        return {x["title"] for x in r.json()["results"]}

    assert "budget.md" in search("user:alice")
    assert "budget.md" not in search("user:carol")
    assert client.get("/v1/sources/drive/failures", headers=AUTH).json() == {
        "source": "drive",
        "failures": [],
    }
    closure = client.get("/v1/principals/user:alice", headers=AUTH).json()["principals"]
    assert closure == ["group:everyone", "group:finance", "user:alice"]


def test_domain_errors_become_clear_statuses(client: TestClient) -> None:
    r = client.post("/v1/sync", json={"source": "nope"}, headers=AUTH)
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    bad = {"name": "x", "kind": "filesystem", "config": {"root": "/nonexistent", "oops": 1}}
    r = client.post("/v1/sources", json=bad, headers=AUTH)
    assert r.status_code == 422 and "oops" in r.json()["detail"]
    r = client.post("/v1/sources", json={"name": "x", "kind": "zzz", "config": {}}, headers=AUTH)
    assert r.status_code == 422 and "filesystem" in r.json()["detail"]
    r = client.post("/v1/search", json={"query": "", "as": "user:a"}, headers=AUTH)
    assert r.status_code == 422
    assert client.get("/v1/sources/nope/failures", headers=AUTH).status_code == 404
