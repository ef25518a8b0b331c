from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from connectors.errors import ConfigError
from connectors.secrets import SecretRef


class Config(BaseModel):
    token: SecretRef


def test_env_and_file_references_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CS_TEST_TOKEN", "s3cret\n")
    env = Config.model_validate({"token": {"env": "CS_TEST_TOKEN"}}).token
    assert env.resolve().get_secret_value() == "s3cret"
    assert "s3cret" not in repr(env.resolve())
    secret = tmp_path / "token"
    secret.write_text("from-file\n")
    assert SecretRef(file=secret).resolve().get_secret_value() == "from-file"
    assert Config.model_validate({"token": {"env": "X"}}).model_dump() == {
        "token": {"env": "X", "file": None}
    }


def test_plain_values_and_ambiguous_references_are_refused() -> None:
    with pytest.raises(ValidationError, match="never as the value itself"):
        Config.model_validate({"token": "ghp_plaintext"})
    with pytest.raises(ValidationError, match="exactly one"):
        Config.model_validate({"token": {"env": "A", "file": "/b"}})
    with pytest.raises(ValidationError, match="exactly one"):
        Config.model_validate({"token": {}})


def test_missing_secrets_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CS_TEST_MISSING", raising=False)
    with pytest.raises(ConfigError, match="CS_TEST_MISSING is not set"):
        SecretRef(env="CS_TEST_MISSING").resolve()
    with pytest.raises(ConfigError, match="cannot read the credential file"):
        SecretRef(file=tmp_path / "nope").resolve()
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        SecretRef(file=empty).resolve()


def test_relative_credential_files_resolve_against_the_source_yaml(tmp_path: Path) -> None:
    from connectors import registry
    from context_server.specs import resolve_paths

    model = registry.connector_class("github").config_model
    config = {"repositories": ["a/b"], "token": {"file": "secrets/gh"}}
    resolve_paths(model, config, tmp_path)
    assert config["token"] == {"file": str((tmp_path / "secrets" / "gh").resolve())}
    drive = registry.connector_class("google_drive").config_model
    config = {"service_account_key": {"file": "key.json"}, "token": {"env": "X"}}
    resolve_paths(drive, config, tmp_path)
    assert config["service_account_key"] == {"file": str(tmp_path / "key.json")}
    assert config["token"] == {"env": "X"}
