"""The harnesses: extractive (no model), command (a real subprocess) and openai (a real
local fake OpenAI-compatible server, ``tests/fakes/openai_server.py``)."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from connectors.secrets import SecretRef
from context_server import harness
from context_server.harness import (
    CommandHarness,
    ExtractiveHarness,
    HarnessError,
    HarnessTask,
    OpenAIHarness,
    run_harness,
)
from tests.fakes.openai_server import FakeOpenAI, completion

ITEMS = [
    {
        "text": "Refunds are issued within 14 days. Ask finance for exceptions. Never by cash.",
        "citation": {
            "title": "Refund policy",
            "source": "wiki",
            "url": "https://wiki.example/refunds",
            "version": "3",
            "document_id": "d1",
            "chunk_id": "c1",
        },
    },
    {
        "text": "Enterprise customers get a named contact.\nThey may ask for credit notes.",
        "citation": {
            "title": "Enterprise terms",
            "source": "drive",
            "url": None,
            "version": "7",
            "document_id": "d2",
            "chunk_id": "c2",
        },
    },
]


def make_task(items: list[dict[str, Any]] | None = None, **changes: Any) -> HarnessTask:
    values: dict[str, Any] = {
        "agent": "refund-helper",
        "description": "Answer customers' refund questions.",
        "query": "How long do refunds take?",
        "input": {"question": "How long do refunds take?"},
        "trigger": {"kind": "manual"},
        "output_kind": "markdown",
        "context": {"bundle_id": "b-1", "items": ITEMS if items is None else items},
    }
    values.update(changes)
    return HarnessTask(**values)


def never() -> bool:
    return False


# -- extractive ----------------------------------------------------------------------------


def test_extractive_cites_each_passage_and_lists_its_source() -> None:
    result = run_harness(ExtractiveHarness(), make_task())

    assert result.content == (
        "**How long do refunds take?**\n"
        "\n"
        "From the cited sources:\n"
        "\n"
        "- Refunds are issued within 14 days. Ask finance for exceptions. [1]\n"
        "- Enterprise customers get a named contact. They may ask for credit notes. [2]\n"
        "\n"
        "Sources:\n"
        "\n"
        "- [1] Refund policy (wiki, v3) <https://wiki.example/refunds>\n"
        "- [2] Enterprise terms (drive, v7)\n"
    )
    assert result.title == "How long do refunds take?"
    assert result.metadata == {"harness": "extractive", "passages": 2}


def test_extractive_is_deterministic_and_bounded() -> None:
    spec = ExtractiveHarness(max_passages=1, sentences_per_passage=1)
    first = run_harness(spec, make_task())
    assert first == run_harness(spec, make_task())
    assert "- Refunds are issued within 14 days. [1]" in first.content
    assert "[2]" not in first.content
    assert first.metadata["passages"] == 1


def test_extractive_without_context_says_so() -> None:
    result = run_harness(ExtractiveHarness(), make_task(items=[]))
    assert "No context the agent may use matches this" in result.content
    assert "[1]" not in result.content
    assert result.metadata["passages"] == 0


# -- command -------------------------------------------------------------------------------


def python(script: str, **fields: Any) -> CommandHarness:
    """A command harness running ``script`` with this Python."""
    return CommandHarness(command=(sys.executable, "-c", textwrap.dedent(script)), **fields)


ECHO = """
    import json, os, sys
    task = json.load(sys.stdin)
    print(json.dumps({
        "content": f"{task['query']} / {len(task['context']['items'])} items / {os.getcwd()}",
        "title": "Echo",
        "metadata": {"agent": task["agent"], "comments": task["review_comments"]},
    }))
"""


def test_command_gets_the_task_on_stdin_and_its_stdout_is_the_result(tmp_path: Path) -> None:
    task = make_task(review_comments=["shorter please"])

    result = run_harness(python(ECHO), task, base_dir=str(tmp_path))

    assert result.content == f"How long do refunds take? / 2 items / {tmp_path}"
    assert result.title == "Echo"
    assert result.metadata["agent"] == "refund-helper"
    assert result.metadata["comments"] == ["shorter please"]
    assert result.metadata["harness"] == "command"
    assert result.metadata["exit_code"] == 0
    assert result.metadata["seconds"] >= 0


def test_command_cwd_is_resolved_against_the_agent_files_directory(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    result = run_harness(python(ECHO, cwd="work"), make_task(), base_dir=str(tmp_path))
    assert result.content.endswith(f"/ {tmp_path / 'work'}")


def test_command_cwd_that_does_not_exist_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="is not a directory") as caught:
        run_harness(python(ECHO, cwd="missing"), make_task(), base_dir=str(tmp_path))
    assert not caught.value.retryable


def test_command_large_stdin_and_stdout_do_not_deadlock() -> None:
    passage = {"text": "x" * 200_000, "citation": {"title": "Big"}}
    script = """
        import json, sys
        task = json.load(sys.stdin)
        text = task["context"]["items"][0]["text"]
        print(json.dumps({"content": text * 10}))
    """
    result = run_harness(python(script), make_task(items=[passage]))
    assert len(result.content) == 2_000_000


def test_command_without_a_title_takes_the_query() -> None:
    result = run_harness(python('print(\'{"content": "hi"}\')'), make_task())
    assert result.content == "hi"
    assert result.title == "How long do refunds take?"


def test_command_failure_quotes_the_exit_code_and_the_end_of_stderr() -> None:
    script = """
        import sys
        sys.stderr.write("noise " * 2000 + "\\nTraceback: the model server is down\\n")
        sys.exit(3)
    """
    with pytest.raises(HarnessError) as caught:
        run_harness(python(script), make_task())
    message = str(caught.value)
    assert "exited with code 3" in message
    assert "the model server is down" in message
    assert len(message) < 2200  # the stderr tail, not all 12 kB of it
    assert not caught.value.retryable


def test_command_exit_75_is_retryable() -> None:
    with pytest.raises(HarnessError, match="exited with code 75") as caught:
        run_harness(python("import sys; sys.exit(75)"), make_task())
    assert caught.value.retryable


@pytest.mark.parametrize(
    ("stdout", "complaint"),
    [
        ("", "wrote nothing to stdout"),
        ("Here is my answer, not JSON", "not JSON"),
        ("[1, 2]", "expected one JSON object"),
        ('{"text": "wrong key"}', 'no "content"'),
        ('{"content": "   "}', 'no "content"'),
        ('{"content": 42}', 'no "content"'),
        ('{"content": "ok", "title": 5}', '"title" that is not a string'),
        ('{"content": "ok", "metadata": [1]}', '"metadata" that is not an object'),
    ],
)
def test_command_bad_stdout_is_a_non_retryable_error(stdout: str, complaint: str) -> None:
    script = f"import sys; sys.stdout.write({stdout!r})"
    with pytest.raises(HarnessError, match=complaint) as caught:
        run_harness(python(script), make_task())
    assert not caught.value.retryable


def test_command_bad_stdout_is_quoted_truncated() -> None:
    script = "print('not json ' * 10000)"
    with pytest.raises(HarnessError, match="not JSON") as caught:
        run_harness(python(script), make_task())
    assert "not json not json" in str(caught.value)
    assert len(str(caught.value)) < 1000


def test_command_stdout_over_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "MAX_STDOUT_BYTES", 1000)
    script = "import sys, time; sys.stdout.write('x' * 5000); sys.stdout.flush(); time.sleep(60)"
    with pytest.raises(HarnessError, match="more than 1000 bytes") as caught:
        run_harness(python(script), make_task())
    assert not caught.value.retryable


def pid_script(pidfile: Path) -> str:
    """Writes its pid to ``pidfile`` (atomically), then sleeps far longer than any test."""
    return f"""
        import os, time
        tmp = {str(pidfile)!r} + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(os.getpid()))
        os.replace(tmp, {str(pidfile)!r})
        time.sleep(600)
    """


def is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_command_timeout_kills_it_and_is_retryable(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with pytest.raises(HarnessError, match="did not finish within 1s") as caught:
        run_harness(python(pid_script(pidfile), timeout="1s"), make_task())
    assert caught.value.retryable
    assert is_gone(int(pidfile.read_text()))


def test_command_cancelled_kills_it(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    polls: list[bool] = []

    def cancelled() -> bool:
        polls.append(pidfile.exists())  # cancel once the child is surely running
        return polls[-1] and len(polls) > 1

    with pytest.raises(HarnessError, match=r"^cancelled$") as caught:
        run_harness(python(pid_script(pidfile)), make_task(), cancelled=cancelled)
    assert not caught.value.retryable
    assert is_gone(int(pidfile.read_text()))


def test_command_cancelled_before_it_starts_never_runs(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with pytest.raises(HarnessError, match="cancelled"):
        run_harness(python(pid_script(pidfile)), make_task(), cancelled=lambda: True)
    assert not pidfile.exists()


def test_command_env_secrets_are_resolved_into_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARNESS_TEST_TOKEN", "tok-123\n")
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file\n")
    spec = python(
        """
        import json, os
        print(json.dumps({"content": os.environ["API_TOKEN"] + " " + os.environ["OTHER"]
                                     + " " + os.environ["PATH"][:1]}))
        """,
        env={
            "API_TOKEN": SecretRef(env="HARNESS_TEST_TOKEN"),
            "OTHER": SecretRef(file=secret_file),
        },
    )
    result = run_harness(spec, make_task())
    assert result.content == f"tok-123 from-a-file {os.environ['PATH'][:1]}"


def test_command_env_secret_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARNESS_TEST_MISSING", raising=False)
    spec = python("print('{}')", env={"API_TOKEN": SecretRef(env="HARNESS_TEST_MISSING")})
    with pytest.raises(HarnessError, match=r"API_TOKEN.*HARNESS_TEST_MISSING is not set") as caught:
        run_harness(spec, make_task())
    assert not caught.value.retryable


def test_command_that_does_not_exist_is_a_clear_error(tmp_path: Path) -> None:
    spec = CommandHarness(command=("./no-such-agent",))
    with pytest.raises(HarnessError, match=re.escape("cannot start './no-such-agent'")) as caught:
        run_harness(spec, make_task(), base_dir=str(tmp_path))
    assert not caught.value.retryable


def test_command_bad_timeout_is_a_config_error() -> None:
    with pytest.raises(HarnessError, match="bad duration") as caught:
        run_harness(python(ECHO, timeout="soon"), make_task())
    assert not caught.value.retryable


# -- openai --------------------------------------------------------------------------------

KEY_ENV = "HARNESS_TEST_OPENAI_KEY"


@pytest.fixture
def llm() -> Any:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries without waiting (the backoff itself is connectors/http.py's, tested there)."""
    monkeypatch.setattr(harness, "OPENAI_BACKOFF_MAX", 0.0)


def openai(url: str, **fields: Any) -> OpenAIHarness:
    return OpenAIHarness(base_url=url, model="llama3", **fields)


def test_openai_sends_the_task_and_numbered_context(
    llm: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test-1")
    spec = openai(llm.url + "/", api_key=SecretRef(env=KEY_ENV), temperature=0.5, max_tokens=300)
    task = make_task(review_comments=["Mention the finance exception."])

    run_harness(spec, task)

    [request] = llm.requests
    assert request.method == "POST"
    assert request.path == "/v1/chat/completions"
    assert request.bearer == "sk-test-1"
    body = request.json
    assert body["model"] == "llama3"
    assert body["temperature"] == 0.5
    assert body["max_tokens"] == 300
    system, user = body["messages"]
    assert system["role"] == "system"
    assert "[1]" in system["content"] and "markdown document" in system["content"]
    assert "say so" in system["content"]
    assert user["role"] == "user"
    text = user["content"]
    assert "Task: Answer customers' refund questions." in text
    assert "Query: How long do refunds take?" in text
    assert '"question": "How long do refunds take?"' in text
    assert "A reviewer asked for changes" in text and "Mention the finance exception." in text
    assert (
        "[1] Refund policy (wiki, v3) <https://wiki.example/refunds>\n"
        "Refunds are issued within 14 days." in text
    )
    assert "[2] Enterprise terms (drive, v7)\nEnterprise customers" in text
    assert text.index("[1] Refund policy") < text.index("[2] Enterprise terms")


def test_openai_reply_becomes_the_result(llm: FakeOpenAI) -> None:
    llm.answer = lambda body: "Refunds take 14 days [1]. Asked: " + body["model"]

    result = run_harness(openai(llm.url), make_task())

    assert result.content == "Refunds take 14 days [1]. Asked: llama3"
    assert result.title == "How long do refunds take?"
    assert result.metadata["harness"] == "openai"
    assert result.metadata["model"] == "llama3"
    assert result.metadata["finish_reason"] == "stop"
    assert result.metadata["usage"]["total_tokens"] == 120
    assert result.metadata["seconds"] >= 0
    assert "authorization" not in llm.requests[0].headers  # no api_key configured


def test_openai_custom_system_prompt_and_no_context(llm: FakeOpenAI) -> None:
    run_harness(openai(llm.url, system_prompt="Be terse."), make_task(items=[], input={}))
    system, user = llm.requests[0].json["messages"]
    assert system["content"] == "Be terse."
    assert "Context: none." in user["content"]
    assert "Input:" not in user["content"]


def test_openai_401_is_not_retryable_and_names_the_key(
    llm: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    llm.api_key = "sk-right"
    with pytest.raises(HarnessError) as caught:
        run_harness(openai(llm.url, api_key=SecretRef(env=KEY_ENV)), make_task())
    message = str(caught.value)
    assert "refused the API key (401)" in message
    assert "Incorrect API key provided." in message
    assert f"environment variable {KEY_ENV}" in message
    assert "sk-wrong" not in message
    assert not caught.value.retryable
    assert len(llm.requests) == 1


def test_openai_missing_key_env_is_a_clear_error(
    llm: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(HarnessError, match=f"api_key.*{KEY_ENV} is not set") as caught:
        run_harness(openai(llm.url, api_key=SecretRef(env=KEY_ENV)), make_task())
    assert not caught.value.retryable
    assert llm.requests == []


def test_openai_other_4xx_quotes_the_server(llm: FakeOpenAI) -> None:
    llm.fail(400, "max_tokens is too large for this model")
    with pytest.raises(HarnessError, match="400: 'max_tokens is too large") as caught:
        run_harness(openai(llm.url), make_task())
    assert not caught.value.retryable
    assert len(llm.requests) == 1


def test_openai_persistent_500_is_retryable(llm: FakeOpenAI) -> None:
    llm.fail(500, "overloaded", times=10)
    with pytest.raises(HarnessError, match="failed 3 times") as caught:
        run_harness(openai(llm.url), make_task())
    assert caught.value.retryable
    assert len(llm.requests) == harness.OPENAI_ATTEMPTS == 3


def test_openai_429_then_200_succeeds(llm: FakeOpenAI) -> None:
    llm.fail(429, "rate limited", headers={"Retry-After": "0"})
    result = run_harness(openai(llm.url), make_task())
    assert result.content == "A draft answer from the fake model [1]."
    assert len(llm.requests) == 2


def test_openai_long_retry_after_is_retryable_not_a_stall(llm: FakeOpenAI) -> None:
    llm.fail(429, "rate limited", headers={"Retry-After": "3600"})
    with pytest.raises(HarnessError, match="rate limited for 3600s") as caught:
        run_harness(openai(llm.url), make_task())
    assert caught.value.retryable


@pytest.mark.parametrize(
    "body",
    [
        {"choices": []},
        {"object": "chat.completion"},
        completion(None),
        completion("   "),
        {"choices": [{"message": {"role": "assistant"}, "finish_reason": "length"}]},
    ],
)
def test_openai_answer_without_content_is_an_error(llm: FakeOpenAI, body: Any) -> None:
    llm.reply(200, body)
    with pytest.raises(HarnessError, match="answered no") as caught:
        run_harness(openai(llm.url), make_task())
    assert not caught.value.retryable


def test_openai_answer_that_is_not_json_is_an_error(llm: FakeOpenAI) -> None:
    llm.reply(200, b"<html>proxy error</html>")
    with pytest.raises(HarnessError, match="did not answer JSON: '<html>proxy error") as caught:
        run_harness(openai(llm.url), make_task())
    assert not caught.value.retryable


def test_openai_connection_refused_is_retryable() -> None:
    with socket.socket() as s:  # a port that was free a moment ago and has no listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(HarnessError, match="ConnectError") as caught:
        run_harness(openai(f"http://127.0.0.1:{port}/v1"), make_task())
    assert caught.value.retryable


def test_openai_cancelled_before_the_call_sends_nothing(llm: FakeOpenAI) -> None:
    with pytest.raises(HarnessError, match="cancelled") as caught:
        run_harness(openai(llm.url), make_task(), cancelled=lambda: True)
    assert not caught.value.retryable
    assert llm.requests == []


def test_openai_cancelled_while_waiting_to_retry(llm: FakeOpenAI) -> None:
    llm.fail(503, "warming up", times=10)
    calls: list[int] = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 1  # not before the call; yes during the backoff after it

    with pytest.raises(HarnessError, match="cancelled"):
        run_harness(openai(llm.url), make_task(), cancelled=cancelled)
    assert len(llm.requests) == 1


def test_openai_bad_base_url_is_a_config_error() -> None:
    with pytest.raises(HarnessError, match="not an http") as caught:
        run_harness(openai("llm:8000/v1"), make_task())
    assert not caught.value.retryable


def test_fake_openai_answers_like_the_api(llm: FakeOpenAI) -> None:
    """The fake itself, as other tests (and a subprocess) will use it."""
    import httpx

    answer = httpx.post(
        llm.url + "/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"].startswith("A draft answer")
    assert httpx.post(llm.url + "/chat/completions", content=b"nope").status_code == 400
    assert httpx.get(llm.url + "/models").status_code == 404
    assert json.loads(json.dumps(llm.requests[0].json))["model"] == "m"
