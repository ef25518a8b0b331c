"""Docs a test keeps honest: every setting, connector kind and connector option is documented."""

from pathlib import Path

from connectors import registry
from context_server.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def test_every_setting_is_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    missing = [
        f"CONTEXT_SERVER_{name.upper()}"
        for name in Settings.model_fields
        if f"CONTEXT_SERVER_{name.upper()}" not in readme
    ]
    assert not missing, f"README.md does not document {missing}"


def test_every_connector_and_option_is_documented() -> None:
    guide = (REPO / "connectors" / "README.md").read_text()
    assert registry.kinds(), "no connector is registered (is the package installed?)"
    for kind in registry.kinds():
        assert f"`{kind}`" in guide, f"connector kind {kind} is undocumented"
        page = REPO / "connectors" / kind / "README.md"
        text = guide + (page.read_text() if page.exists() else "")
        model = registry.connector_class(kind).config_model
        assert model.model_json_schema()["properties"], f"{kind} has no config schema"
        for option in model.model_fields:
            assert f"`{option}`" in text, f"{kind} option {option} is undocumented"


def test_readme_shows_the_two_commands() -> None:
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


def test_every_cli_command_is_in_the_readme() -> None:
    import typer.main

    from context_server.cli import app

    readme = (REPO / "README.md").read_text()
    group = typer.main.get_group(app)
    missing = []
    for name, command in group.commands.items():
        subcommands = getattr(command, "commands", None)
        names = [f"{name} {sub}" for sub in subcommands] if subcommands else [name]
        missing += [n for n in names if f"context-server {n}" not in readme]
    assert not missing, f"README.md does not document {missing}"
