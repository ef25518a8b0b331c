"""The jsonl connector against the shared contract, plus its own line handling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from connectors import registry
from connectors.base import Acl, AclSpec
from connectors.errors import ConfigError
from connectors.jsonl.config import JsonlConfig
from connectors.jsonl.connector import JsonlConnector
from tests.contract.connector_contract import ConnectorContract, deletes, failures, run, upserts


def _write(path: Path, lines: list[Any]) -> None:
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines),
        encoding="utf-8",
    )


class TestJsonlContract(ConnectorContract):
    @pytest.fixture(autouse=True)
    def _file(self, tmp_path: Path) -> None:
        self.path = tmp_path / "export.jsonl"
        self.lines: dict[str, Any] = {}  # name → the line's object (or raw text)

    def _save(self) -> None:
        _write(self.path, list(self.lines.values()))

    def connector(self) -> Any:
        config = JsonlConfig(path=self.path, acl=AclSpec(allow=["group:everyone"]), acl_field="acl")
        return JsonlConnector(config)

    def external_id(self, name: str) -> str:
        return f"doc-{name}"

    def add(self, name: str, text: str) -> None:
        self.lines[name] = {"_id": self.external_id(name), "title": name.upper(), "text": text}
        self._save()

    def change(self, name: str, text: str) -> None:
        self.lines[name] = {**self.lines[name], "text": text}
        self._save()

    def remove(self, name: str) -> None:
        del self.lines[name]
        self._save()

    def restrict(self, name: str, principal: str) -> Any:
        self.lines[name] = {**self.lines[name], "acl": {"allow": [principal]}}
        self._save()
        return self.connector()

    def break_(self, name: str) -> None:
        self.lines[name] = {"_id": self.external_id(name), "text": ["not", "a", "string"]}
        self._save()


def _connector(path: Path, **config: Any) -> JsonlConnector:
    return JsonlConnector(JsonlConfig(path=path, acl=AclSpec(allow=["group:staff"]), **config))


def test_the_kind_is_registered() -> None:
    assert registry.connector_class("jsonl") is JsonlConnector


def test_fields_title_text_and_acl(tmp_path: Path) -> None:
    path = tmp_path / "kb.jsonl"
    _write(
        path,
        [
            {"id": 7, "name": "Onboarding", "summary": "First week.", "body": "Meet the team."},
            {"id": "x", "body": "No title here."},
            {"id": "t", "name": "Only a title"},
        ],
    )
    connector = _connector(path, id_field="id", title_field="name", text_fields=["summary", "body"])
    docs = upserts(run(connector, None)[0])
    assert set(docs) == {"7", "x", "t"}
    seven = docs["7"]
    assert seven.title == "Onboarding"
    assert seven.read() == b"First week.\n\nMeet the team."  # the title is not repeated
    assert seven.size == len(seven.read())
    assert seven.filename == "7.txt" and seven.mime_type == "text/plain"
    assert seven.content_hash.startswith("sha256:")
    assert seven.acl == Acl.of(["group:staff"])
    assert docs["x"].title == "x"  # no title: the id
    assert docs["t"].read() == b"Only a title"  # no text: the title is what there is to find


def test_a_title_change_changes_the_hash(tmp_path: Path) -> None:
    path = tmp_path / "kb.jsonl"
    _write(path, [{"_id": "a", "title": "Old", "text": "same"}])
    before = upserts(run(_connector(path), None)[0])["a"]
    _write(path, [{"_id": "a", "title": "New", "text": "same"}])
    after = upserts(run(_connector(path), None)[0])["a"]
    assert before.content_hash != after.content_hash


def test_malformed_lines_are_failures_and_the_sync_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "kb.jsonl"
    _write(
        path,
        [
            {"_id": "a", "text": "fine"},
            "{not json",
            "[1, 2]",
            {"text": "no id"},
            "",
            {"_id": "a", "text": "again"},
            {"_id": "b", "title": 3, "text": "numeric title"},
            {"_id": "c", "text": "fine too", "perm": {"allow": ["finance"]}},
            {"_id": True, "text": "a boolean is no id"},
        ],
    )
    changes, checkpoint = run(_connector(path, acl_field="perm"), None)
    assert set(upserts(changes)) == {"a"}
    bad = failures(changes)
    assert set(bad) == {"line:2", "line:3", "line:4", "line:6", "b", "c", "line:9"}
    assert all(f.reason == "malformed" for f in bad.values())
    assert "not valid JSON" in bad["line:2"].detail
    assert "duplicate id 'a' (first on line 1)" in bad["line:6"].detail
    assert "line 8" in bad["c"].detail and "'perm'" in bad["c"].detail
    assert upserts(changes)["a"].read() == b"fine"
    assert set(checkpoint.documents) == {"a"}


def test_a_malformed_line_keeps_its_document_until_fixed(tmp_path: Path) -> None:
    path = tmp_path / "kb.jsonl"
    _write(path, [{"_id": "a", "text": "one"}, {"_id": "b", "text": "two"}])
    _, checkpoint = run(_connector(path), None)
    _write(path, [{"_id": "a", "text": "one"}, {"_id": "b", "text": 2}])
    changes, after = run(_connector(path), checkpoint)
    assert deletes(changes) == set() and set(failures(changes)) == {"b"}
    assert after.documents["b"] == checkpoint.documents["b"]


def test_per_line_acl_replaces_the_source_acl(tmp_path: Path) -> None:
    path = tmp_path / "kb.jsonl"
    _write(
        path,
        [
            {"_id": "a", "text": "x", "acl": {"allow": ["user:alice"], "deny": ["user:bob"]}},
            {"_id": "b", "text": "y", "acl": {"public": True}},
            {"_id": "c", "text": "z", "acl": None},
        ],
    )
    docs = upserts(run(_connector(path, acl_field="acl"), None)[0])
    assert docs["a"].acl == Acl.of(["user:alice"], deny=["user:bob"])
    assert docs["b"].acl.public
    assert docs["c"].acl == Acl.of(["group:staff"])


def test_url_template(tmp_path: Path) -> None:
    path = tmp_path / "kb.jsonl"
    _write(path, [{"_id": "Team Plan/2", "text": "x"}])
    connector = _connector(path, url_template="https://kb.example.com/a/{id}")
    (doc,) = upserts(run(connector, None)[0]).values()
    assert doc.url == "https://kb.example.com/a/Team%20Plan/2"
    (plain,) = upserts(run(_connector(path), None)[0]).values()
    assert plain.url is None


def test_bad_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="url_template"):
        _connector(tmp_path / "x.jsonl", url_template="https://x/{slug}")
    with pytest.raises(ValueError):
        JsonlConfig.model_validate({"path": "x.jsonl"})  # the ACL is required
    with pytest.raises(ValueError):
        AclSpec(allow=["finance"])
    with pytest.raises(ValueError):
        JsonlConfig.model_validate({"path": "x.jsonl", "acl": {}, "text_fields": []})


def test_missing_file_is_a_clear_config_error(tmp_path: Path) -> None:
    connector = _connector(tmp_path / "nope.jsonl")
    with pytest.raises(ConfigError, match="does not exist"):
        connector.check()
    with pytest.raises(ConfigError):
        run(connector, None)
    with pytest.raises(ConfigError, match="not a file"):
        _connector(tmp_path).check()


def test_relative_path_resolves_against_the_yaml_folder(tmp_path: Path) -> None:
    from context_server.specs import resolve_paths

    config: dict[str, Any] = {"path": "kb.jsonl", "acl": {"allow": ["group:staff"]}}
    resolve_paths(JsonlConfig, config, tmp_path)
    assert config["path"] == str(tmp_path / "kb.jsonl")


def test_a_byte_order_mark_and_blank_lines_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "kb.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"_id": "a", "text": "x"}\n\n   \n{"_id": "b", "text": "y"}')
    changes, _ = run(_connector(path), None)
    assert set(upserts(changes)) == {"a", "b"} and not failures(changes)
