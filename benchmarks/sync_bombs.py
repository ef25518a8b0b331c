"""Hostile files beside good ones: does a sync stay bounded in memory and time, and record
every bomb as a failure with its reason?

Builds, in a temporary folder (never checked in): a docx and a zip that inflate to 1 GiB
from about a megabyte (ZIP_DEFLATED zeros), a zip nested in a docx, an .eml with 5 000
parts, a text file past ``max_text_chars``, HTML nested 10^6 deep, and ``--good`` small
markdown files. Runs one sync through the real Runtime and pipeline (isolated parse child,
embedded Qdrant, SQLite) with the fake hash embedder unless ``--real-embedder``; then a
second sync over the same bytes. Prints peak RSS of this process, of the parse child(ren),
and of the whole tree (sampled every 50 ms with psutil), the seconds, and the failures.

    python benchmarks/sync_bombs.py [--good N] [--real-embedder] [--no-isolation] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import threading
import time
import zipfile
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import psutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MiB = 1 << 20


def zeros_zip(name: str, size: int, extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for n, data in (extra or {}).items():
            zf.writestr(n, data)
        with zf.open(name, "w", force_zip64=True) as out:
            block = b"\0" * (16 * MiB)
            for _ in range(size // len(block)):
                out.write(block)
    return buf.getvalue()


def build(root: Path, good: int) -> dict[str, int]:
    files: dict[str, bytes] = {}
    files["bombs/bomb.docx"] = zeros_zip(
        "word/document.xml", 1024 * MiB, {"[Content_Types].xml": b"<Types/>"}
    )
    files["bombs/bomb.zip"] = zeros_zip("zeros.bin", 1024 * MiB)
    inner = zeros_zip("zeros.bin", 512 * MiB)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("word/document.xml", b"<w:document/>")
        zf.writestr("word/embeddings/inner.zip", inner)
    files["bombs/nested.docx"] = buf.getvalue()
    msg = EmailMessage()
    msg["Subject"] = "Five thousand parts"
    msg.set_content("Hello")
    for i in range(5000):
        msg.add_attachment(f"part {i}".encode(), maintype="application", subtype="octet-stream")
    files["bombs/parts.eml"] = msg.as_bytes()
    files["bombs/huge.txt"] = (
        ("All work and no play makes Jack a dull boy. " * 20 + "\n\n") * 12_000
    ).encode()
    files["bombs/deep.html"] = b"<html><body>" + b"<div>" * 10**6 + b"x" + b"</div>" * 10**6
    for i in range(good):
        files[f"good/page{i:04d}.md"] = (
            f"# Page {i}\n\nThis page describes topic number {i} of the handbook. " * 5
        ).encode()
    sizes = {}
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        sizes[rel] = len(data)
    return sizes


class PeakRss(threading.Thread):
    """Peak RSS of this process, of its largest descendant, and of the tree, in bytes."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.me = psutil.Process()
        self.stop = threading.Event()
        self.own = self.child = self.tree = 0

    def run(self) -> None:
        while not self.stop.wait(0.05):
            try:
                own = self.me.memory_info().rss
                kids = []
                for p in self.me.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        kids.append(p.memory_info().rss)
            except psutil.Error:
                continue
            self.own = max(self.own, own)
            self.child = max(self.child, max(kids, default=0))
            self.tree = max(self.tree, own + sum(kids))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--good", type=int, default=200)
    ap.add_argument("--real-embedder", action="store_true")
    ap.add_argument("--no-isolation", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from context_server.runtime import Runtime
    from context_server.settings import Settings
    from context_server.specs import SourceSpec
    from indexing.embed import FakeHashEmbedder

    with tempfile.TemporaryDirectory(prefix="sync-bombs-") as tmp:
        root = Path(tmp) / "share"
        t = time.perf_counter()
        sizes = build(root, args.good)
        built = time.perf_counter() - t
        settings = Settings(home=Path(tmp) / "home", parse_isolation=not args.no_isolation)
        rt = Runtime(settings, embedder=None if args.real_embedder else FakeHashEmbedder())
        rt.add_source(
            SourceSpec(
                name="share",
                kind="filesystem",
                config={"root": str(root), "acl_rules": [{"glob": "**", "allow": ["group:all"]}]},
            )
        )
        if args.real_embedder:
            rt.embedder.embed(["warm up"])
        peak = PeakRss()
        peak.start()
        t = time.perf_counter()
        (first,) = rt.sync("share")
        first_s = time.perf_counter() - t
        t = time.perf_counter()
        (second,) = rt.sync("share")
        second_s = time.perf_counter() - t
        peak.stop.set()
        peak.join()
        rt.close()
    result: dict[str, Any] = {
        "embedder": "MiniLM (real)" if args.real_embedder else "FakeHashEmbedder",
        "isolation": not args.no_isolation,
        "bomb_files_bytes": {k: v for k, v in sizes.items() if k.startswith("bombs/")},
        "good_files": args.good,
        "build_seconds": round(built, 1),
        "first_sync_seconds": round(first_s, 2),
        "second_sync_seconds": round(second_s, 2),
        "indexed": first.report.upserted,
        "known_failures_on_second_sync": second.report.known_failures,
        "failures": sorted((e, r) for e, r, _ in first.report.failures),
        "peak_rss_mib": {
            "this_process": round(peak.own / MiB),
            "largest_child": round(peak.child / MiB),
            "tree": round(peak.tree / MiB),
        },
        "limits": {
            "max_inflated_bytes": settings.max_inflated_bytes,
            "max_text_chars": settings.max_text_chars,
            "parse_memory_bytes": settings.parse_memory_bytes,
            "parse_timeout_seconds": settings.parse_timeout_seconds,
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
