"""Harnesses: how an agent run turns its task and cited context into an artifact.

An agent file names one under ``harness:``::

    harness: {kind: extractive}                 # built in, no model: deterministic draft
    harness: {kind: command, command: [python, my_agent.py], timeout: 5m}
    harness: {kind: openai, base_url: http://llm:8000/v1, model: llama3,
              api_key: {env: OPENAI_API_KEY}}

Every harness gets a ``HarnessTask`` (what to do, the input, the trigger and the context
bundle with its numbered citations) and returns a ``HarnessResult`` (the artifact's
markdown). A harness never ships anything: the runner turns the result into a review item.

Errors are ``HarnessError``; ``retryable`` says whether the runner should try the run again
(a timeout, a 5xx, a refused connection) or fail it at once (a bad answer, a bad config).

A command harness never outlives its attempt: it runs in its own process group, which is
killed on every way out of ``run_command`` (success included: a background process it left
behind dies too); on Linux it also gets ``PR_SET_PDEATHSIG`` = SIGKILL, so a worker killed
with ``kill -9`` takes the command with it. What the command started itself is in the same
group but not covered by the death signal: the worker records the group (``on_start``) and
whoever takes the run over on the same machine kills it first (``kill_group``). A process
that leaves the group (``setsid``) escapes all of this.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Annotated, Any, Literal

import httpx
import psutil
from pydantic import BaseModel, ConfigDict, Field

from connectors.errors import ConfigError, SourceError
from connectors.http import RETRY_STATUSES, HttpClient
from connectors.secrets import SecretRef
from context_server.durations import parse_duration


class HarnessError(Exception):
    """A harness could not produce an artifact; ``retryable`` when trying again may help."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExtractiveHarness(_Spec):
    """No model: the draft is the top cited passages, each with its citation number."""

    kind: Literal["extractive"] = "extractive"
    max_passages: int = Field(default=3, ge=1, le=20)
    sentences_per_passage: int = Field(default=2, ge=1, le=10)


class CommandHarness(_Spec):
    """A subprocess: the task as JSON on stdin, ``{"content": "..."}`` as JSON on stdout."""

    kind: Literal["command"] = "command"
    command: tuple[str, ...] = Field(min_length=1, description="argv; no shell.")
    timeout: str = Field(default="5m", description="Killed after this long, e.g. 30s, 5m.")
    cwd: str | None = Field(
        default=None, description="Working directory (default: the agent file's)."
    )
    env: dict[str, SecretRef] = Field(
        default_factory=dict, description="Extra environment, each value a secret reference."
    )


class OpenAIHarness(_Spec):
    """Any OpenAI-compatible chat-completions endpoint."""

    kind: Literal["openai"] = "openai"
    base_url: str = Field(description="e.g. https://api.openai.com/v1 or http://localhost:8000/v1")
    model: str
    api_key: SecretRef | None = Field(default=None, description="{env: NAME} or {file: PATH}.")
    temperature: float = Field(default=0.2, ge=0, le=2)
    max_tokens: int = Field(default=1024, ge=1, le=32_000)
    timeout: str = Field(default="2m")
    system_prompt: str | None = Field(default=None, description="Replaces the default one.")


HarnessSpec = Annotated[
    ExtractiveHarness | CommandHarness | OpenAIHarness, Field(discriminator="kind")
]


@dataclass(frozen=True)
class HarnessTask:
    """What a harness is asked to do. ``context`` is the bundle as ``/v1/context`` returns
    it: ``bundle_id`` and ``items``, each with ``text`` and ``citation`` (title, source,
    url, version, document_id, chunk_id); citation numbers are ``items`` order from 1."""

    agent: str
    description: str
    query: str
    input: dict[str, Any]
    trigger: dict[str, Any]
    output_kind: str
    context: dict[str, Any]
    review_comments: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "description": self.description,
            "query": self.query,
            "input": self.input,
            "trigger": self.trigger,
            "output_kind": self.output_kind,
            "context": self.context,
            "review_comments": self.review_comments,
        }


@dataclass(frozen=True)
class HarnessResult:
    content: str  # the artifact, markdown
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # model, usage, exit code...

    def to_json(self) -> dict[str, Any]:
        return {"content": self.content, "title": self.title, "metadata": self.metadata}


#: Called now and then during a long run; ``True`` means stop (the run was cancelled).
Cancelled = Callable[[], bool]
#: Told a command harness's process once it runs (``ProcessRecord.to_json()``); raising
#: ``HarnessError`` there kills it at once (the attempt lost its run meanwhile).
OnStart = Callable[[dict[str, Any]], None]


def run_harness(
    spec: ExtractiveHarness | CommandHarness | OpenAIHarness,
    task: HarnessTask,
    *,
    cancelled: Cancelled = lambda: False,
    base_dir: str | None = None,
    on_start: OnStart | None = None,
) -> HarnessResult:
    """Produce the artifact for ``task`` with ``spec``; ``HarnessError`` when it cannot."""
    if isinstance(spec, ExtractiveHarness):
        return extractive(spec, task)
    if isinstance(spec, CommandHarness):
        return run_command(spec, task, cancelled=cancelled, base_dir=base_dir, on_start=on_start)
    return run_openai(spec, task, cancelled=cancelled)


# -- extractive ----------------------------------------------------------------------------

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def extractive(spec: ExtractiveHarness, task: HarnessTask) -> HarnessResult:
    """A deterministic draft: the first sentences of the top passages, each cited [n], and
    the numbered sources. Same task, same bytes."""
    items = task.context.get("items") or []
    lines = [f"**{task.query.strip()}**", ""]
    if not items:
        lines.append("No context the agent may use matches this; nothing to draft from.")
    else:
        lines.append("From the cited sources:")
        lines.append("")
        for n, item in enumerate(items[: spec.max_passages], 1):
            text = " ".join(str(item.get("text", "")).split())
            sentences = [s for s in _SENTENCE.split(text) if s]
            lines.append(f"- {' '.join(sentences[: spec.sentences_per_passage])} [{n}]")
        lines += ["", "Sources:", ""]
        for n, item in enumerate(items[: spec.max_passages], 1):
            lines.append(f"- {_source_line(n, item)}")
    return HarnessResult(
        content="\n".join(lines) + "\n",
        title=task.query.strip()[:200] or None,
        metadata={"harness": "extractive", "passages": min(len(items), spec.max_passages)},
    )


# -- command -------------------------------------------------------------------------------

#: A command's stdout beyond this is refused (and the command killed).
MAX_STDOUT_BYTES = 10 * 1024 * 1024
#: How much of a failed command's stderr the error quotes (its end, where the error is).
STDERR_TAIL_CHARS = 2000
#: ``EX_TEMPFAIL`` from sysexits.h: the command says "try me again later".
EXIT_TEMPFAIL = 75
_POLL_SECONDS = 0.5
_EXIT_GRACE_SECONDS = 2.0
_QUOTE_CHARS = 500


def run_command(
    spec: CommandHarness,
    task: HarnessTask,
    *,
    cancelled: Cancelled,
    base_dir: str | None,
    on_start: OnStart | None = None,
) -> HarnessResult:
    """Run ``spec.command``: task JSON on stdin, ``{"content": ..., "title"?: ...}`` JSON on
    stdout; killed at ``spec.timeout`` or when ``cancelled()``, and its process group
    killed whichever way this returns."""
    timeout = _timeout(spec.timeout)
    cwd = _command_cwd(spec.cwd, base_dir)
    env = dict(os.environ)
    for name, ref in spec.env.items():
        try:
            env[name] = ref.resolve().get_secret_value()
        except ConfigError as exc:
            raise HarnessError(f"the command's env {name}: {exc}") from exc
    program = spec.command[0]
    stdin_data = json.dumps(task.to_json(), default=str).encode("utf-8")
    if cancelled():
        raise HarnessError("cancelled")
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            spec.command,
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, so a kill reaches its children
            preexec_fn=_die_with_parent(),
        )
    except OSError as exc:
        raise HarnessError(f"cannot start {program!r} (in {cwd or os.getcwd()}): {exc}") from exc
    try:
        if on_start is not None:
            on_start(ProcessRecord.of(proc.pid).to_json())
    except BaseException:
        _kill_group(proc)
        raise
    stdin = _Writer(proc.stdin, stdin_data)
    stdout = _Reader(proc.stdout, MAX_STDOUT_BYTES)
    stderr = _Reader(proc.stderr, 64 * 1024, tail=True)
    try:
        deadline = started + timeout.total_seconds()
        exited_at: float | None = None
        while proc.poll() is None or stdout.is_alive() or stderr.is_alive():
            if proc.returncode is not None:
                # It exited, but something it started still holds its stdout or stderr
                # open: give that a moment, then it is killed with the group below.
                exited_at = exited_at or time.monotonic()
                if time.monotonic() - exited_at > _EXIT_GRACE_SECONDS:
                    break
            if cancelled():
                raise HarnessError("cancelled")
            if time.monotonic() >= deadline:
                raise HarnessError(
                    f"{program!r} did not finish within {spec.timeout}; killed", retryable=True
                )
            if stdout.overflow:
                raise HarnessError(
                    f"{program!r} wrote more than {MAX_STDOUT_BYTES} bytes to stdout; killed"
                )
            _wait_a_little(proc, stdout, stderr)
    finally:
        # Always: also when it exited, whatever it left running in its group goes too.
        _kill_group(proc)
        for thread in (stdin, stdout, stderr):
            thread.join(timeout=5)
    seconds = round(time.monotonic() - started, 3)
    code = proc.returncode
    if code != 0:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        tail = stderr.text()[-STDERR_TAIL_CHARS:].strip()
        raise HarnessError(
            f"{program!r} {how}" + (f"; stderr: {tail}" if tail else " (no stderr)"),
            retryable=code == EXIT_TEMPFAIL,
        )
    payload = _command_output(program, bytes(stdout.data))
    return HarnessResult(
        content=payload["content"],
        title=payload.get("title") or _title(task),
        metadata={
            **payload.get("metadata", {}),
            "harness": "command",
            "exit_code": code,
            "seconds": seconds,
        },
    )


def _command_cwd(cwd: str | None, base_dir: str | None) -> str | None:
    if cwd is None:
        return base_dir
    path = Path(cwd).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if not path.is_dir():
        raise HarnessError(f"the command's cwd {str(path)!r} is not a directory")
    return str(path)


def _command_output(program: str, raw: bytes) -> dict[str, Any]:
    """The command's stdout as a checked ``{"content", "title"?, "metadata"?}`` object."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HarnessError(f"{program!r} wrote stdout that is not UTF-8: {exc}") from exc
    expected = 'one JSON object such as {"content": "..."}'
    if not text.strip():
        raise HarnessError(f"{program!r} wrote nothing to stdout; expected {expected}")
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise HarnessError(
            f"{program!r} wrote stdout that is not JSON ({exc}); expected {expected}, "
            f"got: {_quote(text)}"
        ) from exc
    if not isinstance(payload, dict):
        raise HarnessError(f"{program!r} wrote {_quote(text)}; expected {expected}")
    content = payload.get("content")
    if not isinstance(content, str) or not content.strip():
        raise HarnessError(
            f'{program!r} wrote no "content" (a non-empty string) in its stdout: {_quote(text)}'
        )
    if payload.get("title") is not None and not isinstance(payload["title"], str):
        raise HarnessError(f'{program!r} wrote a "title" that is not a string: {_quote(text)}')
    if payload.get("metadata") is not None and not isinstance(payload["metadata"], dict):
        raise HarnessError(f'{program!r} wrote a "metadata" that is not an object: {_quote(text)}')
    return {k: v for k, v in payload.items() if v is not None}


class _Writer(threading.Thread):
    """Writes the task to the command's stdin and closes it (the command may not read it)."""

    def __init__(self, pipe: IO[bytes] | None, data: bytes) -> None:
        super().__init__(daemon=True, name="harness-stdin")
        self._pipe = pipe
        self._data = data
        self.start()

    def run(self) -> None:
        assert self._pipe is not None
        try:
            self._pipe.write(self._data)
        except (BrokenPipeError, OSError):
            pass  # it exited or closed stdin without reading: its exit code will say
        finally:
            with contextlib.suppress(OSError):
                self._pipe.close()


class _Reader(threading.Thread):
    """Drains one of the command's pipes so the command never blocks on a full pipe. Keeps
    the first ``limit`` bytes (then sets ``overflow`` and keeps draining), or with ``tail``
    the last ``limit`` bytes."""

    def __init__(self, pipe: IO[bytes] | None, limit: int, *, tail: bool = False) -> None:
        super().__init__(daemon=True, name="harness-reader")
        self._pipe = pipe
        self._limit = limit
        self._tail = tail
        self.data = bytearray()
        self.overflow = False
        self.start()

    def run(self) -> None:
        assert self._pipe is not None
        with contextlib.suppress(OSError, ValueError), self._pipe:
            while chunk := os.read(self._pipe.fileno(), 65536):
                if self._tail:
                    self.data += chunk
                    del self.data[: -self._limit]
                elif len(self.data) + len(chunk) > self._limit:
                    self.overflow = True
                else:
                    self.data += chunk

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def _wait_a_little(proc: subprocess.Popen[bytes], *threads: threading.Thread) -> None:
    """Block for up to ``_POLL_SECONDS`` on whatever is still running."""
    if proc.returncode is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=_POLL_SECONDS)
        return
    for thread in threads:
        if thread.is_alive():
            thread.join(timeout=_POLL_SECONDS)
            return


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the command and everything it started (its session's process group). The
    group's number cannot be reused while any member lives, so this reaches only ours."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


_PR_SET_PDEATHSIG = 1


def _prctl() -> Any:
    """libc's ``prctl``, resolved here in the parent (never after fork), or ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _prctl()


def _die_with_parent() -> Callable[[], None] | None:
    """For ``preexec_fn``: in the child, before exec, ask for SIGKILL when the parent dies
    (``PR_SET_PDEATHSIG``), and die now if it already did (the race between fork and the
    prctl). Linux only; elsewhere ``None`` (the group kill on takeover still applies).

    "The parent" is the thread that forked: the worker's thread, which lives as long as
    the worker does."""
    if _PRCTL is None:
        return None
    prctl, parent = _PRCTL, os.getpid()

    def setup() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return setup


# -- processes, across attempts ------------------------------------------------------------


def machine_id() -> str:
    """Which machine and PID namespace a pid means something in: the host name, the boot
    (a pid from before a reboot means nothing) and the PID namespace (a container)."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return ":".join(parts)


def started_at(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or ``None`` if there is none:
    with the pid, it names one process, not whichever got the number next."""
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied, ValueError):
        return None


@dataclass(frozen=True)
class ProcessRecord:
    """A process as another process on the same machine can find it again."""

    machine: str
    pid: int
    started: float | None

    @classmethod
    def of(cls, pid: int) -> ProcessRecord:
        return cls(machine_id(), pid, started_at(pid))

    @classmethod
    def from_json(cls, data: Any) -> ProcessRecord | None:
        if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
            return None
        started = data.get("started")
        return cls(
            str(data.get("machine", "")),
            int(data["pid"]),
            float(started) if isinstance(started, int | float) else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {"machine": self.machine, "pid": self.pid, "started": self.started}

    @property
    def here(self) -> bool:
        return self.machine == machine_id()

    def alive(self) -> bool:
        """Whether this very process still runs (only answerable ``here``)."""
        now = started_at(self.pid)
        if now is None:
            return False
        return self.started is None or abs(now - self.started) < 0.05


def kill_group(record: ProcessRecord, *, wait: float = 5.0) -> bool:
    """SIGKILL the process group that ``record``'s process leads (a command harness's),
    and wait until no process of it is left; whether one was killed. Refuses (``False``)
    on another machine, and when the leader's number now belongs to another process (the
    group is gone: a live group keeps its number from being reused)."""
    if not record.here:
        return False
    leader_now = started_at(record.pid)
    reused = (
        leader_now is not None
        and record.started is not None
        and abs(leader_now - record.started) >= 0.05
    )
    if reused:
        return False  # the number now names an unrelated process
    try:
        os.killpg(record.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    end = time.monotonic() + wait
    while time.monotonic() < end:
        try:
            os.killpg(record.pid, 0)
        except (ProcessLookupError, PermissionError):
            break
        if not _group_has_living(record.pid):
            break  # only zombies left, for their parents to reap
        time.sleep(0.02)
    return True


def _group_has_living(pgid: int) -> bool:
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
    return False


# -- openai --------------------------------------------------------------------------------

#: Attempts per call on a refused connection, a timeout, a 5xx or a 429 (then the runner's
#: own retry decides), the cap of the backoff between them, and the longest ``Retry-After``
#: honoured (longer is a retryable error rather than a stalled run).
OPENAI_ATTEMPTS = 3
OPENAI_BACKOFF_MAX = 20.0
OPENAI_MAX_WAIT = 120.0

_OUTPUT_KINDS = {
    "markdown": "a markdown document",
    "comment": "a comment to be posted on the document that triggered the run",
    "file": "a markdown file",
}

DEFAULT_SYSTEM_PROMPT = """\
You draft {output} for people at an organization. A person reviews and edits your draft \
before anything is published.

Use only the numbered context passages in the user's message; do not add facts, names, \
numbers or links that they do not contain. Cite every claim with the number of the passage \
it comes from in square brackets, e.g. [1] or [2][3]. If the context is not enough to \
answer, say so plainly and say what is missing rather than guessing. Write markdown; be \
concise."""

# Statuses handed back to us rather than retried or raised by HttpClient: every 4xx/5xx
# except the rate limit (429) and the transient 5xx it retries.
_ANSWERED = frozenset(range(400, 600)) - RETRY_STATUSES - {429}


def run_openai(spec: OpenAIHarness, task: HarnessTask, *, cancelled: Cancelled) -> HarnessResult:
    """One chat-completions call with the numbered context; the answer is the artifact."""
    timeout = _timeout(spec.timeout)
    base_url = spec.base_url.rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise HarnessError(f"the openai harness's base_url {spec.base_url!r} is not an http(s) URL")
    headers = {"User-Agent": "context-server-harness/0.1"}
    if spec.api_key is not None:
        try:
            key = spec.api_key.resolve().get_secret_value()
        except ConfigError as exc:
            raise HarnessError(f"the openai harness's api_key: {exc}") from exc
        headers["Authorization"] = f"Bearer {key}"
    body = {
        "model": spec.model,
        "messages": openai_messages(spec, task),
        "temperature": spec.temperature,
        "max_tokens": spec.max_tokens,
    }
    if cancelled():
        raise HarnessError("cancelled")
    url = f"{base_url}/chat/completions"
    started = time.monotonic()
    client = HttpClient(
        base_url,
        headers=headers,
        timeout=timeout.total_seconds(),
        max_attempts=OPENAI_ATTEMPTS,
        backoff_max=OPENAI_BACKOFF_MAX,
        max_wait=OPENAI_MAX_WAIT,
        sleep=_sleep_unless(cancelled),
    )
    with client:
        try:
            response = client.request("POST", "/chat/completions", json=body, allow=_ANSWERED)
        except SourceError as exc:  # refused, timed out, 5xx or 429 every time
            raise HarnessError(str(exc), retryable=True) from exc
    seconds = round(time.monotonic() - started, 3)
    status = response.status_code
    if status in (401, 403):
        key_hint = (
            f"check the api_key ({spec.api_key.describe()})"
            if spec.api_key is not None
            else "no api_key is configured; set api_key: {env: NAME}"
        )
        raise HarnessError(
            f"{url} refused the API key ({status}): {_error_message(response)}; {key_hint}"
        )
    if status >= 400:
        raise HarnessError(f"{url} answered {status}: {_error_message(response)}")
    try:
        data = response.json()
    except ValueError as exc:
        raise HarnessError(f"{url} did not answer JSON: {_quote(response.text)}") from exc
    choices = data.get("choices") if isinstance(data, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(choice, dict):
        raise HarnessError(f"{url} answered no choices: {_quote(response.text)}")
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    finish_reason = choice.get("finish_reason")
    if not isinstance(content, str) or not content.strip():
        raise HarnessError(
            f"{url} answered no content (finish_reason {finish_reason!r}): {_quote(response.text)}"
        )
    metadata: dict[str, Any] = {
        "harness": "openai",
        "model": data.get("model") or spec.model,
        "finish_reason": finish_reason,
        "seconds": seconds,
    }
    if isinstance(data.get("usage"), dict):
        metadata["usage"] = data["usage"]
    return HarnessResult(content=content, title=_title(task), metadata=metadata)


def openai_messages(spec: OpenAIHarness, task: HarnessTask) -> list[dict[str, str]]:
    """The system and user messages: the task, the query, the input, any review comments
    and the context passages numbered as their citations are."""
    output = _OUTPUT_KINDS.get(task.output_kind, f"a {task.output_kind} output")
    system = spec.system_prompt or DEFAULT_SYSTEM_PROMPT.format(output=output)
    parts = []
    if task.description.strip():
        parts.append(f"Task: {task.description.strip()}")
    parts.append(f"Query: {task.query.strip()}")
    if task.input:
        parts.append("Input:\n" + json.dumps(task.input, indent=2, ensure_ascii=False, default=str))
    if task.review_comments:
        comments = "\n".join(f"- {c.strip()}" for c in task.review_comments)
        parts.append(
            "A reviewer asked for changes to the previous draft; address them:\n" + comments
        )
    items = task.context.get("items") or []
    if items:
        passages = []
        for n, item in enumerate(items, 1):
            passages.append(f"{_source_line(n, item)}\n{str(item.get('text', '')).strip()}")
        parts.append("Context:\n\n" + "\n\n".join(passages))
    else:
        parts.append("Context: none. No passage the agent may use matches this query.")
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]


def _error_message(response: httpx.Response) -> str:
    """The server's own error message (OpenAI's ``{"error": {"message"}}``) or its text."""
    with contextlib.suppress(ValueError):
        data = response.json()
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return _quote(error["message"])
        if isinstance(error, str):
            return _quote(error)
    return _quote(response.text) or response.reason_phrase


def _sleep_unless(cancelled: Cancelled) -> Callable[[float], None]:
    """A ``sleep`` for retries that wakes to check ``cancelled`` and stops the run if so."""

    def sleep(seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if cancelled():
                raise HarnessError("cancelled")
            time.sleep(min(left, _POLL_SECONDS))
        if cancelled():
            raise HarnessError("cancelled")

    return sleep


# -- shared --------------------------------------------------------------------------------


def _timeout(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise HarnessError(f"the harness timeout: {exc}") from exc


def _source_line(n: int, item: dict[str, Any]) -> str:
    """``[n] Title (source, vVERSION) <url>``: how a passage is cited."""
    c = item.get("citation") or {}
    where = f" <{c['url']}>" if c.get("url") else ""
    return f"[{n}] {c.get('title', '?')} ({c.get('source', '?')}, v{c.get('version', '?')}){where}"


def _title(task: HarnessTask) -> str | None:
    return task.query.strip()[:200] or None


def _quote(text: str, limit: int = _QUOTE_CHARS) -> str:
    text = " ".join(text.split())
    return repr(text[:limit] + ("…" if len(text) > limit else ""))
