"""GitHub write-back helpers: the idempotency marker a shipped comment carries, and reading
GitHub's answers to a comment ``POST``. ``GitHubConnector.post_comment`` uses them."""

from __future__ import annotations

import re

import httpx

from connectors.base import CommentReceipt
from connectors.errors import SourceError
from connectors.github.client import JsonObject

#: GitHub refuses a comment body longer than this many characters.
MAX_COMMENT_CHARS = 65536
#: A comment ``POST`` answered with a 5xx is tried this often. The issue's comments are
#: searched for the marker before every try: a comment that landed despite the error is
#: found, not posted twice.
WRITE_ATTEMPTS = 3
ISSUE_ID = re.compile(r"^([^/\s]+/[^/\s]+)/issues/([1-9][0-9]*)$")
# What may go inside an HTML comment without ending it or being mangled.
_KEY = re.compile(r"^[A-Za-z0-9._:@+/=-]{1,200}$")
WRITE_SCOPE = (
    "the token may lack write access to issues (fine-grained token: Issues: Read and write; "
    "classic token: repo, or public_repo for public repositories), or the issue is locked"
)


def ship_marker(idempotency_key: str) -> str:
    """The hidden HTML comment that ends a comment posted with ``idempotency_key``."""
    if not _KEY.match(idempotency_key) or "--" in idempotency_key:
        raise SourceError(
            f"bad idempotency key {idempotency_key!r}: use 1-200 letters, digits and "
            "'._:@+/=-', without '--'"
        )
    return f"<!-- context-server:ship:{idempotency_key} -->"


def response_object(response: httpx.Response) -> JsonObject:
    try:
        body = response.json()
    except ValueError as exc:
        raise SourceError(f"{response.request.url} did not return JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise SourceError(f"{response.request.url} did not return a JSON object")
    return body


def error_message(response: httpx.Response) -> str:
    """GitHub's error ``message``, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return " ".join(response.text.split())[:300]


def receipt(comment: JsonObject, *, already_posted: bool) -> CommentReceipt:
    comment_id = comment.get("id")
    if comment_id is None:
        raise SourceError("GitHub answered a comment without its id")
    url = comment.get("html_url")
    return CommentReceipt(
        comment_id=str(comment_id),
        url=url if isinstance(url, str) else None,
        already_posted=already_posted,
    )
