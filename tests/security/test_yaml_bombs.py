"""YAML bombs: every YAML file a user or an admin writes is read with bounded size, aliases,
depth and nodes; a bad file is refused in milliseconds with a message naming the file and
the limit, a bad agent file is reported and never used, and the server stays responsive.

Each check that could hang on an unbounded loader runs in a forked child (or a thread for
the in-process app) with a deadline, so a regression fails instead of hanging the suite."""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from connectors import safe_yaml
from connectors.markdown_wiki.pages import PageError, split_front_matter
from connectors.safe_yaml import YamlError, YamlLimitError
from context_server.agents import AgentCatalog, load_agent_file
from context_server.api.app import create_app
from context_server.errors import SpecError
from context_server.runtime import Runtime
from context_server.specs import load_principals_spec, load_source_spec
from indexing.embed import FakeHashEmbedder
from tests.integration.test_cli import BIN
from tests.orgs import org_settings, seed, write_files

TOKEN = "yaml-bomb-admin"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def laughs(levels: int = 9, width: int = 9) -> str:
    """Billion laughs: ``width ** levels`` strings from a few hundred bytes."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for n in range(1, levels):
        lines.append(f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


LAUGHS = laughs()
#: Variants: each is a whole file's text. The agent-shaped ones put the bomb where a
#: validator would walk or print it.
BOMBS: dict[str, str] = {
    "billion_laughs": LAUGHS,
    "laughs_in_a_field": LAUGHS + "name: bomb\nsources: [drive]\ndescription: *l8\n",
    "laughs_as_a_list": LAUGHS + "name: bomb\nsources: *l8\n",
    "laughs_in_free_input": LAUGHS
    + "name: bomb\nsources: [drive]\ntrigger: {kind: schedule, cron: '0 9 * * 1', "
    "input: {x: *l8}}\n",
    "merge_key_doubling": "m0: &m0 {a: 1}\n"
    + "".join(
        f"m{n}: &m{n} {{<<: [*m{n - 1}, *m{n - 1}], k{n}: *m{n - 1}}}\n" for n in range(1, 40)
    ),
    "anchor_as_key": LAUGHS + "? *l8\n: x\n",
    "recursive_alias": "a: &a [1, *a]\nname: bomb\n",
    "deep_flow": "name: bomb\nsources: " + "[" * 50_000 + "]" * 50_000 + "\n",
    "deep_flow_mappings": "name: bomb\nx: " + "{a: " * 20_000 + "1" + "}" * 20_000 + "\n",
    "deep_block": "".join("  " * i + f"k{i}:\n" for i in range(400)) + "  " * 400 + "v\n",
    "huge_scalar": "name: bomb\ndescription: " + "a" * (20 * 1024 * 1024) + "\n",
    "many_keys": "".join(f"k{i}: {i}\n" for i in range(300_000)),
    "many_items": "sources: [" + ", ".join(["s"] * 400_000) + "]\n",
    "huge_int": "name: bomb\nbudget_tokens: " + "9" * 50_000 + "\n",
    "sexagesimal_int": "name: bomb\nbudget_tokens: " + ":".join(["59"] * 100_000) + "\n",
}


def within(seconds: float, fn: Callable[..., Any], *args: Any) -> tuple[str, str, str]:
    """Run ``fn(*args)`` in a forked child; ``("ok", repr, "")`` or ``("error", type,
    message)``. Fails the test when it takes longer than ``seconds`` (the child is killed)."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)

    def child() -> None:
        try:
            value = fn(*args)
            send.send(("ok", repr(value)[:200], ""))
        except BaseException as exc:  # report every kind, RecursionError included
            send.send(("error", type(exc).__name__, str(exc)[:2000]))

    proc = ctx.Process(target=child, daemon=True)
    started = time.monotonic()
    proc.start()
    ready = receive.poll(seconds)
    elapsed = time.monotonic() - started
    if not ready:
        proc.kill()
        proc.join()
        pytest.fail(f"{getattr(fn, '__name__', fn)} did not finish within {seconds}s")
    result: tuple[str, str, str] = receive.recv()
    proc.join(timeout=5)
    assert elapsed < seconds
    return result


# -- the loader itself ------------------------------------------------------------------------


def test_billion_laughs_is_refused_in_milliseconds() -> None:
    started = time.perf_counter()
    with pytest.raises(YamlLimitError) as caught:
        safe_yaml.load(LAUGHS, what="bomb.yaml")
    elapsed = time.perf_counter() - started
    assert elapsed < 0.1, f"took {elapsed * 1000:.0f} ms"
    assert caught.value.limit in ("max_nodes", "max_aliases")
    assert "bomb.yaml" in str(caught.value)


def test_a_few_aliases_of_a_big_node_count_as_all_of_it() -> None:
    """Alias count alone is not enough: three aliases of a 40k-node list are 120k nodes."""
    text = "a: &a [" + ", ".join(["x"] * 40_000) + "]\nb: [*a, *a, *a]\n"
    with pytest.raises(YamlLimitError) as caught:
        safe_yaml.load(text, what="t", max_aliases=10)
    assert caught.value.limit == "max_nodes"


def test_depth_through_aliases_counts() -> None:
    """An alias of a deep node placed deep is as deep as both together."""
    nested = "[" * 40 + "]" * 40
    text = f"a: &a {nested}\nb: {'[' * 40}*a{']' * 40}\n"
    safe_yaml.load(f"a: &a {nested}\n", what="t")  # 41 deep: fine
    with pytest.raises(YamlLimitError) as caught:
        safe_yaml.load(text, what="t")
    assert caught.value.limit == "max_depth"


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_every_bomb_is_one_clear_error_quickly(name: str) -> None:
    started = time.perf_counter()
    with pytest.raises(YamlError) as caught:
        safe_yaml.load(BOMBS[name], what=f"{name}.yaml")
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"{name}: {elapsed:.2f}s"
    assert f"{name}.yaml" in str(caught.value)


def test_limits_are_named_and_configurable() -> None:
    text = "".join(f"k{i}: {i}\n" for i in range(50))
    assert len(safe_yaml.load(text, what="t")) == 50
    with pytest.raises(YamlLimitError, match="more than 20 nodes") as caught:
        safe_yaml.load(text, what="t", max_nodes=20)
    assert caught.value.limit == "max_nodes"
    with pytest.raises(YamlLimitError, match="more than the 100") as caught:
        safe_yaml.load(text, what="t", max_bytes=100)
    assert caught.value.limit == "max_bytes"
    with pytest.raises(YamlLimitError, match="more than 1 aliases"):
        safe_yaml.load("a: &a 1\nb: *a\nc: *a\n", what="t", max_aliases=1)
    with pytest.raises(YamlLimitError, match="deeper than 3"):
        safe_yaml.load("a: [[[1]]]\n", what="t", max_depth=3)
    assert isinstance(caught.value, ValueError)


def test_ordinary_yaml_is_read_as_safe_load_reads_it() -> None:
    text = (
        "name: x\nn: 3\nf: 1.5\nwhen: 2024-01-02\nlist: [a, b]\n"
        "base: &b {k: 1}\nmerged: {<<: *b, j: 2}\nyes_key: yes\n"
    )
    assert safe_yaml.load(text, what="t") == yaml.safe_load(text)
    assert safe_yaml.load(text.encode(), what="t") == yaml.safe_load(text)


def test_yaml12_booleans_are_an_option() -> None:
    text = "on: [created]\nflag: yes\nreal: true\n"
    assert safe_yaml.load(text, what="t", yaml12_bools=True) == {
        "on": ["created"],
        "flag": "yes",
        "real": True,
    }
    assert safe_yaml.load(text, what="t")[True] == ["created"]  # YAML 1.1, as safe_load


def test_syntax_errors_and_bad_values_are_the_same_error_type() -> None:
    for text in (
        "a: [1, 2",
        "a: !!python/object:os.system x",
        "a: !!int abc",
        "a: !!timestamp 2024-13-45",
        b"\xff\xfe",
    ):
        with pytest.raises(YamlError, match=r"t\.yaml"):
            safe_yaml.load(text, what="t.yaml")


_UNBOUNDED = re.compile(r"(?<![\w.])yaml\.(?:safe_load|load|full_load|unsafe_load|load_all)\b")


def test_no_yaml_loading_bypasses_the_bounded_loader() -> None:
    """Every yaml.load / safe_load of the code base goes through connectors.safe_yaml."""
    root = Path(__file__).resolve().parents[2]
    offenders = []
    for package in ("connectors", "indexing", "policies", "context_server"):
        for path in (root / package).rglob("*.py"):
            if path.name == "safe_yaml.py":
                continue
            for match in _UNBOUNDED.finditer(path.read_text()):
                offenders.append(f"{path.relative_to(root)}: {match.group()}")
    assert offenders == []


# -- every kind of user file ------------------------------------------------------------------


def _agent(path: Path) -> Any:
    return load_agent_file(path)


def _source(path: Path) -> Any:
    return load_source_spec(path)


def _principals(path: Path) -> Any:
    return load_principals_spec(path)


def _front_matter(path: Path) -> Any:
    return split_front_matter("---\n" + path.read_text() + "\n---\n# Page\n\ntext\n")


KINDS: dict[str, tuple[Callable[[Path], Any], str]] = {
    "agent": (_agent, SpecError.__name__),
    "source": (_source, SpecError.__name__),
    "principals": (_principals, SpecError.__name__),
    "front_matter": (_front_matter, PageError.__name__),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize(
    "bomb",
    [
        "billion_laughs",
        "laughs_in_a_field",
        "laughs_as_a_list",
        "laughs_in_free_input",
        "merge_key_doubling",
        "recursive_alias",
        "deep_flow",
        "deep_flow_mappings",
        "deep_block",
        "huge_int",
        "many_keys",
    ],
)
def test_every_user_file_kind_refuses_bombs_fast(tmp_path: Path, kind: str, bomb: str) -> None:
    path = tmp_path / f"{bomb}.yaml"
    path.write_text(BOMBS[bomb])
    fn, error = KINDS[kind]
    outcome, name, message = within(5.0, fn, path)
    assert (outcome, name) == ("error", error), message
    if kind != "front_matter":
        assert str(path) in message


# -- a running app ----------------------------------------------------------------------------


GOOD_AGENT = {
    "name": "helper",
    "sources": ["drive"],
    "serves": ["group:everyone"],
}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    share = write_files(tmp_path / "share", {"leave.md": "# Leave\n\n27 days of paid leave."})
    settings = org_settings(tmp_path, None)
    runtime = Runtime(settings, embedder=FakeHashEmbedder())
    with TestClient(create_app(settings, runtime=runtime, admin_token=TOKEN)) as client:
        seed(
            client,
            ADMIN,
            principals={"groups": {"everyone": ["user:zoe"]}},
            share=share,
            rules=[{"glob": "**", "allow": ["group:everyone"]}],
        )
        (settings.agents_path / "helper.yaml").write_text(yaml.safe_dump(GOOD_AGENT))
        yield client, settings.agents_path
    runtime.close()


def _prompt(fn: Callable[[], Any], seconds: float) -> Any:
    """``fn()`` in a thread; fails when it has not answered within ``seconds``."""
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert box, f"no answer within {seconds}s"
    return box[0], time.monotonic() - started


def test_bad_agent_files_leave_the_server_responsive(app: tuple[TestClient, Path]) -> None:
    client, agents = app
    (agents / "laughs.yaml").write_text(BOMBS["laughs_in_a_field"])
    (agents / "deep.yaml").write_text(BOMBS["deep_flow"])
    (agents / "recursive.yml").write_text(BOMBS["recursive_alias"])
    health, seconds = _prompt(lambda: client.get("/healthz"), 5.0)
    assert health.status_code == 200 and seconds < 5.0
    listing, seconds = _prompt(lambda: client.get("/v1/agents", headers=ADMIN), 5.0)
    assert listing.status_code == 200, listing.text
    body = listing.json()
    assert [a["name"] for a in body["agents"]] == ["helper"]
    invalid = {Path(i["path"]).name: i["error"] for i in body["invalid"]}
    assert set(invalid) == {"laughs.yaml", "deep.yaml", "recursive.yml"}
    assert "more than" in invalid["laughs.yaml"] and "deeper than" in invalid["deep.yaml"]
    # The good agent still serves context, promptly.
    context, seconds = _prompt(
        lambda: client.post(
            "/v1/context",
            json={"agent": "helper", "on_behalf_of": "user:zoe", "query": "paid leave"},
            headers=ADMIN,
        ),
        5.0,
    )
    assert context.status_code == 200, context.text
    assert context.json()["items"]
    # A bomb is never used, even when it declares a name a request asks for.
    (agents / "bomb.yaml").write_text(BOMBS["laughs_as_a_list"])
    refused, _ = _prompt(
        lambda: client.post(
            "/v1/context",
            json={"agent": "bomb", "on_behalf_of": "user:zoe", "query": "leave"},
            headers=ADMIN,
        ),
        5.0,
    )
    assert refused.status_code in (400, 404, 422), refused.text


def test_a_bad_file_is_parsed_once_not_per_request(tmp_path: Path) -> None:
    (tmp_path / "helper.yaml").write_text(yaml.safe_dump(GOOD_AGENT))
    (tmp_path / "laughs.yaml").write_text(BOMBS["laughs_in_a_field"])
    catalog = AgentCatalog(tmp_path)
    calls = 0
    real = safe_yaml.load

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(safe_yaml, "load", counting)
        for _ in range(5):
            valid, invalid = catalog.scan()
    assert [a.spec.name for a in valid] == ["helper"] and len(invalid) == 1
    assert calls == 2  # each file once


# -- the CLI ----------------------------------------------------------------------------------


def _cli(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = dict(os.environ)
    env["CONTEXT_SERVER_HOME"] = str(tmp_path / "home")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    env.pop("CONTEXT_SERVER_DATABASE_URL", None)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(BIN), *args], env=env, capture_output=True, text=True, timeout=60
    )
    return proc, time.monotonic() - started


@pytest.mark.parametrize(
    "command", [("agents", "validate"), ("principals", "load"), ("sources", "add")]
)
def test_cli_commands_fail_fast_with_a_clear_message(
    tmp_path: Path, command: tuple[str, str]
) -> None:
    laughs_file = tmp_path / "laughs.yaml"
    laughs_file.write_text(BOMBS["laughs_in_a_field"])
    deep_file = tmp_path / "deep.yaml"
    deep_file.write_text(BOMBS["deep_flow"])
    for path, limit in ((laughs_file, "nodes"), (deep_file, "deeper than")):
        proc, seconds = _cli(tmp_path, *command, str(path))
        output = proc.stdout + proc.stderr
        assert proc.returncode == 1, output
        assert seconds < 30  # a CLI start included; a bomb alone costs milliseconds
        assert path.name in output and limit in output, output
        assert "Traceback" not in output
