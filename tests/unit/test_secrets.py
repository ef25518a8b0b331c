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
