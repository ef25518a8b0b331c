"""The thin runner: a worker claims agent runs, assembles their context, runs the harness,
and turns the output into a review item. It never ships; the review desk does, after
approval.

One run, one attempt::

    claim (lease) → render the query → context (a stored, cited bundle) → harness
      → [still holding the lease?] run succeeded + review pending, in one transaction

A heartbeat thread renews the lease while the attempt works; it also notices a cancel
request and the agent's ``timeout``, and tells the harness to stop. A failed attempt goes
back to the queue with a backoff while attempts remain, unless retrying cannot help (a
refused permission, a bad template, a harness that says so).

Besides runs, each pass of a worker does the queue's housekeeping: it enqueues scheduled
agents whose slot came, expires overdue reviews, and ships approved reviews nobody shipped
(a crash between approval and shipping, or between shipping and recording it).

Crash debris. Each attempt records on its run (``attempt_process``) which worker process
runs it and, once started, its command harness's process group. A command harness dies
with its worker (harness.py: death signal, group kill on every way out); what it started
itself is killed by whoever comes next on the same machine: a worker taking a run over
kills the previous attempt's group before its own attempt starts, so two harnesses of one
run never overlap there. At start-up a worker also looks at running runs whose worker ran
on this machine and is gone (its pid is not there, or is another process now): it kills
their harness groups and expires their leases at once instead of waiting for the lease to
run out, and it removes stale ``.shipping-*.tmp`` files from the outboxes it knows.

Limits: a worker on another machine cannot be told dead or have its harness killed from
here; there, the lease expiry and that machine's death signal do the work (what the
harness started itself may run on until its own end). A worker paused between starting
its harness and recording it, whose run is meanwhile taken over, overlaps until it
resumes and finds its lease lost.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from croniter import croniter
from sqlalchemy import CursorResult, select, update

from connectors.errors import ConnectorError
from context_server.agents import Agent
from context_server.durations import parse_duration
from context_server.errors import ForbiddenError, NotFoundError, SpecError
from context_server.harness import (
    HarnessError,
    HarnessTask,
    ProcessRecord,
    kill_group,
    run_harness,
)
from context_server.keys import Caller
from context_server.review import ReviewDesk, new_review_id
from context_server.routing import ContextRouter
from context_server.runs import RunQueue, readable_target
from context_server.shipping import clean_shipping_debris
from context_server.store.models import (
    AgentCursor,
    AgentRun,
    Document,
    Review,
    ReviewEvent,
    ReviewRevision,
    Source,
    as_utc,
)
from context_server.workflow import (
    EventTrigger,
    FileShip,
    ScheduleTrigger,
    TemplateFailure,
    TemplateLimits,
    render,
)

log = logging.getLogger(__name__)

#: (agent, on_behalf_of, query, budget_tokens or None) -> the bundle as /v1/context returns it
ContextFn = Callable[[str, str, str, int | None], dict[str, Any]]

#: Errors that another attempt cannot fix.
PERMANENT = (ForbiddenError, NotFoundError, SpecError, TemplateFailure)

#: Ids of the workers alive in this process: ``serve`` runs several under one pid, so a
#: pid that is ours says nothing about which of them is alive.
_LIVE_WORKERS: set[str] = set()


def _now() -> datetime:
    return datetime.now(UTC)


def local_context(runtime: Any) -> ContextFn:
    """Context from this process's runtime, asked for as the agent itself."""
    router = ContextRouter(runtime)

    def fetch(agent: str, user: str, query: str, budget: int | None) -> dict[str, Any]:
        return router.route(Caller(kind="agent", subject=agent), agent, user, query, budget)

    return fetch


class _Heartbeat(threading.Thread):
    """Renews one run's lease until stopped; ``reason`` says why the attempt must stop."""

    def __init__(
        self, queue: RunQueue, run_id: str, worker: str, lease: timedelta, timeout: timedelta
    ) -> None:
        super().__init__(name=f"heartbeat-{run_id[:8]}", daemon=True)
        self.queue, self.run_id, self.worker, self.lease = queue, run_id, worker, lease
        self.deadline = time.monotonic() + timeout.total_seconds()
        self.done = threading.Event()
        self.reason: str | None = None  # lost | cancel | timeout

    def run(self) -> None:
        interval = max(0.2, self.lease.total_seconds() / 3)
        while not self.done.wait(interval):
            if time.monotonic() > self.deadline:
                self.reason = "timeout"
                return
            try:
                beat = self.queue.heartbeat(self.run_id, self.worker, self.lease)
            except Exception as exc:  # the store is away: keep trying until the lease ends
                log.warning("heartbeat of run %s failed: %s", self.run_id, exc)
                continue
            if beat != "ok":
                self.reason = beat
                return

    def stopping(self) -> bool:
        return self.reason is not None

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=5)


class Worker:
    def __init__(
        self,
        runtime: Any,
        context: ContextFn | None = None,
        *,
        worker_id: str | None = None,
        lease: timedelta | None = None,
        poll: float = 1.0,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.runtime = runtime
        self.context = context or local_context(runtime)
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease = lease or timedelta(seconds=runtime.settings.run_lease_seconds)
        self.poll = poll
        self.clock = clock
        self.queue = RunQueue(runtime.sessions, clock)
        self.desk = ReviewDesk(runtime, clock)
        self.process_record = ProcessRecord.of(os.getpid())
        self._started_up = False
        _LIVE_WORKERS.add(self.id)
        settings = runtime.settings
        self.template_limits = TemplateLimits(
            max_chars=settings.template_max_chars,
            timeout_seconds=settings.template_timeout_seconds,
            max_iterations=settings.template_max_iterations,
        )

    # -- loops ----------------------------------------------------------------------------

    def step(self) -> bool:
        """Housekeeping, then one run if any is claimable; whether there was one."""
        self.start_up()
        self.housekeeping()
        run_id = self.queue.claim(self.id, self.lease)
        if run_id is None:
            return False
        self.process(run_id)
        return True

    def start_up(self) -> None:
        """Once, before this worker's first run: clear what crashed workers left behind."""
        if self._started_up:
            return
        self._started_up = True
        for step in (self.recover_interrupted, self.clean_outboxes):
            try:
                step()
            except Exception as exc:  # debris is not worth refusing to work over
                log.warning("worker start-up (%s) failed: %s", step.__name__, exc)

    def recover_interrupted(self) -> list[str]:
        """Runs still ``running`` for a worker of this machine that is gone: kill their
        harness groups and expire their leases now, so the next claim takes them over (as
        their next attempt, or failing them when none is left). The run ids."""
        with self.runtime.sessions() as session:
            rows = session.execute(
                select(AgentRun.id, AgentRun.lease_owner, AgentRun.attempt_process).where(
                    AgentRun.state == "running"
                )
            ).all()
        recovered = []
        for run_id, owner, process in rows:
            if not isinstance(process, dict) or process.get("worker") != owner:
                continue  # no record of this attempt's process (or an older attempt's)
            worker = ProcessRecord.from_json(process.get("worker_process"))
            if worker is None or not worker.here or self._alive(str(owner), worker):
                continue
            harness = ProcessRecord.from_json(process.get("harness"))
            if harness is not None and kill_group(harness):
                log.warning("run %s: killed the harness its dead worker %s left", run_id, owner)
            now = self.clock()
            with self.runtime.sessions() as session:
                run = self.queue.held(session, run_id, str(owner))
                if run is None:
                    continue
                run.lease_expires_at = now - timedelta(microseconds=1)
                run.history = [
                    *run.history,
                    {
                        "attempt": run.attempts,
                        "worker": owner,
                        "outcome": "worker_died",
                        "noticed_by": self.id,
                        "at": now.isoformat(),
                    },
                ]
                session.commit()
            log.warning(
                "run %s: its worker %s is gone; released for the next attempt", run_id, owner
            )
            recovered.append(str(run_id))
        return recovered

    @staticmethod
    def _alive(worker_id: str, record: ProcessRecord) -> bool:
        if record.pid == os.getpid() and record.alive():
            return worker_id in _LIVE_WORKERS
        return record.alive()

    def clean_outboxes(self) -> list[Path]:
        """Remove stale ``.shipping-*.tmp`` files (a shipper killed mid-write) from the
        folders file shipping writes to: the agents' and the unshipped reviews'."""
        folders: set[Path] = set()
        agents, _ = self.runtime.agents.scan()
        for agent in agents:
            if isinstance(agent.spec.ship, FileShip):
                folders.add((agent.path.parent / agent.spec.ship.dir).resolve())
        with self.runtime.sessions() as session:
            ships = session.scalars(
                select(Review.ship).where(Review.state.in_(("approved", "shipping", "ship_failed")))
            ).all()
        for ship in ships:
            if isinstance(ship, dict) and ship.get("kind") == "file" and ship.get("dir"):
                folders.add(Path(str(ship["dir"])))
        removed = []
        for folder in sorted(folders):
            removed += clean_shipping_debris(folder)
        return removed

    def housekeeping(self) -> None:
        for step in (self.enqueue_scheduled, self.desk.expire_due, self.desk.ship_pending):
            try:
                step()
            except Exception as exc:  # one failing chore must not stop runs
                log.warning("worker housekeeping (%s) failed: %s", step.__name__, exc)

    def loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                worked = self.step()
            except Exception as exc:
                log.exception("worker step failed: %s", exc)
                worked = False
            if not worked:
                stop.wait(self.poll)

    def until_idle(
        self, progress: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, int]:
        """Work until no run is queued or running anywhere (a run another worker holds is
        waited for: it may come back to the queue)."""
        processed = 0
        while True:
            if self.step():
                processed += 1
                if progress is not None:
                    progress({"processed": processed, "pending": self.queue.pending()})
                continue
            if self.queue.pending() == 0:
                return {"processed": processed}
            time.sleep(min(self.poll, 0.5))

    # -- one run --------------------------------------------------------------------------

    def process(self, run_id: str) -> str | None:
        """Do one claimed attempt; the run's state afterwards (``None``: lease lost)."""
        with self.runtime.sessions() as session:
            run = session.get(AgentRun, run_id)
            assert run is not None
            snapshot = {
                "agent": run.agent,
                "input": dict(run.input),
                "trigger": dict(run.trigger),
                "user": run.on_behalf_of,
            }
            previous = run.attempt_process
        self._stop_previous(run_id, previous)
        if not self._record(run_id, None):
            return None  # lost already
        try:
            agent = self.runtime.agents.get(snapshot["agent"])
            timeout = parse_duration(agent.spec.timeout)
        except PERMANENT as exc:
            return self.queue.release(run_id, self.id, error=str(exc), retryable=False)
        beat = _Heartbeat(self.queue, run_id, self.id, self.lease, timeout)
        beat.start()
        try:
            return self._attempt(run_id, agent, snapshot, beat)
        finally:
            beat.stop()

    def _stop_previous(self, run_id: str, previous: Any) -> None:
        """Make sure the previous attempt's command harness no longer runs before this
        attempt starts: kill its group if it ran on this machine."""
        if not isinstance(previous, dict):
            return
        harness = ProcessRecord.from_json(previous.get("harness"))
        if harness is None:
            return
        if not harness.here:
            log.info(
                "run %s: the previous attempt's harness ran on another machine (%s); its "
                "worker's lease expired, so it was stopped there or dies with that worker",
                run_id,
                harness.machine,
            )
            return
        if kill_group(harness):
            log.warning(
                "run %s: killed the previous attempt's harness (pid %s)", run_id, harness.pid
            )

    def _record(self, run_id: str, harness: dict[str, Any] | None) -> bool:
        """Note on the run which process runs this attempt (and its harness); ``False``
        when this worker no longer holds the run."""
        process = {
            "worker": self.id,
            "worker_process": self.process_record.to_json(),
            "harness": harness,
        }
        with self.runtime.sessions() as session:
            done: CursorResult[Any] = session.execute(
                update(AgentRun)
                .where(
                    AgentRun.id == run_id,
                    AgentRun.lease_owner == self.id,
                    AgentRun.state == "running",
                )
                .values(attempt_process=process)
                .execution_options(synchronize_session=False)
            )
            session.commit()
        return done.rowcount == 1

    def _attempt(
        self, run_id: str, agent: Agent, snap: dict[str, Any], beat: _Heartbeat
    ) -> str | None:
        spec = agent.spec
        started = time.monotonic()
        try:
            if spec.harness is None or spec.review is None:
                raise SpecError(f"agent {spec.name!r} no longer has a harness and review")
            target = snap["input"].get("document_id")
            if target is not None:  # checked again now: its ACL may have changed since
                me = Caller(kind="agent", subject=spec.name)
                scope = ContextRouter(self.runtime).scope(me, spec.name, snap["user"])
                readable_target(self.runtime, scope, str(target))
            variables: dict[str, Any] = {"input": snap["input"], "trigger": snap["trigger"]}
            if snap["trigger"].get("document"):
                variables["document"] = snap["trigger"]["document"]
            query = render(spec.context.query, variables, limits=self.template_limits)
            if not query:
                raise SpecError(f"the query template {spec.context.query!r} rendered empty")
            bundle = self.context(spec.name, snap["user"], query, spec.context.budget_tokens)
            task = HarnessTask(
                agent=spec.name,
                description=spec.description,
                query=query,
                input=snap["input"],
                trigger=snap["trigger"],
                output_kind=spec.output.kind,
                context=bundle,
                review_comments=list(snap["input"].get("review_comments", [])),
            )

            def record_harness(harness: dict[str, Any]) -> None:
                if not self._record(run_id, harness):
                    raise HarnessError("the run was taken over as its harness started")

            result = run_harness(
                spec.harness,
                task,
                cancelled=beat.stopping,
                base_dir=str(agent.path.parent),
                on_start=record_harness,
            )
        except Exception as exc:
            if beat.reason == "lost":
                return None
            if beat.reason == "cancel":
                return self.queue.release(
                    run_id, self.id, error="cancelled", retryable=False, cancelled=True
                )
            if beat.reason == "timeout":
                error = f"timed out after {spec.timeout}"
                return self.queue.release(run_id, self.id, error=error, retryable=True)
            retryable = (
                exc.retryable if isinstance(exc, HarnessError) else not isinstance(exc, PERMANENT)
            )
            if isinstance(exc, ConnectorError):
                retryable = True
            log.info(
                "run %s attempt failed (%s): %s", run_id, "retry" if retryable else "final", exc
            )
            return self.queue.release(
                run_id, self.id, error=f"{type(exc).__name__}: {exc}", retryable=retryable
            )
        if beat.reason == "cancel":
            return self.queue.release(
                run_id, self.id, error="cancelled", retryable=False, cancelled=True
            )
        return self._finish(run_id, agent, task, result.to_json(), time.monotonic() - started)

    def _finish(
        self, run_id: str, agent: Agent, task: HarnessTask, output: dict[str, Any], seconds: float
    ) -> str | None:
        spec = agent.spec
        assert spec.review is not None
        now = self.clock()
        with self.runtime.sessions() as session:
            run = self.queue.held(session, run_id, self.id)
            if run is None:
                log.warning("run %s: lease lost before its result was recorded; dropped", run_id)
                return None
            run.state = "succeeded"
            run.finished_at = now
            run.lease_owner = None
            run.lease_expires_at = None
            run.error = None
            run.agent_version = agent.version
            run.query = task.query
            run.bundle_id = task.context.get("bundle_id")
            run.harness_input = task.to_json()
            run.harness_output = output
            run.history = [
                *run.history,
                {
                    "attempt": run.attempts,
                    "worker": self.id,
                    "started_at": as_utc(run.started_at).isoformat() if run.started_at else None,
                    "finished_at": now.isoformat(),
                    "seconds": round(seconds, 3),
                    "outcome": "succeeded",
                },
            ]
            title = output.get("title")
            review = new_review(
                session, run, agent, str(output["content"]), str(title) if title else None, now
            )
            session.add(review)
            session.commit()
        return "succeeded"

    @staticmethod
    def _target(session: Any, run: AgentRun) -> dict[str, Any] | None:
        """The document a comment would go onto: the event's, or the input's document_id."""
        document = run.trigger.get("document")
        if document and document.get("source") and document.get("external_id"):
            return {k: document.get(k) for k in ("source", "external_id", "id", "title", "url")}
        document_id = run.input.get("document_id")
        if not document_id:
            return None
        row = session.execute(
            select(Document, Source.name)
            .join(Source, Source.id == Document.source_id)
            .where(Document.id == str(document_id))
        ).first()
        if row is None:
            return None
        doc, source = row
        return {
            "source": source,
            "external_id": doc.external_id,
            "id": doc.id,
            "title": doc.title,
            "url": doc.url,
        }

    # -- triggers -------------------------------------------------------------------------

    def enqueue_scheduled(self) -> list[str]:
        """Enqueue each scheduled agent whose latest cron slot is newer than the last one it
        ran for (an agent seen for the first time starts from now)."""
        now = self.clock()
        agents, _ = self.runtime.agents.scan()
        queued = []
        for agent in agents:
            trigger = agent.spec.trigger
            if not agent.spec.runnable or not isinstance(trigger, ScheduleTrigger):
                continue
            slot: datetime = croniter(trigger.cron, now).get_prev(datetime)
            with self.runtime.sessions() as session:
                cursor = session.get(AgentCursor, agent.spec.name)
                if cursor is None:
                    session.add(AgentCursor(agent=agent.spec.name, last_slot=slot))
                    session.commit()
                    continue
                if slot <= as_utc(cursor.last_slot):
                    continue
                cursor.last_slot = slot
                session.commit()
            done = self.queue.enqueue(
                agent,
                trigger_kind="schedule",
                trigger_key=f"schedule:{slot.isoformat()}",
                on_behalf_of=trigger.on_behalf_of,
                requested_by="schedule",
                input=dict(trigger.input),
                trigger={"kind": "schedule", "slot": slot.isoformat(), "cron": trigger.cron},
            )
            if done.created:
                queued.append(done.run_id)
        return queued


def new_review(
    session: Any, run: AgentRun, agent: Agent, content: str, title: str | None, now: datetime
) -> Review:
    """The pending review of a succeeded run's artifact: built here for the worker's runs
    and for artifacts external agents hand in over MCP, so both enter the same queue
    with the same approvers, shipping and expiry."""
    spec = agent.spec
    assert spec.review is not None
    review_id = new_review_id()
    expires = spec.review.expires_after
    ship = spec.ship.model_dump(mode="json") if spec.ship is not None else None
    if ship is not None and ship["kind"] == "file":
        ship["dir"] = str((agent.path.parent / ship["dir"]).resolve())
    review = Review(
        id=review_id,
        run_id=run.id,
        agent=spec.name,
        agent_version=agent.version,
        on_behalf_of=run.on_behalf_of,
        bundle_id=run.bundle_id,
        state="pending",
        title=str(title or run.query or "")[:1000],
        output=spec.output.model_dump(mode="json"),
        approvers=list(spec.review.approvers),
        required=spec.review.required,
        ship=ship,
        target=Worker._target(session, run),
        revision=1,
        expires_at=now + parse_duration(expires) if expires else None,
        ship_key=f"context-server-review-{review_id}",
        ship_attempts=0,
        created_at=now,
    )
    review.revisions.append(
        ReviewRevision(
            number=1,
            content=content,
            author=f"agent:{spec.name}",
            diff="",
            created_at=now,
        )
    )
    review.events.append(
        ReviewEvent(
            actor=f"agent:{spec.name}",
            action="submit",
            revision=1,
            comment="",
            detail={"run_id": run.id},
            at=now,
        )
    )
    return review


def enqueue_events(runtime: Any, source: str, since: datetime) -> list[str]:
    """After a sync of ``source``: one run per (event agent, document version) for the
    documents created or updated since ``since`` that the agent's filter accepts."""
    agents, _ = runtime.agents.scan()
    listeners = [
        a
        for a in agents
        if a.spec.runnable
        and isinstance(a.spec.trigger, EventTrigger)
        and a.spec.trigger.source == source
    ]
    if not listeners:
        return []
    with runtime.sessions() as session:
        documents = session.scalars(
            select(Document)
            .join(Source, Source.id == Document.source_id)
            .where(
                Source.name == source, Document.deleted_at.is_(None), Document.indexed_at >= since
            )
            .order_by(Document.indexed_at)
        ).all()
    queue = RunQueue(runtime.sessions)
    queued = []
    for agent in listeners:
        trigger = agent.spec.trigger
        assert isinstance(trigger, EventTrigger)
        for doc in documents:
            event = "created" if doc.version == 1 else "updated"
            if event not in trigger.on or not trigger.matches(doc.doc_metadata or {}):
                continue
            done = queue.enqueue(
                agent,
                trigger_kind="event",
                trigger_key=f"event:{doc.id}:v{doc.version}",
                on_behalf_of=trigger.on_behalf_of,
                requested_by=f"source:{source}",
                trigger={
                    "kind": "event",
                    "event": event,
                    "document": {
                        "id": doc.id,
                        "source": source,
                        "external_id": doc.external_id,
                        "title": doc.title,
                        "url": doc.url,
                        "version": doc.version,
                        "author": doc.author,
                        "metadata": doc.doc_metadata or {},
                    },
                },
            )
            if done.created:
                queued.append(done.run_id)
    return queued
