"""Processes started at once on a new store: each migrates, none fails. Without a lock two
of them see no schema and both create it ("table ... already exists")."""

from __future__ import annotations

import subprocess
import sys
import time

MIGRATE = """
import sys, time
from context_server.store.db import make_engine, migrate
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
migrate(make_engine(sys.argv[1]))
"""


def test_concurrent_first_starts_all_migrate(database_url: str) -> None:
    start = time.time() + 4  # all processes imported by then, released together
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE, database_url, str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = []
    for p in procs:
        _out, err = p.communicate(timeout=120)
        results.append((p.returncode, err))
    failed = [err.strip().splitlines()[-1] for code, err in results if code != 0]
    assert not failed, failed
