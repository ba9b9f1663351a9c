"""A bounded database connection pool on pgo's pools, over real sqlite3 files.

    python3 examples/db_pool.py [--queries 10000] [--threads 4] [--size 3] [--db PATH]

Threads run a mix of queries (inserts, point reads, range scans, and a
deliberately broken statement now and then) through a pool of at most
``--size`` connections:

- connections live in a ``pgo.ObjectPool``; a semaphore bounds how many are
  out at once, and the pool's reset rolls back whatever a user left open, so
  a failed query never leaks a half-done transaction to the next user (a
  connection whose rollback fails is dropped, not reused);
- rows read back are packed into buffers from a ``pgo.BufferPool`` (the
  "query buffer"), and checksummed.

At the end it prints a JSON summary: queries, errors (the broken statements;
a "database is locked" answer is retried, up to 50 times, and counted in
``busy_retries``), connections made, the most in use at once, and both
pools' statistics.  Nothing may be left
checked out: ``leaked_connections`` and ``leaked_buffers`` must be 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import tempfile
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import pgo


class ConnectionPool:
    """At most ``size`` sqlite3 connections to ``path``, reused."""

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size
        self._slots = threading.BoundedSemaphore(size)
        self._pool: pgo.ObjectPool[sqlite3.Connection] = pgo.ObjectPool(
            self._connect, reset=self._reset, max_size=size)
        self._lock = threading.Lock()
        self.in_use = 0
        self.max_in_use = 0

    def _connect(self) -> sqlite3.Connection:
        # WAL is set once, by setup_db: it is kept in the file, and switching
        # it here would take locks while other connections work.
        return sqlite3.connect(self.path, timeout=30, check_same_thread=False)

    @staticmethod
    def _reset(conn: sqlite3.Connection) -> None:
        # Whatever the last user left open is undone; a closed or broken
        # connection raises here and the pool drops it.
        conn.rollback()
        conn.execute("SELECT 1").fetchone()

    @contextmanager
    def connection(self, timeout: float = 30.0) -> Iterator[sqlite3.Connection]:
        if not self._slots.acquire(timeout=timeout):
            raise TimeoutError(f"no connection free within {timeout} s")
        try:
            with self._lock:
                self.in_use += 1
                self.max_in_use = max(self.max_in_use, self.in_use)
            with self._pool.take() as conn:     # given back (and reset) on any exit
                yield conn
        finally:
            with self._lock:
                self.in_use -= 1
            self._slots.release()

    def stats(self) -> dict[str, object]:
        s = self._pool.stats()
        return {"size": self.size, "connections_made": s["misses"], "reused": s["hits"],
                "dropped_on_reset": s["reset_failures"], "idle": s["idle"],
                "in_use": self.in_use, "max_in_use": self.max_in_use}


def setup_db(path: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, owner INTEGER, "
                     "payload BLOB)")


def _busy(exc: sqlite3.OperationalError) -> bool:
    # SQLite answers "database is locked" without waiting out the timeout
    # when waiting could deadlock (a deferred transaction whose snapshot went
    # stale); the query is then simply run again.
    return "locked" in str(exc) or "busy" in str(exc)


def worker(pool: ConnectionPool, buffers: pgo.BufferPool, tid: int, n: int,
           results: dict[str, int], lock: threading.Lock) -> None:
    rng = random.Random(tid)
    errors = inserted = read = retries = 0
    checksum = 0
    for q in range(n):
        kind = rng.random()
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(16, 256)))
        for attempt in range(51):
            try:
                with pool.connection() as conn:
                    if q % 97 == 13:
                        # A broken statement inside a transaction: the error
                        # must not keep the connection or its transaction.
                        conn.execute("INSERT INTO items (owner, payload) VALUES (?, ?)",
                                     (tid, b"doomed"))
                        conn.execute("SELECT * FROM no_such_table")
                    elif kind < 0.4:
                        with conn:
                            conn.execute("INSERT INTO items (owner, payload) VALUES (?, ?)",
                                         (tid, payload))
                        inserted += 1
                    else:
                        rows = conn.execute("SELECT payload FROM items WHERE owner = ? "
                                            "ORDER BY id DESC LIMIT 8", (tid,)).fetchall()
                        total = sum(len(r[0]) for r in rows)
                        if total:
                            with buffers.buffer(total) as buf:     # the query buffer
                                pos = 0
                                for (payload_read,) in rows:
                                    buf[pos:pos + len(payload_read)] = payload_read
                                    pos += len(payload_read)
                                checksum = zlib.crc32(buf, checksum)
                        read += 1
            except sqlite3.OperationalError as exc:
                if _busy(exc) and attempt < 50:
                    retries += 1
                    continue
                errors += 1
            break
    with lock:
        results["errors"] += errors
        results["inserted"] += inserted
        results["reads"] += read
        results["busy_retries"] += retries
        results["checksum"] ^= checksum


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=10_000, help="queries in all (default 10000)")
    ap.add_argument("--threads", type=int, default=4, help="worker threads (default 4)")
    ap.add_argument("--size", type=int, default=3, help="most connections (default 3)")
    ap.add_argument("--db", help="sqlite3 file (default: a new one in a temporary folder)")
    args = ap.parse_args(argv)
    if args.queries < 1 or args.threads < 1 or args.size < 1:
        ap.error("--queries, --threads and --size must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or os.path.join(tmp, "items.sqlite3")
        setup_db(path)
        pool = ConnectionPool(path, args.size)
        buffers = pgo.BufferPool(max_bytes=1 << 20)
        results = {"errors": 0, "inserted": 0, "reads": 0, "busy_retries": 0, "checksum": 0}
        lock = threading.Lock()
        per = [args.queries // args.threads + (i < args.queries % args.threads)
               for i in range(args.threads)]
        threads = [threading.Thread(target=worker, args=(pool, buffers, i, per[i], results, lock))
                   for i in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with pool.connection() as conn:
            rows = conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        bstats = buffers.stats()
        summary = {
            "queries": args.queries, **results, "rows": rows,
            "pool": pool.stats(), "buffers": bstats,
            "leaked_connections": pool.in_use,
            "leaked_buffers": bstats["in_use"],
        }
    json.dump(summary, sys.stdout, indent=2)
    print()
    return 0 if summary["leaked_connections"] == 0 and summary["leaked_buffers"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
