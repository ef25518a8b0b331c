"""Shipping an approved artifact: into a folder, to a webhook, or as a comment on a ticket.

Only the review desk calls this, and only for a review with its required approvals.
Every shipper is idempotent by the review's ship key, because a crash between shipping and
recording it means the same artifact is shipped again on recovery: a file is created only
if absent (an identical one counts as shipped), a webhook receives an ``Idempotency-Key``
header, and a comment carries the key so the connector finds it instead of posting again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from connectors.base import Commenter
from connectors.errors import ConnectorError
from connectors.secrets import SecretRef
from context_server.durations import parse_duration
from context_server.workflow import TemplateFailure, render


class ShipError(Exception):
    """The destination refused or could not be reached; the message says which and why."""


@dataclass(frozen=True)
class ShipOrder:
    review_id: str
    run_id: str
    key: str  # idempotency key
    agent: str
    title: str
    content: str
    ship: dict[str, Any]  # the agent's ship spec when the run was made
    output: dict[str, Any]
    target: dict[str, Any] | None  # {source, external_id, document_id} for comments
    approvals: list[dict[str, Any]]
    citations: list[dict[str, Any]]

    def payload(self) -> dict[str, Any]:
        return {
            "idempotency_key": self.key,
            "review_id": self.review_id,
            "run_id": self.run_id,
            "agent": self.agent,
            "title": self.title,
            "content": self.content,
            "approvals": self.approvals,
            "citations": self.citations,
            "target": self.target,
        }


#: Builds the connector of a configured source by name (for write-back).
ConnectorFor = Callable[[str], object]


def ship(order: ShipOrder, connector_for: ConnectorFor) -> dict[str, Any]:
    """Ship ``order``; what the destination reported, or ``ShipError``."""
    kind = order.ship.get("kind", "none")
    if kind == "file":
        return _to_file(order)
    if kind == "webhook":
        return _to_webhook(order)
    if kind == "comment":
        return _as_comment(order, connector_for)
    if kind == "none":
        return {"kind": "none"}
    raise ShipError(f"unknown ship kind {kind!r}")


def _to_file(order: ShipOrder) -> dict[str, Any]:
    folder = Path(order.ship["dir"])
    try:
        name = render(
            order.output.get("filename") or "{{ review_id }}.md",
            {"review_id": order.review_id, "run_id": order.run_id, "agent": order.agent},
        )
    except TemplateFailure as exc:
        raise ShipError(str(exc)) from exc
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ShipError(f"the output file name {name!r} must be one plain file name")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ShipError(f"cannot create the ship folder {folder}: {exc}") from exc
    final = folder / name
    data = order.content.encode("utf-8")
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX, suffix=TMP_SUFFIX)
    except OSError as exc:
        raise ShipError(f"cannot write into {folder}: {exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, final)  # atomic create-if-absent
            already = False
        except FileExistsError:
            if final.read_bytes() != data:
                raise ShipError(
                    f"{final} exists with other content; not overwritten (move it away and "
                    "retry shipping)"
                ) from None
            already = True
    except OSError as exc:
        raise ShipError(f"cannot write {final}: {exc}") from exc
    finally:  # on every way out, a failure included: no temporary file stays behind
        with contextlib.suppress(OSError):
            Path(tmp).unlink(missing_ok=True)
    return {"kind": "file", "path": str(final), "sha256": digest, "already_shipped": already}


#: Temporary files of file shipping; one older than ``DEBRIS_SECONDS`` is a crashed
#: writer's (a write takes milliseconds), never one being written.
TMP_PREFIX = ".shipping-"
TMP_SUFFIX = ".tmp"
DEBRIS_SECONDS = 60.0


def clean_shipping_debris(folder: Path, older_than: float = DEBRIS_SECONDS) -> list[Path]:
    """Remove ``.shipping-*.tmp`` files older than ``older_than`` seconds from ``folder``
    (a shipper killed between writing and linking leaves one); the files removed."""
    removed = []
    cutoff = time.time() - older_than
    with contextlib.suppress(OSError):
        for path in folder.glob(f"{TMP_PREFIX}*{TMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path)
    return removed


def _to_webhook(order: ShipOrder) -> dict[str, Any]:
    url = str(order.ship["url"])
    headers = {"Idempotency-Key": order.key, "User-Agent": "context-server"}
    if order.ship.get("secret"):
        try:
            secret = SecretRef.model_validate(order.ship["secret"]).resolve()
        except ConnectorError as exc:
            raise ShipError(f"the webhook secret: {exc}") from exc
        headers["Authorization"] = f"Bearer {secret.get_secret_value()}"
    timeout = parse_duration(str(order.ship.get("timeout") or "30s")).total_seconds()
    try:
        response = httpx.post(url, json=order.payload(), headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise ShipError(f"the webhook {url} could not be reached: {exc}") from exc
    if response.status_code >= 300:
        raise ShipError(f"the webhook {url} answered {response.status_code}: {response.text[:500]}")
    return {"kind": "webhook", "url": url, "status": response.status_code}


def _as_comment(order: ShipOrder, connector_for: ConnectorFor) -> dict[str, Any]:
    target = order.target
    if not target or not target.get("source") or not target.get("external_id"):
        raise ShipError(
            "a comment ships onto the run's document: this run had none (an event run has "
            "its document; a manual run needs input.document_id)"
        )
    try:
        connector = connector_for(str(target["source"]))
    except ConnectorError as exc:
        raise ShipError(f"source {target['source']!r}: {exc}") from exc
    if not isinstance(connector, Commenter):
        raise ShipError(
            f"source {target['source']!r} cannot take comments (write-back: github, jira)"
        )
    try:
        receipt = connector.post_comment(str(target["external_id"]), order.content, order.key)
    except ConnectorError as exc:
        raise ShipError(f"comment on {target['external_id']}: {exc}") from exc
    return {
        "kind": "comment",
        "source": target["source"],
        "external_id": target["external_id"],
        "comment_id": receipt.comment_id,
        "url": receipt.url,
        "already_shipped": receipt.already_posted,
    }
