"""A deadline for one request, checked between the stages of its work.

A thread cannot be stopped from outside, so work that may be expensive (a context request:
embedding, search, packing, storing) calls ``check(stage)`` between its stages; past the
deadline it raises ``DeadlineExceeded`` (503) and stores nothing further. The deadline is a
context variable: ``within(seconds)`` sets it around one request (the API's handler); code
run without one (a worker, the CLI) is not limited.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from context_server.errors import ContextServerError

_deadline: ContextVar[tuple[float, float] | None] = ContextVar("deadline", default=None)


class DeadlineExceeded(ContextServerError):
    """The request took longer than its deadline and was stopped."""


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """Run the block under a deadline ``seconds`` from now (nested: the earlier one holds)."""
    now = time.monotonic()
    outer = _deadline.get()
    ends = now + seconds
    if outer is not None and outer[0] < ends:
        ends, seconds = outer
    token = _deadline.set((ends, seconds))
    try:
        yield
    finally:
        _deadline.reset(token)


def check(stage: str) -> None:
    """``DeadlineExceeded`` when the current deadline has passed (before ``stage``)."""
    current = _deadline.get()
    if current is not None and time.monotonic() > current[0]:
        raise DeadlineExceeded(
            f"the request passed its deadline of {current[1]:g} s "
            f"(CONTEXT_SERVER_CONTEXT_DEADLINE_SECONDS) and was stopped before {stage}; "
            "nothing was stored. Ask with a shorter query, a smaller budget, or later."
        )
