"""The integration examples in examples/ run as documented (as real programs,
in subprocesses) and keep their promises."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name, *args, timeout=120):
    script = EXAMPLES / name
    if not script.is_file():
        pytest.skip(f"{script} is not next to the tests")
    proc = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True,
        timeout=timeout, cwd=tempfile.gettempdir(),
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)))
    return proc


def test_db_pool_10k_queries_no_leak(tmp_path):
    db = tmp_path / "items.sqlite3"
    proc = run_example("db_pool.py", "--queries", "10000", "--threads", "4", "--size", "3",
                       "--db", str(db))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    # Each thread runs a broken statement at q % 97 == 13; those inserts are
    # rolled back by the pool's reset, never committed by the next user.
    per = [2500] * 4
    expected_errors = sum(sum(1 for q in range(n) if q % 97 == 13) for n in per)
    assert summary["errors"] == expected_errors
    assert summary["rows"] == summary["inserted"]
    assert summary["inserted"] + summary["reads"] + summary["errors"] == 10_000
    pool = summary["pool"]
    assert pool["connections_made"] <= 3 and pool["max_in_use"] <= 3
    # One take per query, one per retry of a "database is locked" answer,
    # and one for the final count.
    assert pool["reused"] + pool["connections_made"] == 10_001 + summary["busy_retries"]
    assert summary["leaked_connections"] == 0 and summary["leaked_buffers"] == 0
    assert summary["buffers"]["hit_rate"] > 0.95


def test_db_pool_rejects_bad_arguments():
    proc = run_example("db_pool.py", "--size", "0")
    assert proc.returncode == 2 and "--size" in proc.stderr


def test_json_stream_pgo_output_is_identical_and_arena_reused():
    proc = run_example("json_stream.py", "--records", "2000", "--values", "32", "--repeat", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["identical_output"] is True
    arena = summary["arena"]
    # Every record's temporaries came from the arena, and its one chunk was
    # reused record after record: nothing left alive, no second chunk.
    assert arena["allocations"] >= 2000 * 5
    assert arena["live_blocks"] == 0 and arena["chunks"] == 1


def test_json_stream_rejects_bad_arguments():
    proc = run_example("json_stream.py", "--records", "0")
    assert proc.returncode == 2 and "--records" in proc.stderr


def test_web_server_with_and_without_pools_under_load():
    proc = run_example("web_server.py", "--requests", "300", "--concurrency", "3",
                       "--body", "65536", "--duration", "60", timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    for mode in ("plain", "pooled"):
        r = result[mode]
        assert r["errors"] == 0, r["first_errors"]
        assert r["requests"] == r["server"]["served"] == 300
        assert r["requests_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0
    pooled = result["pooled"]["server"]
    # Two buffers per request from the pool, nearly all reused, all returned;
    # one builder per request, all returned.
    assert pooled["buffers"]["hits"] + pooled["buffers"]["misses"] == 600
    assert pooled["buffers"]["hit_rate"] >= 0.95
    assert pooled["buffers"]["in_use"] == 0 and pooled["builders"]["in_use"] == 0
    assert pooled["builders"]["hits"] + pooled["builders"]["misses"] == 300
    assert result["plain"]["server"]["buffers"]["hits"] == 0
    assert set(result["pooled_vs_plain"]) == {"requests_per_s", "p99"}
