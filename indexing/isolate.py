"""Parsing under a time and memory bound: a long-lived child process, killed and replaced
when a document makes it run too long or exhausts its memory.

Contract. ``Parser.parse(data, filename=…, mime_type=…)`` returns what ``indexing.parse.parse``
returns (a ``ParsedDocument`` or a ``ParseFailure``) and never raises for a bad document:

* ``IsolatedParser`` sends each document to a child over a pipe. The child has an address
  space limit (``RLIMIT_AS``: its warm size + ``memory_bytes``); a parse that needs more is
  ``too_large``. A parse that takes longer than ``timeout_seconds`` is ``timeout``: the
  child is killed (SIGKILL). A child that dies (killed by the kernel's OOM killer, a crash
  in C code) makes the document ``too_large`` (SIGKILL) or ``corrupt`` (anything else). The
  next document gets a fresh child. One child serves many documents (it is recycled after
  ``max_documents`` to shed a grown heap), so unstructured is imported once, not per file.
* Children come from a ``forkserver`` (never ``fork``: the parent runs threads and has torch
  loaded), which imports ``indexing.parse_child`` once per parent process: a new child is
  a fork of a warm, single-threaded server and starts in ~10 ms.
* ``InProcessParser`` calls parse directly: no time or memory bound (tests, fake pipelines,
  ``parse_isolation=false``). Both run the same container, text-size and depth checks.
* ``ParserPool`` lends parsers to concurrent syncs (one child per concurrent sync at most)
  and closes them with the runtime.

One ``IsolatedParser`` serves one thread at a time (a lock).

Imports: stdlib, indexing.parse (the child imports indexing.parse_child).
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Protocol

from indexing.parse import DEFAULT_LIMITS, ParsedDocument, ParseFailure, ParseLimits, parse

GiB = 1 << 30
DEFAULT_TARGET = "indexing.parse:parse"


class Parser(Protocol):
    def parse(
        self, data: bytes, *, filename: str, mime_type: str | None
    ) -> ParsedDocument | ParseFailure: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ParserConfig:
    max_bytes: int = 50 * 1024 * 1024
    limits: ParseLimits = field(default_factory=lambda: DEFAULT_LIMITS)
    isolate: bool = True
    timeout_seconds: float = 120.0
    memory_bytes: int = 2 * GiB
    max_documents: int = 1_000  # a child is replaced after this many documents
    target: str = DEFAULT_TARGET  # "module:function" with parse()'s signature (tests)


class InProcessParser:
    def __init__(self, config: ParserConfig) -> None:
        self.config = config
        if config.target == DEFAULT_TARGET:
            self._parse = parse
        else:
            from indexing.parse_child import load_target

            self._parse = load_target(config.target)

    def parse(
        self, data: bytes, *, filename: str, mime_type: str | None
    ) -> ParsedDocument | ParseFailure:
        c = self.config
        return self._parse(
            data, filename=filename, mime_type=mime_type, max_bytes=c.max_bytes, limits=c.limits
        )

    def close(self) -> None:
        pass


_CONTEXT_LOCK = threading.Lock()
_CONTEXT: BaseContext | None = None


def _context() -> BaseContext:
    global _CONTEXT
    with _CONTEXT_LOCK:
        if _CONTEXT is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["indexing.parse_child"])
            _CONTEXT = ctx
        return _CONTEXT


@dataclass
class _Child:
    process: BaseProcess
    conn: Connection
    documents: int = 0


class IsolatedParser:
    def __init__(self, config: ParserConfig) -> None:
        self.config = config
        self._child: _Child | None = None
        self._lock = threading.Lock()
        self.children_started = 0  # for tests and benchmarks

    def parse(
        self, data: bytes, *, filename: str, mime_type: str | None
    ) -> ParsedDocument | ParseFailure:
        c = self.config
        if len(data) > c.max_bytes:  # not worth a round trip
            return ParseFailure("too_large", f"{len(data)} bytes > max_bytes={c.max_bytes}")
        with self._lock:
            request = (data, filename, mime_type, c.max_bytes, c.limits)
            child = self._send(request)
            if not child.conn.poll(c.timeout_seconds):
                self._stop(kill=True)
                return ParseFailure(
                    "timeout",
                    f"parsing took longer than parse_timeout_seconds={c.timeout_seconds:g}; "
                    "the parser was stopped",
                )
            try:
                result, alive = child.conn.recv()
            except (EOFError, OSError):
                return self._died()
            child.documents += 1
            if not alive or child.documents >= c.max_documents:
                self._stop(kill=not alive)
            assert isinstance(result, ParsedDocument | ParseFailure)
            return result

    def _send(self, request: object) -> _Child:
        for attempt in (1, 2):
            child = self._child or self._start()
            try:
                child.conn.send(request)
                return child
            except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
                self._stop(kill=True)  # it died between two documents: start another
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _start(self) -> _Child:
        from indexing.parse_child import serve

        ctx = _context()
        parent, child_end = ctx.Pipe(duplex=True)
        process = ctx.Process(  # type: ignore[attr-defined]
            target=serve,
            args=(child_end, self.config.target, self.config.memory_bytes),
            name="context-server-parse",
            daemon=True,
        )
        process.start()
        child_end.close()
        self._child = _Child(process, parent)
        self.children_started += 1
        return self._child

    def _died(self) -> ParseFailure:
        assert self._child is not None
        process = self._child.process
        process.join(5)
        code = process.exitcode
        self._stop(kill=True)
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            if -code == signal.SIGKILL:
                return ParseFailure(
                    "too_large", f"the parser process was killed ({name}; out of memory?)"
                )
            return ParseFailure("corrupt", f"the parser process crashed ({name})")
        return ParseFailure("corrupt", f"the parser process exited (status {code})")

    def _stop(self, *, kill: bool) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        if not kill:
            try:
                child.conn.send(None)
            except OSError:
                kill = True
            else:
                child.process.join(2)
        if child.process.is_alive():
            child.process.kill()
        child.process.join(5)
        child.conn.close()

    def close(self) -> None:
        with self._lock:
            self._stop(kill=False)


def make_parser(config: ParserConfig) -> Parser:
    return IsolatedParser(config) if config.isolate else InProcessParser(config)


class ParserPool:
    """Parsers lent to syncs: one sync at a time per parser, children kept warm between."""

    def __init__(self, config: ParserConfig) -> None:
        self.config = config
        self._idle: list[Parser] = []
        self._lock = threading.Lock()

    @contextmanager
    def lease(self) -> Iterator[Parser]:
        with self._lock:
            parser = self._idle.pop() if self._idle else make_parser(self.config)
        try:
            yield parser
        finally:
            with self._lock:
                self._idle.append(parser)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for parser in idle:
            parser.close()
