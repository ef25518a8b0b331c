"""Sync throughput of the markdown_wiki connector on a real handbook, through the real pipeline.

Syncs the pages of ../shared/data/wiki-sourcegraph-handbook/content (883 markdown pages of a
public company handbook: front matter, relative links between pages) with the real embedding
model and the embedded index, and prints:
- the connector alone: pages listed, read and rendered per second (no pipeline);
- the first sync: documents/s and chunks/s (model already loaded, index already open);
- an unchanged re-sync: its time (every page skipped by mtime + size, nothing embedded).

``--limit N`` takes the first N pages in path order, copied with their folders (so relative
links still resolve) into a temporary folder. Skips with a message when the data is absent.

    nice -n 10 python benchmarks/sync_markdown_wiki.py [--limit 150] [--json]
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
BASE_URL = "https://handbook.sourcegraph.com"


def copy_pages(target: Path, limit: int | None) -> int:
    pages = sorted(WIKI.rglob("*.md"))[:limit]
    for page in pages:
        dest = target / page.relative_to(WIKI)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(page, dest)
    return len(pages)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="sync only the first N pages")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not WIKI.is_dir():
        print(f"skipped: {WIKI} is absent (third-party benchmark data)", file=sys.stderr)
        return

    from connectors.base import Upsert
    from connectors.markdown_wiki.config import MarkdownWikiConfig
    from connectors.markdown_wiki.connector import MarkdownWikiConnector
    from context_server.runtime import Runtime
    from context_server.settings import Settings
    from context_server.specs import SourceSpec
    from indexing.embed import MiniLMEmbedder
    from indexing.parse import parse

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "content"
        root.mkdir()
        pages = copy_pages(root, args.limit)
        config = {"root": str(root), "base_url": BASE_URL, "default_acl": {"allow": ["group:all"]}}

        connector = MarkdownWikiConnector(MarkdownWikiConfig.model_validate(config))
        started = time.perf_counter()
        rendered = sum(
            len(change.document.read())
            for change in connector.sync(None)
            if isinstance(change, Upsert)
        )
        connector_seconds = time.perf_counter() - started

        embedder = MiniLMEmbedder(backend=args.backend)
        embedder.embed(["warm up the model"])  # model load is not ingest
        parse(b"# Warm up\n\nThe parser loads once.", filename="w.md", mime_type=None, max_bytes=99)
        runtime = Runtime(Settings(home=Path(tmp) / "home"), embedder=embedder)
        runtime.add_source(SourceSpec(name="handbook", kind="markdown_wiki", config=config))
        runtime.open_index()  # opening the index is start-up, not ingest
        first = runtime.sync("handbook")[0].report
        again = runtime.sync("handbook")[0].report
        runtime.close()

    figures = {
        "corpus": f"{WIKI} ({pages} pages{'' if args.limit is None else ', --limit'})",
        "backend": embedder.backend,
        "connector_pages_per_s": round(pages / connector_seconds, 1),
        "connector_rendered_kb": round(rendered / 1024, 1),
        "documents": first.documents_seen,
        "failed": first.failed,
        "chunks": first.chunks_embedded,
        "first_sync_s": round(first.seconds, 2),
        "docs_per_s": round(first.documents_seen / first.seconds, 2),
        "chunks_per_s": round(first.chunks_embedded / first.seconds, 1),
        "unchanged_resync_s": round(again.seconds, 4),
        "unchanged_resync_unchanged": again.unchanged,
        "unchanged_resync_reembedded": again.chunks_embedded,
        "first_to_unchanged_ratio": round(first.seconds / again.seconds, 1),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for key, value in figures.items():
        print(f"{key:30} {value}")


if __name__ == "__main__":
    main()
