"""Threadsafe allocators shared by threads.

- The stress (RELIABILITY 9, after mimalloc's test-stress): 8 threads run
  the nogil worker of tests/_cython/stress.pyx on one SlabAllocator, then
  on one ArenaAllocator, in rounds of freshly created threads; blocks carry
  a cookie pattern and are freed on other threads.  Zero mismatches, and
  the stats add up afterwards.
- Pure Python: 8 threads share a SlabAllocator and pass Blocks and arrays
  to each other through a queue.Queue; the receiver checks, then frees or
  drops them.
"""

import os
import queue
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import pgo

THREADS = 8


def run_rounds(cext, allocator, seconds, rounds):
    """`rounds` rounds of THREADS new threads, each running the worker for
    seconds / rounds; blocks left in the exchange cross into the next round."""
    exchange = cext.Exchange(256)
    results, errors = [], []

    def work(tid):
        try:
            results.append(cext.stress(allocator, exchange, seconds / rounds, tid, seed=tid + 1))
        except BaseException as e:            # reported below, not lost in the thread
            errors.append(e)

    for r in range(rounds):
        threads = [threading.Thread(target=work, args=(r * THREADS + i,)) for i in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    left_mismatches, left = cext.drain(allocator, exchange)
    total = {key: sum(res[key] for res in results) for key in results[0]}
    total["mismatches"] += left_mismatches
    total["frees"] += left
    assert len(exchange) == 0
    return total


def assert_clean(allocator, total, allocations_before):
    st = allocator.stats()
    assert total["mismatches"] == 0, total
    assert total["allocations"] == total["frees"], total
    assert st["allocations"] - allocations_before == total["allocations"]
    assert st["allocations"] == st["frees"]
    assert st["live_blocks"] == 0 and st["in_use"] == 0
    assert st["in_use"] <= st["capacity"]
    # Blocks really changed threads (the point of the exercise).
    assert total["foreign"] > 0, total
    return st


@pytest.mark.slow
def test_nogil_stress_slab(cext):
    sl = pgo.SlabAllocator(96, slots_per_slab=64, threadsafe=True)
    keep = sl.alloc(96)                       # a Python Block alongside the C users
    with memoryview(keep) as mv:
        mv[:] = bytes(range(96))
    total = run_rounds(cext, sl, seconds=2.5, rounds=5)
    del keep
    st = assert_clean(sl, total, allocations_before=1)
    assert st["free_slots"] * st["stride"] == st["capacity"]


@pytest.mark.slow
def test_nogil_stress_arena(cext):
    ar = pgo.ArenaAllocator(1 << 14, threadsafe=True)
    total = run_rounds(cext, ar, seconds=2.5, rounds=5)
    st = assert_clean(ar, total, allocations_before=0)
    assert st["chunks_in_use"] == 0


@pytest.mark.slow
def test_nogil_stress_hierarchical(cext):
    # Per-thread caches, frees from other threads through the ring, threads
    # that exit every round (their caches go back to the central lists).
    h = pgo.HierarchicalAllocator()
    total = run_rounds(cext, h, seconds=1.25, rounds=5)
    assert_clean(h, total, allocations_before=0)
    # Every worker's cache went back when its thread ended (the OS thread
    # may still be finishing after join(): wait a little); what is left is
    # this thread's, from drain().
    deadline = time.monotonic() + 5
    while h.stats()["thread_caches"] > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert h.stats()["thread_caches"] == 1


def test_nogil_stress_short(cext):
    # A fast version for every run: one round of each allocator.
    for allocator in (pgo.SlabAllocator(40, slots_per_slab=8, threadsafe=True),
                      pgo.ArenaAllocator(4096, threadsafe=True),
                      pgo.MappedPool(1 << 20, threadsafe=True),
                      pgo.HierarchicalAllocator()):
        total = run_rounds(cext, allocator, seconds=0.2, rounds=1)
        assert_clean(allocator, total, allocations_before=0)


def test_python_and_nogil_users_share_a_slab(cext):
    # Python calls hold the GIL; when a nogil worker holds the mutex they
    # wait for it with the GIL released (or everything would stall).
    sl = pgo.SlabAllocator(64, slots_per_slab=8, threadsafe=True)
    exchange = cext.Exchange(64)
    results, errors = [], []

    def work(tid):
        try:
            results.append(cext.stress(sl, exchange, 0.5, tid, seed=tid + 1))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(tid,)) for tid in range(4)]
    for t in threads:
        t.start()
    rounds = 0
    while any(t.is_alive() for t in threads) or rounds < 100:
        blocks = [sl.alloc(64, 64) for _ in range(8)]
        for i, b in enumerate(blocks):
            with memoryview(b) as mv:
                mv[:] = bytes([i + rounds & 0xFF]) * 64
        arr = sl.zeros(8, dtype=np.int64)
        for i, b in enumerate(blocks):
            assert bytes(b) == bytes([i + rounds & 0xFF]) * 64
        for b in blocks[::2]:
            sl.free(b)
        assert not arr.any()
        del blocks, b, arr
        sl.stats()
        rounds += 1
    for t in threads:
        t.join()
    assert not errors, errors
    mismatches, _ = cext.drain(sl, exchange)
    assert mismatches == 0 and sum(r["mismatches"] for r in results) == 0
    st = sl.stats()
    assert st["allocations"] == st["frees"]
    assert st["live_blocks"] == 0 and st["in_use"] == 0


def test_stress_worker_refuses_other_allocators(cext):
    with pytest.raises(TypeError, match="SlabAllocator, ArenaAllocator, MappedPool or "
                                        "HierarchicalAllocator, not StackAllocator"):
        cext.stress(pgo.StackAllocator(1024, threadsafe=True), cext.Exchange(4), 0.01, 0)


def test_python_threads_pass_blocks_through_a_queue():
    sl = pgo.SlabAllocator(64, slots_per_slab=16, threadsafe=True)
    q = queue.Queue()
    per_thread = 300
    problems = []
    counts = [0, 0]                            # freed, dropped
    lock = threading.Lock()

    def expected(tid, i, n):
        return bytes(((tid * 37 + i * 11 + k) & 0xFF) for k in range(n))

    def worker(tid):
        try:
            for i in range(per_thread):
                n = 1 + (tid * 7 + i) % 64
                if i % 5 == 0:
                    arr = sl.empty(n, dtype=np.uint8, align=64)
                    arr[:] = np.frombuffer(expected(tid, i, n), dtype=np.uint8)
                    q.put((tid, i, arr))
                    del arr
                else:
                    b = sl.alloc(n, 64)
                    with memoryview(b) as mv:
                        mv[:] = expected(tid, i, n)
                    q.put((tid, i, b))
                    del b
                src, j, item = q.get(timeout=30)
                if isinstance(item, pgo.Block):
                    data = bytes(item)
                    nbytes = item.nbytes
                else:
                    data = item.tobytes()
                    nbytes = item.nbytes
                if data != expected(src, j, nbytes):
                    problems.append((tid, src, j))
                if isinstance(item, pgo.Block) and i % 2:
                    sl.free(item)
                    with lock:
                        counts[0] += 1
                else:
                    with lock:
                        counts[1] += 1
                del item
        except BaseException as e:
            problems.append(e)

    threads = [threading.Thread(target=worker, args=(tid,)) for tid in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not problems, problems[:5]
    assert q.empty()
    st = sl.stats()
    assert st["allocations"] == st["frees"] == THREADS * per_thread
    assert counts[0] > 0 and counts[1] > 0
    assert st["live_blocks"] == 0 and st["in_use"] == 0
    assert st["free_slots"] * st["stride"] == st["capacity"]


# -- races found in review ---------------------------------------------------------

def run_with_cext(cext, code, timeout):
    """Runs `code` (which can import the test extension) in a subprocess, so
    that a deadlock fails the test by timeout instead of hanging the suite;
    it must exit 0 and print "done"."""
    ext_dir = os.path.dirname(cext.__file__)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ext_dir, *(p for p in sys.path if p)]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=os.path.dirname(ext_dir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("done")


def test_one_block_freed_by_two_threads_is_freed_once(cext):
    # free() checks the Block, then takes the mutex; waiting for a contended
    # mutex releases the GIL, so both threads used to pass the checks and
    # free the slot twice (live_blocks -1, and a later reset() under a live
    # array).  A nogil thread keeps the mutex contended.
    sl = pgo.SlabAllocator(64, threadsafe=True)
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            cext.slab_churn_nogil(sl, 20_000)

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        for _ in range(300):
            block = sl.alloc(64)
            outcomes = []

            def free_it():
                try:
                    sl.free(block)
                    outcomes.append("freed")
                except pgo.AllocatorError:
                    outcomes.append("refused")

            threads = [threading.Thread(target=free_it) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(outcomes) == ["freed", "refused"]
            del block
            assert sl.live_blocks == 0
    finally:
        stop.set()
        churner.join()
    st = sl.stats()
    assert st["allocations"] == st["frees"] and st["in_use"] == 0


def test_c_api_with_the_gil_held_does_not_deadlock(cext):
    # C code may call the nogil .pxd API while holding the GIL; a Python-side
    # thread waiting for the mutex must not hold it while it waits for the
    # GIL.  Run in a subprocess so that a regression hangs it, not the suite.
    code = textwrap.dedent("""
        import threading, pgo, _pgo_test_stress as cext
        sl = pgo.SlabAllocator(64, threadsafe=True)
        stop = threading.Event()
        def nogil_churn():
            while not stop.is_set():
                cext.slab_churn_nogil(sl, 5_000)
        def python_churn():
            while not stop.is_set():
                sl.free(sl.alloc(64))
        threads = [threading.Thread(target=f) for f in (nogil_churn, python_churn)]
        for t in threads:
            t.start()
        for _ in range(200):
            cext.slab_churn_with_gil(sl, 2_000)
        stop.set()
        for t in threads:
            t.join()
        st = sl.stats()
        assert st["allocations"] == st["frees"], st
        print("done", st["contention"] > 0)
    """)
    run_with_cext(cext, code, timeout=120)


def test_fork_while_another_thread_is_inside_the_allocator(cext):
    # RELIABILITY 18: a nogil thread keeps the mutex busy; fork() must give
    # the child an allocator it can use (no inherited held mutex, no half-done
    # change), and the parent keeps working.  In a subprocess, so a deadlock
    # shows as a timeout rather than a hung suite.
    code = textwrap.dedent("""
        import os, threading, pgo, _pgo_test_stress as cext
        sl = pgo.SlabAllocator(64, threadsafe=True)
        stop = threading.Event()
        def churn():
            while not stop.is_set():
                cext.slab_churn_nogil(sl, 5_000)
        t = threading.Thread(target=churn)
        t.start()
        for _ in range(20):
            pid = os.fork()
            if pid == 0:
                blocks = [sl.alloc(64) for _ in range(100)]
                cext.slab_churn_with_gil(sl, 1000)
                for b in blocks:
                    sl.free(b)
                os._exit(0 if sl.live_blocks == 0 else 3)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, status
        stop.set()
        t.join()
        st = sl.stats()
        assert st["allocations"] == st["frees"], st
        print("done")
    """)
    run_with_cext(cext, code, timeout=60)


def test_fork_while_a_nogil_thread_takes_hierarchical_blocks_for_numpy(cext):
    # numpy's handler path holds the allocator's Python-path mutex and then
    # the central lists' (a nogil realloc does this without the GIL); fork()
    # takes the allocator mutexes first and the hierarchical family's own
    # after them, so neither waits for the other in a circle.  (The family's
    # handlers once ran first: this deadlocked on the first fork.)
    code = textwrap.dedent("""
        import os, threading, pgo, _pgo_test_stress as cext
        h = pgo.HierarchicalAllocator()
        stop = threading.Event()
        def churn():
            while not stop.is_set():
                cext.backend_churn_nogil(h, 0.05)
        t = threading.Thread(target=churn, daemon=True)
        t.start()
        for _ in range(30):
            pid = os.fork()
            if pid == 0:
                # The churning thread's blocks at the fork stay counted here.
                live = h.live_blocks
                blocks = [h.alloc(200_000) for _ in range(5)] + [h.alloc(64) for _ in range(50)]
                del blocks
                os._exit(0 if h.live_blocks == live else 3)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, status
        stop.set()
        t.join()
        st = h.stats()
        assert st["allocations"] == st["frees"], st
        print("done")
    """)
    run_with_cext(cext, code, timeout=60)
