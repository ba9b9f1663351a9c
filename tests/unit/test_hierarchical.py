"""HierarchicalAllocator: size classes, per-thread caches, frees from other
threads, thread exit, allocator destruction while threads hold caches, fork.

The generic allocator tests (test_allocators, test_misuse, test_numpy_bridge,
the state machines, the nogil stress in test_threads) run on it too.
"""

import gc
import os
import threading

import numpy as np
import pytest

import pgo
from pgo import config
from pgo._core import hier

H = pgo.HierarchicalAllocator
CANARY = 8 if pgo.DEBUG_BUILD else 0


def test_the_size_classes():
    sizes = hier.CLASS_SIZES
    assert len(sizes) == 56 and sizes[0] == 16 and sizes[-1] == 262144
    assert list(sizes[:16]) == [16 * (i + 1) for i in range(16)]
    assert sizes[16:20] == (320, 384, 448, 512)
    assert all(a < b for a, b in zip(sizes, sizes[1:]))
    # Every request gets the smallest class that holds it: at most 25% more
    # above 256 bytes.
    for n in [1, 15, 16, 17, 255, 256, 257, 1000, 4097, 100_000, 262144 - CANARY]:
        c = H.class_size(n)
        assert c >= n + CANARY
        assert c == min(s for s in sizes if s >= n + CANARY)
    assert config.HIERARCHICAL_MAX_BYTES == sizes[-1]
    with pytest.raises(ValueError, match="at most"):
        H.class_size(262145)


def test_alignment_comes_from_power_of_two_classes():
    h = H()
    for align in (32, 64, 256, 4096):
        for n in (1, 100, 3000):
            b = h.alloc(n, align)
            assert b.address % align == 0 and b.nbytes == n
    with pytest.raises(ValueError, match="at most 262,144 bytes; 300,000 requested.*cache"):
        h.alloc(300_000)


def test_frees_from_another_thread_are_bounded_and_reused():
    h = H()
    blocks = [h.alloc(64) for _ in range(5000)]
    spans = h.stats()["spans"]
    done = threading.Event()
    seen = {}

    def free_them():
        for b in blocks:
            h.free(b)
        st = h.stats()
        seen.update(st)
        done.set()

    t = threading.Thread(target=free_them)
    t.start()
    t.join()
    blocks.clear()
    # Each thread's list of 64-byte blocks holds at most two batches
    # (2 x 32): the freeing thread's and this one's leftovers together are
    # at most 128 blocks; everything else went to the central list while
    # the other thread freed.
    assert seen["frees"] == 5000 and seen["thread_caches"] == 2
    assert seen["thread_cached_bytes"] <= 2 * 2 * 32 * 64
    assert seen["central_bytes"] >= (5000 - 2 * 32) * 64
    again = [h.alloc(64) for _ in range(5000)]          # reused: no new span
    assert h.stats()["spans"] == spans
    del again
    st = h.stats()
    assert st["in_use"] == 0 and st["allocations"] == st["frees"] == 10000


def thread_with_cached_blocks(h, count, size):
    """A started thread that allocated and freed `count` blocks of `size`
    (so they sit in its cache) and waits; set the event to let it end."""
    ready, finish = threading.Event(), threading.Event()

    def worker():
        kept = [h.alloc(size) for _ in range(count)]
        del kept
        ready.set()
        finish.wait()

    t = threading.Thread(target=worker)
    t.start()
    ready.wait()
    return t, finish


def test_a_threads_caches_go_back_when_it_exits():
    h = H()
    t, finish = thread_with_cached_blocks(h, 10, 100)
    during = h.stats()
    assert during["thread_caches"] >= 1 and during["thread_cached_bytes"] > 0
    finish.set()
    t.join()
    for _ in range(500):                          # the OS thread finishes after join()
        st = h.stats()
        if st["thread_caches"] < during["thread_caches"]:
            break
        threading.Event().wait(0.01)
    assert st["thread_caches"] == during["thread_caches"] - 1
    assert st["central_bytes"] >= 10 * 112
    assert st["allocations"] == st["frees"] == 10


def test_an_allocator_dropped_while_a_thread_holds_its_cache():
    # The thread's cache is detached when the allocator goes; the thread
    # frees it the next time it makes a cache, and exits cleanly.
    go, next_round, done = threading.Event(), threading.Event(), threading.Event()
    box = {"first": H()}

    def worker():
        b = box["first"].alloc(48)
        box["first"].free(b)
        del b
        go.set()
        next_round.wait()
        second = box["second"]
        blocks = [second.alloc(48) for _ in range(100)]
        box["ok"] = len({b.address for b in blocks}) == 100
        del blocks
        done.set()

    t = threading.Thread(target=worker)
    t.start()
    go.wait()
    del box["first"]
    gc.collect()
    box["second"] = H()
    next_round.set()
    done.wait(10)
    t.join(10)
    assert box.get("ok") is True
    st = box["second"].stats()
    assert st["allocations"] == st["frees"] == 100


def test_a_forked_child_drops_the_other_threads_caches():
    h = H()
    t, finish = thread_with_cached_blocks(h, 20, 300)
    before = h.stats()
    assert before["thread_caches"] == 1           # the worker's; this thread has none
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        st = h.stats()
        b = h.alloc(300)
        ok = (st["thread_caches"] == 0 and st["allocations"] == st["frees"] == 20
              and st["thread_cached_bytes"] == 0 and b.nbytes == 300)
        os.write(w, b"ok" if ok else repr(st).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        got = f.read()
    os.waitpid(pid, 0)
    finish.set()
    t.join()
    assert got == b"ok"
    assert h.stats()["allocations"] == 20          # the parent kept its caches


def test_class_size_refuses_what_no_class_holds():
    for n, align in ((262145, 16), (2**63 + 1, 32), (2**64 - 1, 4096), (1, 1 << 19)):
        with pytest.raises((ValueError, OverflowError)):
            H.class_size(n, align)


def test_max_bytes_is_whole_spans_and_a_clear_error():
    h = H(1 << 20)                                 # one span
    a = h.alloc(16)
    with pytest.raises(MemoryError, match=r"cannot allocate 1,000 bytes: 1 span\(s\) of 1 MiB "
                                          r"in use, max_bytes=1,048,576 reached"):
        h.alloc(1000)                              # another class: needs a second span
    assert H(1).stats()["max_bytes"] == 1 << 20    # rounded up to a span
    h.free(a)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork()")
def test_a_forked_child_allocates_and_the_parent_goes_on():
    h = H()
    keep = [h.alloc(200) for _ in range(50)]
    stop = threading.Event()

    def churn():                                   # holds central mutexes now and then
        while not stop.is_set():
            bs = [h.alloc(200) for _ in range(200)]
            del bs

    t = threading.Thread(target=churn)
    t.start()
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            bs = [h.alloc(200) for _ in range(1000)]
            ok = len({b.address for b in bs}) == 1000
            del bs
            os.write(w, b"ok" if ok else b"bad")
            os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            got = f.read()
        _, status = os.waitpid(pid, 0)
    finally:
        stop.set()
        t.join()
    assert got == b"ok" and os.WEXITSTATUS(status) == 0
    del keep


def test_numpy_through_a_router_with_a_cache_for_the_big_arrays():
    h = H()
    router = pgo.Router([pgo.SizeClass(0, config.HIERARCHICAL_MAX_BYTES - 64, h),
                         pgo.SizeClass(config.HIERARCHICAL_MAX_BYTES - 63, None,
                                       pgo.CacheAllocator())])
    with pgo.use(router):
        small = [np.arange(n) for n in (1, 10, 1000)]
        big = np.zeros(1 << 20)
        assert all(pgo.owner(x) is h for x in small)
        assert pgo.owner(big) is not h
    del small, big
    assert h.stats()["in_use"] == 0


def test_config_names_it_for_size_classes_only():
    router = pgo.Router.from_config([
        {"min_bytes": 0, "max_bytes": 4096, "allocator": "hierarchical", "limit_bytes": 1 << 26},
    ], source="job.toml")
    with pgo.use(router):
        x = np.ones(100)
        assert isinstance(pgo.owner(x), H)
    with pytest.raises(pgo.ConfigError, match=r"job.toml: numpy.size_class\[0\].max_bytes: a "
                                              r"hierarchical allocator serves blocks of at most "
                                              r"262144 bytes"):
        pgo.Router.from_config([{"min_bytes": 0, "allocator": "hierarchical"}],
                               source="job.toml")
    with pytest.raises(pgo.ConfigError, match="unknown allocator 'hierarchical'"):
        config.loads('[pgo]\nversion = 1\n[[site]]\nfunction = "a:b"\n'
                     'allocator = "hierarchical"\n')
