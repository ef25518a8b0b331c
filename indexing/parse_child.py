"""The parse child's side of indexing/isolate.py. Importing this module warms the parser
up (unstructured and its partitioners imported once): the forkserver imports it, so every
child forked from it starts in milliseconds, already warm.

Imports: stdlib, indexing.parse, indexing.offline.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import resource
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from indexing.offline import prepare_unstructured
from indexing.parse import ParsedDocument, ParseFailure

prepare_unstructured()
for _module in ("md", "html", "docx", "pptx", "xlsx", "email", "msg", "xml", "json", "csv"):
    # an optional format's dependency may be missing: parse() says so when it meets one
    with contextlib.suppress(Exception):
        importlib.import_module(f"unstructured.partition.{_module}")

ParseFn = Callable[..., ParsedDocument | ParseFailure]


def load_target(target: str) -> ParseFn:
    """``"module:function"``: the parse function (``indexing.parse:parse``; tests name one)."""
    module, _, name = target.partition(":")
    fn: ParseFn = getattr(importlib.import_module(module), name)
    return fn


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def serve(conn: Connection, target: str, memory_bytes: int) -> None:
    """Parse requests until told to stop (``None``) or the pipe closes. The address space
    may grow by ``memory_bytes`` past what it is now (warm): a parse that needs more gets
    a MemoryError (``too_large``), after which this child exits rather than go on with a
    fragmented heap. Replies ``(result, alive)``."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    limit = _address_space() + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    parse = load_target(target)
    while True:
        try:
            request: Any = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        data, filename, mime_type, max_bytes, limits = request
        alive = True
        result: ParsedDocument | ParseFailure
        try:
            result = parse(
                data, filename=filename, mime_type=mime_type, max_bytes=max_bytes, limits=limits
            )
        except MemoryError:
            result, alive = ParseFailure("too_large", _OUT_OF_MEMORY.format(memory_bytes)), False
        except BaseException as exc:  # parse() never raises; a test target may
            result = ParseFailure("corrupt", f"{type(exc).__name__}: {exc}"[:2000])
        del data, request
        if isinstance(result, ParseFailure) and result.reason == "too_large":
            alive = alive and "memory" not in result.detail
        try:
            conn.send((result, alive))
        except MemoryError:
            conn.send((ParseFailure("too_large", _OUT_OF_MEMORY.format(memory_bytes)), False))
        if not alive:
            return


_OUT_OF_MEMORY = "parsing it needed more than parse_memory_bytes={} bytes of memory"
