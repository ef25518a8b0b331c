"""Ingest throughput: is the pipeline embedding-bound, and is an unchanged re-sync cheap?

Prints, for one fixed corpus of markdown/text documents:
- raw embedder throughput (chunks/s) on exactly the texts the pipeline embedded;
- the pipeline's throughput (chunks embedded per second of sync, model already loaded);
- their ratio (target >= 0.9: everything but embedding stays out of the way);
- first sync vs unchanged re-sync time, and their ratio (target >= 50x).

Corpus: pages of ../shared/data/wiki-sourcegraph-handbook when present (real text), else the
demo organization's text files, copied into a temporary folder. Usage:

    python benchmarks/ingest.py [--docs N] [--backend auto|torch-fp32|torch-bf16] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("SCARF_NO_ANALYTICS", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
WIKI = REPO.parent / "shared" / "data" / "wiki-sourcegraph-handbook" / "content"


def corpus(target: Path, docs: int) -> str:
    if WIKI.exists():
        pages = sorted(p for p in WIKI.rglob("*.md") if 2_000 < p.stat().st_size < 20_000)
        label = f"{WIKI} ({docs} pages of 2-20 kB)"
    else:
        pages = sorted(p for p in (REPO / "demo" / "org").rglob("*") if p.suffix in {".md", ".txt"})
        label = "demo organization text files (shared data absent)"
    for i, page in enumerate((pages * (docs // max(1, len(pages)) + 1))[:docs]):
        shutil.copy(page, target / f"{i:05d}-{page.name}")
    return label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=60)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from context_server.runtime import Runtime
    from context_server.settings import Settings
    from context_server.specs import SourceSpec
    from context_server.store.models import Chunk, Document
    from indexing.embed import MiniLMEmbedder
    from indexing.parse import parse
    from indexing.pipeline import embedding_text

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "share"
        root.mkdir()
        label = corpus(root, args.docs)
        embedder = MiniLMEmbedder(backend=args.backend)
        embedder.embed(["warm up the model"])  # model load is not ingest
        parse(
            b"# Warm up\n\nThe parser loads spaCy once.",
            filename="w.md",
            mime_type=None,
            max_bytes=99,
        )
        runtime = Runtime(Settings(home=Path(tmp) / "home"), embedder=embedder)
        spec = SourceSpec(
            name="bench",
            kind="filesystem",
            config={"root": str(root), "acl_rules": [{"glob": "**", "allow": ["group:all"]}]},
        )
        runtime.add_source(spec)
        runtime.open_index()  # opening the index is start-up, not ingest

        first = runtime.sync("bench")[0].report
        again = runtime.sync("bench")[0].report

        with runtime.sessions() as session:
            rows = session.query(Document.title, Chunk.section, Chunk.text).join(Chunk).all()
        texts = [embedding_text(t, s, x) for t, s, x in rows]
        started = time.perf_counter()
        for i in range(0, len(texts), 512):  # the pipeline's batch size
            embedder.embed(texts[i : i + 512])
        raw_seconds = time.perf_counter() - started
        runtime.close()

    raw_cps = len(texts) / raw_seconds
    pipe_cps = first.chunks_embedded / first.seconds
    figures = {
        "corpus": label,
        "backend": embedder.backend,
        "documents": first.documents_seen,
        "failed": first.failed,
        "chunks": first.chunks_embedded,
        "raw_embedder_chunks_per_s": round(raw_cps, 1),
        "pipeline_chunks_per_s": round(pipe_cps, 1),
        "pipeline_to_raw_ratio": round(pipe_cps / raw_cps, 3),
        "first_sync_s": round(first.seconds, 3),
        "unchanged_resync_s": round(again.seconds, 4),
        "first_to_unchanged_ratio": round(first.seconds / again.seconds, 1),
        "unchanged_resync_reembedded": again.chunks_embedded,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for key, value in figures.items():
        print(f"{key:32} {value}")
    ok = figures["pipeline_to_raw_ratio"] >= 0.9 and figures["first_to_unchanged_ratio"] >= 50
    print("targets (ratio >= 0.9, re-sync >= 50x):", "met" if ok else "NOT met", file=sys.stderr)


if __name__ == "__main__":
    main()
