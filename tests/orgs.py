"""Building a small organization for API tests: files in a share, settings, and the
principals, source and first sync set up through the API itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from context_server.settings import Settings


def write_files(root: Path, files: dict[str, str]) -> Path:
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(body)
    return root


def org_settings(tmp_path: Path, database_url: str | None) -> Settings:
    """Settings with a data dir under ``tmp_path`` and an (empty) agents folder."""
    settings = Settings(home=tmp_path / "home", database_url=database_url)
    settings.agents_path.mkdir(parents=True)
    return settings


def seed(
    http: Any,
    headers: dict[str, str],
    *,
    principals: dict[str, Any],
    share: Path,
    rules: list[dict[str, Any]],
    source: str = "drive",
) -> None:
    """Load ``principals``, add a filesystem source over ``share`` and sync it, through the
    API (``http``: a TestClient or an httpx.Client on a running server)."""
    assert http.put("/v1/principals", json=principals, headers=headers).status_code == 200
    config = {"root": str(share), "acl_rules": rules}
    body = {"name": source, "kind": "filesystem", "config": config}
    assert http.post("/v1/sources", json=body, headers=headers).status_code == 200
    (run,) = http.post("/v1/sync", json={"source": source}, headers=headers).json()["runs"]
    assert run["status"] == "completed", run
