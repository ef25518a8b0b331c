"""Source schedules: when each source syncs next, and the loop that syncs them.

A source YAML may say ``schedule: "every 15m"`` (s, m, h, d, w) or give a five-field cron
expression (``"*/15 * * * *"``, UTC). ``every`` counts from the start of the last sync
run (a source that never synced is due at once); cron counts from the last run, or from
when the source was added.

``Scheduler.run_due`` syncs every due source once; ``Scheduler.loop`` repeats that until
stopped, sleeping until the next source is due. `context-server worker` runs the loop in
its own process; `serve` runs it in a background thread (the server owns the index).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import croniter

from context_server.durations import parse_duration

log = logging.getLogger(__name__)

#: The loop re-reads the sources at least this often (new sources, changed schedules).
MAX_SLEEP = timedelta(seconds=30)


def check_schedule(text: str) -> str:
    """``text`` if it is ``every <duration>`` or a valid cron expression, else ValueError."""
    text = text.strip()
    if text.startswith("every "):
        parse_duration(text.removeprefix("every "))
        return text
    if len(text.split()) == 5 and croniter.is_valid(text):
        return text
    raise ValueError(
        f"bad schedule {text!r}: write 'every 15m' (s, m, h, d, w) or a five-field cron "
        "expression such as '*/15 * * * *' (UTC)"
    )


def next_run(schedule: str, last_run: datetime | None, created: datetime) -> datetime:
    """When a source with ``schedule`` is next due."""
    if schedule.startswith("every "):
        if last_run is None:
            return created
        return last_run + parse_duration(schedule.removeprefix("every "))
    base = last_run or created
    due: datetime = croniter(schedule, base.astimezone(UTC)).get_next(datetime)
    return due


@dataclass(frozen=True)
class Due:
    source: str
    at: datetime


class Scheduler:
    """Syncs scheduled sources when due. ``due`` lists them; ``sync`` runs one (errors are
    recorded by the sync run itself and logged here, never stop the loop)."""

    def __init__(
        self,
        due: Callable[[datetime], tuple[list[Due], datetime | None]],
        sync: Callable[[str], object],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._due = due
        self._sync = sync
        self._clock = clock

    def run_due(self) -> list[tuple[str, str | None]]:
        """Sync every source due now; ``(source, error or None)`` for each."""
        due, _ = self._due(self._clock())
        out: list[tuple[str, str | None]] = []
        for item in due:
            try:
                self._sync(item.source)
                out.append((item.source, None))
            except Exception as exc:  # recorded on the run; the loop goes on
                log.warning("scheduled sync of %s failed: %s", item.source, exc)
                out.append((item.source, f"{type(exc).__name__}: {exc}"))
        return out

    def loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.run_due()
            _, upcoming = self._due(self._clock())
            wait = MAX_SLEEP
            if upcoming is not None:
                wait = min(MAX_SLEEP, max(timedelta(seconds=1), upcoming - self._clock()))
            stop.wait(wait.total_seconds())
