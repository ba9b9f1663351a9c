"""CacheAllocator on its own: size classes, reuse, the cached-bytes bound,
trim, misuse, out-of-memory handling, prefault and huge pages, a Hypothesis
state machine and threads.

The cache keeps freed blocks by size class (4 KiB, then eight classes per
power of two) for the next request of that class; ``Block.address`` shows
which block a request got, so reuse and eviction order are checked by
address.  Failure injection (``_memory._inject_oom``) makes the n-th next
system allocation fail: for the cache, a miss makes two (the block record,
then the block's memory), and a full live table one more before them.
"""

import os
import pathlib
import queue
import random
import resource
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import pgo
from pgo._core import _memory

C = pgo.CacheAllocator
PAGE = 4096
MAX_REQUEST = 1 << 48
EXTRA_KEYS = {"hits", "misses", "hit_rate", "cached_bytes", "cached_blocks", "evictions",
              "trims", "max_cached_bytes", "headroom_percent"}


def snapshot(c):
    s = c.stats()
    del s["contention"]
    return s


def check_invariants(c):
    s = c.stats()
    assert EXTRA_KEYS <= s.keys()
    assert 0 <= s["in_use"] <= s["capacity"]
    assert s["capacity"] == s["in_use"] + s["cached_bytes"]
    assert s["cached_bytes"] <= s["max_cached_bytes"]
    if s["headroom_percent"] is not None:
        # What the cache serves, live and waiting, stays within the headroom
        # of its own peak (integer percent of whole bytes, as the C side).
        allowed = s["peak"] + s["peak"] // 100 * s["headroom_percent"]
        assert s["in_use"] + s["cached_bytes"] <= max(allowed, s["in_use"])
    assert s["allocations"] >= s["frees"]
    assert s["allocations"] - s["frees"] == s["live_blocks"] >= 0
    assert s["peak"] >= s["in_use"]
    # Every allocation looked in the cache; a failed one may have too.
    assert s["allocations"] <= s["hits"] + s["misses"] <= s["allocations"] + s["failed"]
    lookups = s["hits"] + s["misses"]
    assert s["hit_rate"] == pytest.approx(s["hits"] / lookups if lookups else 0.0)
    assert s["threadsafe"] is True
    return s


def fill(block, seed):
    with memoryview(block) as mv:
        np.frombuffer(mv, dtype=np.uint8)[:] = seed & 0xFF


def holds(block, seed):
    with memoryview(block) as mv:
        v = np.frombuffer(mv, dtype=np.uint8)
        return bool((v == (seed & 0xFF)).all())


# -- size classes -------------------------------------------------------------

def test_class_size_small_requests_take_a_page():
    for n in (0, 1, 15, 16, 1000, 4095, 4096):
        assert C.class_size(n) == PAGE


def test_class_size_known_values():
    assert C.class_size(4097) == 4608
    assert C.class_size(4608) == 4608
    assert C.class_size(4609) == 5120
    assert C.class_size(8193) == 9216
    assert C.class_size((1 << 20) + 1) == (1 << 20) + (1 << 17)
    for k in range(12, 49):
        assert C.class_size(1 << k) == 1 << k
    assert C.class_size(MAX_REQUEST) == MAX_REQUEST


@given(st.integers(0, MAX_REQUEST - 1))
@settings(max_examples=300, deadline=None)
def test_class_size_bounds_and_monotone(n):
    size = C.class_size(n)
    assert size >= n and size >= PAGE
    assert C.class_size(n + 1) >= size
    assert C.class_size(size) == size              # a class size is its own class
    if n > PAGE:
        assert size * 8 <= n * 9                   # at most 12.5% rounded away


@pytest.mark.parametrize("n", [MAX_REQUEST + 1, 1 << 60, (1 << 64) - 1])
def test_class_size_above_2_48_is_a_memory_error(n):
    with pytest.raises(MemoryError, match=r"2\*\*48") as e:
        C.class_size(n)
    assert f"{n:,}" in str(e.value)


def test_alloc_above_2_48_fails_and_changes_nothing():
    c = C()
    before = snapshot(c)
    with pytest.raises(MemoryError, match=f"{MAX_REQUEST + 1:,} bytes"):
        c.alloc(MAX_REQUEST + 1)
    after = snapshot(c)
    assert after.pop("failed") == before.pop("failed") + 1
    assert after == before
    b = c.alloc(100)
    fill(b, 1)
    assert holds(b, 1)


# -- without the GIL ---------------------------------------------------------------

def test_cache_lookups_run_without_the_gil():
    # numpy's handler and pgo.owner look blocks up in the cache's live table
    # with the GIL released.  Nothing on that path may raise (in the test
    # build, overflowcheck turns the hash's deliberate wraparound into an
    # exception, which without the GIL is a crash).  In a subprocess, so a
    # crash fails this test instead of the whole run.
    code = textwrap.dedent("""
        import numpy as np, os, pgo, tempfile, threading
        cache = pgo.CacheAllocator()
        path = os.path.join(tempfile.mkdtemp(), "n.txt")
        with open(path, "w") as f:
            f.write(" ".join(map(str, range(20000))))
        with pgo.use(cache):
            a = np.arange(100000.0)
            b = np.fromfile(path, sep=" ")          # realloc without the GIL
            c = np.sqrt(a) + 1                      # a ufunc loop without the GIL
        assert pgo.owner(a) is cache and pgo.owner(b) is cache and pgo.owner(c) is cache
        assert (b == np.arange(20000)).all()
        blk = cache.alloc(10000)
        cache.free(blk)
        del a, b, c
        assert cache.live_blocks == 0
        print("done")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code],
                          capture_output=True, text=True, timeout=60, env=env,
                          cwd=tempfile.gettempdir())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "done"
    assert "Exception ignored" not in proc.stderr, proc.stderr[-3000:]


# -- alloc, free, reuse ---------------------------------------------------------

def test_alloc_free_empty_and_stats():
    c = C()
    b = c.alloc(10000)
    assert b.nbytes == 10000 and b.address % PAGE == 0
    fill(b, 7)
    assert holds(b, 7)
    s = check_invariants(c)
    assert s["in_use"] == C.class_size(10000)
    assert s["requested"] == 10000 and s["lost"] == C.class_size(10000) - 10000
    assert s["misses"] == 1 and s["hits"] == 0 and s["live_blocks"] == 1
    arr = c.empty((100, 30), dtype=np.float32)
    assert arr.shape == (100, 30) and arr.base.allocator is c
    assert arr.__array_interface__["data"][0] % PAGE == 0
    assert pgo.owner(arr) is c
    arr[:] = 3
    assert float(arr.sum()) == 3 * 3000
    c.free(b)
    assert (arr == 3).all()
    del arr
    s = check_invariants(c)
    assert s["in_use"] == 0 and s["live_blocks"] == 0 and s["cached_blocks"] == 2
    assert s["frees"] == 2 and s["allocations"] == 2


def test_alignment_up_to_a_page():
    c = C()
    for align in (1, 16, 64, 1024, 4096):
        b = c.alloc(5000, align)
        assert b.address % align == 0
        c.free(b)
    with pytest.raises(ValueError):
        c.alloc(100, 3)
    with pytest.raises(ValueError):
        c.alloc(100, 8192)


def test_zero_byte_blocks_have_addresses_of_their_own():
    c = C()
    a, b = c.alloc(0), c.alloc(0)
    assert a.nbytes == b.nbytes == 0 and a.address != b.address
    c.free(a)
    c.free(b)
    check_invariants(c)


def test_hit_after_free_of_the_same_class():
    c = C()
    b = c.alloc(4097)
    addr = b.address
    c.free(b)
    b2 = c.alloc(4608)                             # same class (4608)
    assert b2.address == addr
    s = c.stats()
    assert s["hits"] == 1 and s["misses"] == 1 and s["hit_rate"] == 0.5
    assert s["cached_blocks"] == 0
    c.free(b2)


def test_miss_on_another_class():
    c = C()
    b = c.alloc(4097)
    addr = b.address
    c.free(b)
    other = c.alloc(4609)                          # class 5120
    assert other.address != addr                   # the cached block is still cached
    s = c.stats()
    assert s["hits"] == 0 and s["misses"] == 2 and s["cached_blocks"] == 1
    c.free(other)


def test_a_miss_takes_a_cached_block_up_to_4x_larger():
    # Pages already resident rather than fresh ones: the nearest larger
    # class that has a cached block, at most 16 classes (4x) up.
    c = C()
    blocks = {n: c.alloc(n) for n in (2 << 20, 3 << 20, 9 << 20)}
    for b in blocks.values():
        c.free(b)
    got = c.alloc(2 << 20)                         # its own class
    assert got.address == blocks[2 << 20].address
    small = c.alloc(1 << 20)                       # 3 MiB is the nearest larger class
    assert small.address == blocks[3 << 20].address and small.nbytes == 1 << 20
    s = check_invariants(c)
    assert s["hits"] == 2 and s["misses"] == 3
    assert s["in_use"] == (2 << 20) + (3 << 20)    # the block's size, not the request's
    assert s["lost"] == 2 << 20
    # 9 MiB is over 4x a 2 MiB request: a fresh block, the 9 MiB one stays.
    fresh = c.alloc(2 << 20)
    assert fresh.address != blocks[9 << 20].address
    s = check_invariants(c)
    assert s["misses"] == 4 and s["cached_blocks"] == 1
    c.free(small)                                  # back to its block's class
    again = c.alloc(3 << 20)
    assert again.address == blocks[3 << 20].address
    for b in (got, fresh, again):
        c.free(b)
    check_invariants(c)


def test_a_miss_takes_a_block_exactly_16_classes_up_not_17():
    c = C()
    n = 2 << 20
    up16 = c.alloc(4 * n)                          # 16 classes above n's
    up17 = c.alloc(4 * n + 1)                      # 17
    assert C.class_size(4 * n + 1) > 4 * C.class_size(n)
    c.free(up16)
    got = c.alloc(n)
    assert got.address == up16.address
    c.free(got)
    again = c.alloc(4 * n)                         # take 16 back: only 17 is cached
    c.free(up17)
    fresh = c.alloc(n)
    assert fresh.address not in (up16.address, up17.address)
    for b in (again, fresh):
        c.free(b)
    check_invariants(c)


def test_zeros_and_realloc_on_a_block_from_a_larger_class():
    # np.zeros on a borrowed block that held other data is zero; a realloc
    # out of it keeps the array's bytes.
    c = C()
    with pgo.use(c):
        big = np.full(3 << 20, 7, dtype=np.uint8)  # 3 MiB of 7s, then cached
        where = big.ctypes.data
        del big
        z = np.zeros(1 << 20, dtype=np.uint8)      # 1 MiB: takes the 3 MiB block
        assert z.ctypes.data == where and not z.any()
        z[:] = 5
        z.resize(2 << 20, refcheck=False)          # realloc into a fresh 2 MiB block
        assert z.ctypes.data != where
        assert (z[: 1 << 20] == 5).all() and not z[1 << 20:].any()
        del z
    check_invariants(c)


def test_contents_survive_other_traffic():
    c = C(max_cached_bytes=1 << 20)
    keep = [c.alloc(5000 + 3000 * i) for i in range(8)]
    for i, b in enumerate(keep):
        fill(b, i + 1)
    for round_ in range(20):
        tmp = [c.alloc(5000 + 3000 * ((i + round_) % 8)) for i in range(8)]
        for b in tmp:
            fill(b, 0xEE)
        for b in tmp:
            c.free(b)
    for i, b in enumerate(keep):
        assert holds(b, i + 1)
        c.free(b)
    check_invariants(c)


def test_zeros_on_reused_memory_are_zero():
    c = C()
    a = c.empty(2000, dtype=np.int64)
    a[:] = -1
    addr = a.__array_interface__["data"][0]
    del a
    z = c.zeros(2000, dtype=np.int64)
    assert z.__array_interface__["data"][0] == addr  # the same block, reused
    assert (z == 0).all()


COLOUR_STEP, NCOLOURS = 576, 8          # what the docs promise (pgo._core.cache pins them)


def test_numpys_arrays_start_at_a_colour_of_their_block():
    # From 64 KiB, numpy's arrays start at one of eight offsets (multiples
    # of 576 bytes) into the block's first page, in turn as blocks are made,
    # so the arrays of one loop do not share the CPU caches' sets.  Smaller
    # blocks, Python Blocks and arrays from Allocator.empty get the block's
    # page-aligned start, as promised.
    from pgo._core import cache

    assert (cache.COLOUR_STEP_BYTES, cache.COLOURS) == (COLOUR_STEP, NCOLOURS)
    c = C()
    with pgo.use(c):
        arrs = [np.full(1 << 17, float(i)) for i in range(NCOLOURS + 1)]   # 1 MiB each
        small = np.full(2048, 5.0)                                          # 16 KiB
        grown = np.arange(float(1 << 17))
        grown.resize(1 << 19, refcheck=False)       # realloc: copied out of a coloured block
    offsets = [a.__array_interface__["data"][0] % PAGE for a in arrs]
    assert len(set(offsets[:NCOLOURS])) == NCOLOURS and offsets[NCOLOURS] == offsets[0]
    assert all(o % COLOUR_STEP == 0 and o < NCOLOURS * COLOUR_STEP for o in offsets)
    assert all(pgo.owner(a) is c and (a == i).all() for i, a in enumerate(arrs))
    assert small.__array_interface__["data"][0] % PAGE == 0 and (small == 5.0).all()
    assert pgo.owner(grown) is c and (grown[:1 << 17] == np.arange(float(1 << 17))).all()
    blk = c.alloc(1 << 20)
    arr = c.empty(1 << 17)
    assert blk.address % PAGE == 0 and arr.__array_interface__["data"][0] % PAGE == 0
    c.free(blk)
    del arrs, small, grown, arr
    s = check_invariants(c)
    assert s["live_blocks"] == 0 and s["cached_blocks"] >= NCOLOURS + 1
    # A coloured block handed to a Python Block starts at its page again.
    again = [c.alloc(1 << 20) for _ in range(NCOLOURS + 1)]
    assert all(b.address % PAGE == 0 for b in again)
    for b in again:
        c.free(b)
    check_invariants(c)


def test_a_burst_of_frees_comes_back_in_the_order_it_was_made():
    # A function's temporaries are freed together when it returns; each gets
    # back, in the next call, the block it had in this one, whatever order
    # they were freed in.
    c = C()
    made = [c.alloc(1 << 20) for _ in range(3)]
    addrs = [b.address for b in made]
    for b in reversed(made):
        c.free(b)
    again = [c.alloc(1 << 20) for _ in range(3)]
    assert [b.address for b in again] == addrs
    for b in again[::2] + again[1:2]:           # another order of freeing
        c.free(b)
    third = [c.alloc(1 << 20) for _ in range(3)]
    assert [b.address for b in third] == addrs


def test_frees_between_allocations_come_back_most_recent_first():
    # Not a burst: an allocation came between the frees, so the most
    # recently freed block (the one still in the CPU's caches) goes first.
    c = C()
    a, b, keep = c.alloc(1 << 20), c.alloc(1 << 20), c.alloc(8192)
    c.free(a)
    other = c.alloc(8192)
    c.free(b)
    first, second = c.alloc(1 << 20), c.alloc(1 << 20)
    assert (first.address, second.address) == (b.address, a.address)
    for blk in (first, second, keep, other):
        c.free(blk)


# -- the cached-bytes bound and eviction ----------------------------------------

def test_bound_evicts_the_least_recently_freed():
    c = C(max_cached_bytes=3 * 8192)
    blocks = [c.alloc(8192) for _ in range(4)]
    addrs = [b.address for b in blocks]
    for b in blocks:
        c.free(b)
    s = check_invariants(c)
    assert s["cached_blocks"] == 3 and s["cached_bytes"] == 3 * 8192
    assert s["evictions"] == 1                     # the first one freed
    again = [c.alloc(8192) for _ in range(3)]
    # Freed in one burst, so back in the order they were made; the evicted
    # block is not among them.
    assert [b.address for b in again] == [addrs[1], addrs[2], addrs[3]]
    assert c.stats()["hits"] == 3
    fourth = c.alloc(8192)
    assert c.stats()["misses"] == 5
    for b in again + [fourth]:
        c.free(b)
    check_invariants(c)


def test_eviction_is_by_recency_across_classes():
    c = C(max_cached_bytes=8192 + 16384)
    old = c.alloc(8192)
    mid = c.alloc(16384)
    new = c.alloc(8192)
    a_old, a_mid, a_new = old.address, mid.address, new.address
    c.free(old)
    c.free(mid)
    assert c.stats()["evictions"] == 0
    c.free(new)                                    # 32 KiB cached > 24 KiB: `old` goes
    s = check_invariants(c)
    assert s["evictions"] == 1 and s["cached_bytes"] == 8192 + 16384
    got_mid = c.alloc(16384)
    got_new = c.alloc(8192)
    assert (got_mid.address, got_new.address) == (a_mid, a_new)
    hits = c.stats()["hits"]
    third = c.alloc(8192)                          # `old` was given back: a miss
    assert c.stats()["hits"] == hits and c.stats()["cached_blocks"] == 0
    assert third.address != a_new
    for b in (got_mid, got_new, third):
        c.free(b)
    check_invariants(c)
    del a_old


def test_a_block_bigger_than_the_bound_is_not_kept():
    c = C(max_cached_bytes=8192)
    b = c.alloc(20000)
    c.free(b)
    s = check_invariants(c)
    assert s["cached_blocks"] == 0 and s["cached_bytes"] == 0 and s["capacity"] == 0
    assert s["evictions"] == 1


def test_max_cached_bytes_zero_keeps_nothing():
    c = C(max_cached_bytes=0)
    assert c.max_cached_bytes == 0
    for n in (1, 5000, 100000):
        b = c.alloc(n)
        fill(b, 3)
        c.free(b)
        s = check_invariants(c)
        assert s["cached_blocks"] == 0 and s["cached_bytes"] == 0 and s["capacity"] == 0
    b = c.alloc(5000)
    s = c.stats()
    assert s["hits"] == 0 and s["misses"] == 4 and s["evictions"] == 3
    c.free(b)


def test_default_bound():
    assert C().max_cached_bytes == 512 << 20
    assert C().stats()["max_cached_bytes"] == 512 << 20


def test_headroom_keeps_a_steady_loop_in_the_cache():
    # A loop that frees its temporaries and makes them again never crosses
    # its own peak: every block is reused, nothing is evicted.
    c = C(headroom_percent=0)
    assert c.headroom_percent == 0
    for _ in range(5):
        temps = [c.alloc(n) for n in (300_000, 300_000, 90_000)]
        for b in temps:
            c.free(b)
    s = check_invariants(c)
    assert s["misses"] == 3 and s["hits"] == 12 and s["evictions"] == 0


def test_headroom_gives_back_blocks_of_a_finished_phase():
    # Phase one caches 2 x 40 KiB; phase two makes a 192 KiB block: live +
    # cached would be 272 KiB against a 192 KiB peak + 10%, so the oldest
    # cached blocks go back first, until the cache fits in the headroom.
    c = C(headroom_percent=10)
    first = [c.alloc(40 << 10) for _ in range(2)]
    for b in first:
        c.free(b)
    assert c.stats()["cached_bytes"] == 80 << 10
    big = c.alloc(192 << 10)
    s = check_invariants(c)
    assert s["peak"] == 192 << 10 and s["evictions"] == 2 and s["cached_bytes"] == 0
    c.free(big)
    # Its own free stays: live + cached is its peak.
    s = check_invariants(c)
    assert s["cached_bytes"] == 192 << 10 and s["evictions"] == 2
    # The first phase's blocks were given back: its size is a miss now (the
    # 192 KiB block is over 4x its size, too large to serve it), and the
    # 192 KiB block goes too: 40 + 192 KiB is over the headroom.
    hits = s["hits"]
    again = c.alloc(40 << 10)
    s = check_invariants(c)
    assert s["hits"] == hits and s["misses"] == 4 and s["evictions"] == 3
    c.free(again)


def test_headroom_keeps_the_most_recent_blocks_within_it():
    # (The bound is integer arithmetic, peak // 100 * percent, as in C.)
    c = C(headroom_percent=60)
    peak = [c.alloc(64 << 10) for _ in range(4)]   # peak: 256 KiB; allowed ~409.6 KiB
    for b in peak:
        c.free(b)
    other = [c.alloc(96 << 10) for _ in range(2)]  # 192 KiB live + 256 cached > 409.6
    s = check_invariants(c)
    assert s["in_use"] == 192 << 10 and s["cached_bytes"] == 192 << 10
    assert s["evictions"] == 1
    # The newest freed survive: peak[1..3], freed in one burst, so back in
    # the order they were made.
    addrs = [b.address for b in peak]
    reused = [c.alloc(64 << 10) for _ in range(3)]
    assert [b.address for b in reused] == [addrs[1], addrs[2], addrs[3]]
    for b in other + reused:
        c.free(b)


def test_headroom_none_is_bounded_by_max_cached_bytes_only():
    c = C(max_cached_bytes=1 << 20)
    assert c.headroom_percent is None and c.stats()["headroom_percent"] is None
    small = [c.alloc(64 << 10) for _ in range(4)]
    for b in small:
        c.free(b)
    big = c.alloc(512 << 10)
    assert c.stats()["cached_bytes"] == 256 << 10 and c.stats()["evictions"] == 0
    c.free(big)


@pytest.mark.parametrize("bad", [-1, 1_000_001, 2 ** 70])
def test_headroom_out_of_range_is_refused(bad):
    with pytest.raises((ValueError, OverflowError), match="headroom_percent|int too big"):
        C(headroom_percent=bad)


def test_headroom_of_the_wrong_type_is_refused():
    with pytest.raises(TypeError):
        C(headroom_percent="10")


def test_headroom_in_repr_and_stats():
    c = C(1 << 20, headroom_percent=25)
    assert "headroom_percent=25" in repr(c)
    assert c.stats()["headroom_percent"] == 25


# -- trim and reset ---------------------------------------------------------------

def test_trim_releases_everything_cached():
    c = C()
    live = c.alloc(50000)
    sizes = [5000, 9000, 70000, 70000]
    for b in [c.alloc(n) for n in sizes]:
        c.free(b)
    before = c.stats()
    assert before["cached_blocks"] == 4
    released = c.trim()
    assert released == sum(C.class_size(n) for n in sizes) == before["cached_bytes"]
    s = check_invariants(c)
    assert s["cached_blocks"] == 0 and s["cached_bytes"] == 0
    assert s["trims"] == 1 and s["evictions"] == before["evictions"]
    assert s["capacity"] == s["in_use"] == C.class_size(50000)
    assert c.trim() == 0 and c.stats()["trims"] == 2
    hits = s["hits"]
    b = c.alloc(5000)                              # nothing cached: a miss
    assert c.stats()["hits"] == hits
    c.free(b)
    c.free(live)


def test_reset_refused_while_a_block_lives():
    c = C()
    b = c.alloc(10000)
    for x in [c.alloc(20000) for _ in range(2)]:
        c.free(x)
    before = snapshot(c)
    with pytest.raises(pgo.AllocatorError, match="1 block"):
        c.reset()
    assert snapshot(c) == before                   # nothing changed (the cache kept its blocks)
    arr = c.empty(100)
    c.free(b)
    with pytest.raises(pgo.AllocatorError):
        c.reset()
    del arr
    c.reset()
    s = check_invariants(c)
    assert s["resets"] == 1 and s["cached_blocks"] == 0 and s["capacity"] == 0


# -- misuse ------------------------------------------------------------------------

def test_double_free_changes_nothing():
    c = C()
    b = c.alloc(9000)
    keep = c.alloc(9000)
    c.free(b)
    before = snapshot(c)
    with pytest.raises(pgo.AllocatorError, match="double free"):
        c.free(b)
    assert snapshot(c) == before
    again = c.alloc(9000)                          # the cached block, once
    other = c.alloc(9000)
    assert again.address != other.address != keep.address
    for x in (again, other, keep):
        c.free(x)
    check_invariants(c)


def test_foreign_blocks_are_refused_and_change_nothing():
    c, d = C(), C()
    mine = c.alloc(5000)
    theirs = d.alloc(5000)
    slab = pgo.SlabAllocator(64)
    sb = slab.alloc(64)
    before = snapshot(c)
    with pytest.raises(pgo.AllocatorError, match="belongs to <CacheAllocator"):
        c.free(theirs)
    with pytest.raises(pgo.AllocatorError, match="belongs to <SlabAllocator"):
        c.free(sb)
    with pytest.raises(TypeError):
        c.free(bytearray(10))
    with memoryview(mine):
        with pytest.raises(pgo.AllocatorError, match="view"):
            c.free(mine)
    assert snapshot(c) == before
    arr = c.empty(10)
    before = snapshot(c)
    with pytest.raises(TypeError):
        c.free(arr)
    with pytest.raises(pgo.AllocatorError, match="backs a numpy array"):
        c.free(arr.base)
    assert snapshot(c) == before
    del arr
    d.free(theirs)
    slab.free(sb)
    c.free(mine)
    check_invariants(c)


# -- out of memory ------------------------------------------------------------------

@pytest.mark.parametrize("which", [0, 1], ids=["record", "memory"])
def test_oom_with_nothing_cached(which):
    c = C()
    keep = c.alloc(5000)
    fill(keep, 9)
    before = snapshot(c)
    _memory._inject_oom(which)
    with pytest.raises(MemoryError, match=r"10,240 bytes for a 10,000-byte request"):
        c.alloc(10000)
    assert not _memory._oom_armed()
    after = snapshot(c)
    assert after["failed"] == before["failed"] + 1
    for key in ("in_use", "capacity", "live_blocks", "allocations", "frees", "requested",
                "lost", "cached_blocks", "cached_bytes", "hits"):
        assert after[key] == before[key], key
    assert holds(keep, 9)
    b = c.alloc(10000)                              # usable again
    fill(b, 1)
    c.free(b)
    c.free(keep)
    check_invariants(c)


@pytest.mark.parametrize("which", ["record", "memory", "table"])
def test_system_refusal_gives_cached_blocks_back_and_retries(which):
    # The cache docs: "If the system refuses a fresh block, everything cached
    # is given back and the request tried again, so the cache never makes an
    # allocation fail that would succeed without it."  Whichever system
    # allocation of the miss is refused -- the block's record, its memory, or
    # a bigger live table -- memory held in the cache must be offered first.
    c = C()
    live = [c.alloc(1) for _ in range(63 if which == "table" else 0)]
    cached = c.alloc(40000)                         # over 4x a 1-byte request's class
    c.free(cached)
    if which == "table":
        live.append(c.alloc(1))                    # 64 live: the next request grows the table
    assert c.stats()["cached_blocks"] == 1
    _memory._inject_oom(1 if which == "memory" else 0)
    b = c.alloc(100000)                             # a larger class: a miss
    assert not _memory._oom_armed()
    fill(b, 5)
    s = check_invariants(c)
    assert s["cached_blocks"] == 0 and s["cached_bytes"] == 0
    assert s["live_blocks"] == len(live) + 1
    c.free(b)
    for x in live:
        c.free(x)


def test_oom_message_does_not_claim_an_empty_cache_when_it_has_blocks():
    c = C()
    x = c.alloc(10000)
    c.free(x)
    # Both system allocations of the miss (and of its retry) fail.
    _memory._inject_oom(0)
    try:
        c.alloc(100000)
    except MemoryError as e:
        cached = c.stats()["cached_blocks"]
        assert cached == 0 or "nothing cached" not in str(e), (cached, str(e))


def test_oom_leaves_no_record_behind():
    # A refused block must not leave a record in the live table: freeing
    # and reallocating afterwards behaves as if the failure never happened.
    c = C()
    for _ in range(20):
        _memory._inject_oom(1)
        with pytest.raises(MemoryError):
            c.alloc(70000)
    _memory._inject_oom(-1)
    s = check_invariants(c)
    assert s["live_blocks"] == 0 and s["capacity"] == 0 and s["failed"] == 20
    b = c.alloc(70000)
    c.free(b)
    assert c.stats()["cached_blocks"] == 1


# -- prefault and huge pages ----------------------------------------------------------

def minflt():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def touch_faults(block, nbytes):
    """Minor faults taken by writing one byte in every page of the block."""
    pages = nbytes // PAGE
    data = b"\x01" * pages
    with memoryview(block) as mv:
        before = minflt()
        mv[:pages * PAGE:PAGE] = data
        return minflt() - before


def faults_are_counted():
    """Fresh anonymous memory is counted one fault per page here (or close)."""
    import mmap
    n = 2 << 20
    m = mmap.mmap(-1, n)
    try:
        before = minflt()
        m[::PAGE] = b"\x01" * (n // PAGE)
        return minflt() - before >= (n // PAGE) // 2
    finally:
        m.close()


needs_fault_counts = pytest.mark.skipif(
    pgo.DEBUG_BUILD or not faults_are_counted(),
    reason="the test build fills (so touches) every block it hands out" if pgo.DEBUG_BUILD
    else "minor faults are not counted per page here")


# 64 MiB: more than glibc's largest mmap threshold, so every block of this
# size is a fresh mapping, never memory some earlier test already touched.
# NOTE: big blocks here are all this size.  A block of 4 to 32 MiB can come
# from malloc's heap once glibc has raised its mmap threshold, and the
# MADV_HUGEPAGE it gets stays on that heap memory after it is freed: a
# later small buffer there would be huge-page eligible (test_hugepages.py
# checks that small ones are not).
FRESH = 64 << 20


@needs_fault_counts
@pytest.mark.parametrize("hugepages", [True, False])
def test_prefault_makes_first_touch_fault_free(hugepages):
    control = C(prefault=False, hugepages=True).alloc(FRESH)
    # Fresh memory costs a fault per page, or per huge page: 32 at least.
    assert touch_faults(control, FRESH) >= 16
    c = C(prefault=True, hugepages=hugepages)
    b = c.alloc(FRESH)
    assert touch_faults(b, FRESH) < 8
    c.free(b)
    small = c.alloc((3 << 20) + 12345)
    assert touch_faults(small, (3 << 20) + 12345) < 8
    c.free(small)


THP = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode():
    try:
        text = THP.read_text()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")]


def vm_flags(address):
    """The VmFlags of the /proc/self/smaps mapping that holds `address`."""
    inside = False
    for line in pathlib.Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and all(ch in "0123456789abcdef-" for ch in head):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= address < hi
        elif inside and line.startswith("VmFlags:"):
            return set(line.split()[1:])
    return None


needs_thp = pytest.mark.skipif(thp_mode() not in ("always", "madvise"),
                               reason="transparent huge pages are off on this machine")


@needs_thp
def test_hugepages_true_advises_big_blocks():
    c = C(hugepages=True)
    b = c.alloc(FRESH)
    assert "hg" in vm_flags(b.address)
    c.free(b)


@needs_thp
def test_hugepages_false_advises_no_huge_pages():
    # hugepages=False must undo the MADV_HUGEPAGE that the system allocation
    # gave the block: its mapping is marked "nh" (MADV_NOHUGEPAGE), not "hg".
    c = C(hugepages=False)
    b = c.alloc(FRESH)
    fill(b, 0x42)
    assert holds(b, 0x42)
    flags = vm_flags(b.address)
    assert "hg" not in flags and "nh" in flags, flags
    c.free(b)


@needs_thp
@needs_fault_counts
def test_hugepages_false_first_touch_faults_every_page():
    c = C(hugepages=False)
    b = c.alloc(FRESH)
    assert touch_faults(b, FRESH) >= (FRESH // PAGE) // 2   # 4 KiB pages, not 2 MiB ones
    c.free(b)


def test_hugepages_false_blocks_work():
    c = C(hugepages=False)
    blocks = [c.alloc(n) for n in (5000, 1 << 20, FRESH)]
    for i, b in enumerate(blocks):
        fill(b, i + 10)
    for i, b in enumerate(blocks):
        assert holds(b, i + 10)
        c.free(b)
    assert "hugepages=False" in repr(c)
    check_invariants(c)


# -- a Hypothesis state machine ---------------------------------------------------------

# A few sizes that share classes, a few that do not, so hits, misses and
# evictions all happen.
SIZES = st.one_of(st.sampled_from([0, 1, 4096, 4097, 4608, 6000, 9000, 9216, 70000, 65536]),
                  st.integers(1, 300000))


class CacheMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.c = C(max_cached_bytes=256 << 10)
        self.live = {}                             # address -> (Block, seed, n)
        self.seed = 0
        self.block_size = {}                       # address -> size of the block made there

    @rule(n=SIZES)
    def alloc(self, n):
        misses = self.c.stats()["misses"]
        b = self.c.alloc(n)
        assert b.address % PAGE == 0 and b.nbytes == n
        assert b.address not in self.live
        if self.c.stats()["misses"] > misses:
            self.block_size[b.address] = C.class_size(n)
        else:
            # A cached block: its own class's, or one at most 4x larger.
            assert C.class_size(n) <= self.block_size[b.address] <= 4 * C.class_size(n)
        self.seed += 1
        fill(b, self.seed)
        self.live[b.address] = (b, self.seed, n)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free(self, data):
        addr = data.draw(st.sampled_from(sorted(self.live)))
        b, seed, n = self.live.pop(addr)
        assert holds(b, seed)
        self.c.free(b)
        with pytest.raises(pgo.AllocatorError):
            self.c.free(b)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def rewrite(self, data):
        addr = data.draw(st.sampled_from(sorted(self.live)))
        b, _, n = self.live[addr]
        self.seed += 1
        fill(b, self.seed)
        self.live[addr] = (b, self.seed, n)

    @rule()
    def trim(self):
        cached = self.c.stats()["cached_bytes"]
        assert self.c.trim() == cached
        assert self.c.stats()["cached_blocks"] == 0

    @invariant()
    def no_overlap_and_contents(self):
        spans = sorted((a, a + self.block_size[a]) for a in self.live)
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert end <= start
        for b, seed, n in self.live.values():
            if n:
                assert b[0] == seed & 0xFF and b[n - 1] == seed & 0xFF and b[n // 2] == seed & 0xFF

    @invariant()
    def stats_match_the_model(self):
        s = check_invariants(self.c)
        assert s["live_blocks"] == len(self.live)
        assert s["in_use"] == sum(self.block_size[a] for a in self.live)
        assert s["requested"] == sum(max(n, 1) for _, _, n in self.live.values())

    def teardown(self):
        for b, seed, _ in self.live.values():
            assert holds(b, seed)
            self.c.free(b)
        s = check_invariants(self.c)
        assert s["live_blocks"] == 0 and s["in_use"] == 0


TestCacheMachine = CacheMachine.TestCase
TestCacheMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])


class HeadroomCacheMachine(CacheMachine):
    # The same traffic under the peak bound: check_invariants holds live +
    # cached within the headroom after every step.
    def __init__(self):
        super().__init__()
        self.c = C(max_cached_bytes=256 << 10, headroom_percent=20)


TestHeadroomCacheMachine = HeadroomCacheMachine.TestCase
TestHeadroomCacheMachine.settings = TestCacheMachine.settings


# -- threads -----------------------------------------------------------------------------

def test_threads_share_a_cache():
    c = C(max_cached_bytes=4 << 20)
    handoff = queue.Queue()
    errors, mismatches, counts = [], [], []
    deadline = time.monotonic() + 2.0

    def work(tid):
        rng = random.Random(tid)
        mine = []
        n_ops = 0
        try:
            while time.monotonic() < deadline:
                n = rng.choice([1, 5000, 9000, 70000, rng.randint(1, 400000)])
                seed = rng.randrange(1, 256)
                if rng.random() < 0.3:
                    arr = c.empty(max(n // 8, 1), dtype=np.int64)
                    arr[:] = seed
                    mine.append(("arr", arr, seed))
                else:
                    b = c.alloc(n)
                    fill(b, seed)
                    mine.append(("blk", b, seed))
                n_ops += 1
                while len(mine) > 8:
                    kind, obj, s = mine.pop(rng.randrange(len(mine)))
                    if rng.random() < 0.3:
                        handoff.put((kind, obj, s))    # freed by whichever thread takes it
                        continue
                    release(kind, obj, s)
                try:
                    release(*handoff.get_nowait())
                except queue.Empty:
                    pass
            for item in mine:
                release(*item)
            counts.append(n_ops)
        except BaseException as e:                 # reported below, not lost in the thread
            errors.append(repr(e))

    def release(kind, obj, seed):
        if kind == "arr":
            if not (obj == seed).all():
                mismatches.append(seed)
        else:
            if not holds(obj, seed):
                mismatches.append(seed)
            c.free(obj)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    while not handoff.empty():
        release(*handoff.get_nowait())
    assert not errors, errors
    assert not mismatches
    assert len(counts) == 4 and min(counts) > 0
    s = check_invariants(c)
    assert s["live_blocks"] == 0 and s["in_use"] == 0
    assert s["allocations"] == s["frees"] >= sum(counts)
    assert s["hits"] > 0
    assert s["hits"] + s["misses"] == s["allocations"]
