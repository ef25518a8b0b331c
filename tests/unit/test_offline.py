"""indexing.offline: unstructured runs with telemetry off and its spaCy model never downloaded."""

from __future__ import annotations

import os
import socket
import urllib.request
from typing import Any, NoReturn

import pytest

from indexing import offline
from indexing.offline import OFFLINE_ENV, SPACY_MODEL_PACKAGE, prepare_unstructured


def _no_network(*args: Any, **kwargs: Any) -> NoReturn:
    raise AssertionError("network access attempted")


@pytest.fixture
def offline_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every download path we know of fail loudly."""
    prepare_unstructured()
    import spacy.cli
    from unstructured.nlp import tokenize

    monkeypatch.setattr(spacy.cli, "download", _no_network)
    monkeypatch.setattr(tokenize, "_download_with_timeout", _no_network)
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(socket, "create_connection", _no_network)


def _clear_spacy_caches() -> None:
    from unstructured.nlp import tokenize

    for cached in (
        tokenize._get_nlp,
        tokenize._process_cached,
        tokenize._tokenize_for_cache,
        tokenize.word_tokenize,
        tokenize.pos_tag,
    ):
        cached.cache_clear()


def test_prepare_sets_env_and_model_name(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(offline, "_prepared", False)

    prepare_unstructured()
    prepare_unstructured()  # idempotent

    for name, value in OFFLINE_ENV.items():
        assert os.environ[name] == value
    from unstructured.nlp import tokenize

    assert tokenize._SPACY_MODEL_NAME == SPACY_MODEL_PACKAGE
    assert tokenize._install_spacy_model is offline._refuse_download


def test_prepare_keeps_callers_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    monkeypatch.setattr(offline, "_prepared", False)
    prepare_unstructured()
    assert os.environ["DO_NOT_TRACK"] == "1"


@pytest.mark.usefixtures("offline_only")
def test_sentence_tokenization_works_offline() -> None:
    _clear_spacy_caches()  # force a fresh model load under the no-network patches
    from unstructured.nlp.tokenize import sent_tokenize
    from unstructured.partition.text import partition_text

    text = "The committee met on Tuesday. It approved the budget for next year."
    assert sent_tokenize(text) == [
        "The committee met on Tuesday.",
        "It approved the budget for next year.",
    ]
    # partition_text classifies paragraphs with the POS tagger and sentence splitter.
    elements = partition_text(text=f"Annual Budget\n\n{text}")
    assert [e.category for e in elements] == ["Title", "NarrativeText"]


@pytest.mark.usefixtures("offline_only")
def test_missing_model_is_an_error_not_a_download(monkeypatch: pytest.MonkeyPatch) -> None:
    from unstructured.nlp import tokenize

    monkeypatch.setattr(tokenize, "_SPACY_MODEL_NAME", "no_such_spacy_model_package")
    tokenize._get_nlp.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="downloading models at run time is disabled"):
            tokenize._get_nlp()
    finally:
        tokenize._get_nlp.cache_clear()
