"""AdaptiveAllocator: the backend it picks in each phase of a workload, blocks
made before a switch, misuse, numpy through a Router, threads, stats.

Counts and correctness only: the speed of each choice is measured by
benchmarks/bench_adaptive.py, never asserted here.
"""

import ctypes
import gc
import random
import re
import threading

import numpy as np
import pytest

import pgo
from pgo._core import _memory, adaptive
from pgo._core.adaptive import AdaptiveAllocator

A = AdaptiveAllocator
CANARY = 8 if pgo.DEBUG_BUILD else 0
KiB = 1 << 10
MiB = 1 << 20


def pattern(n, seed):
    period = bytes((seed * 29 + i * 13 + 3) & 0xFF for i in range(256))
    return (period * (n // 256 + 1))[:n]


def write(block, data):
    with memoryview(block) as mv:
        mv[:] = data


def snapshot(a):
    st = a.stats()
    del st["contention"]
    return st


def assert_unchanged(a, before, failed=0):
    now = snapshot(a)
    assert now.pop("failed") == before["failed"] + failed
    assert now == {k: v for k, v in before.items() if k != "failed"}


def switches(a):
    return [(d["from"], d["to"]) for d in a.stats()["decisions"]]


def assert_usable(a, keep=()):
    """New blocks work and overlap nothing; `keep` ((block, bytes)) still hold."""
    fresh = [a.alloc(n) for n in (0, 1, 16, 40, 300, 5000, 70000)]
    for i, b in enumerate(fresh):
        write(b, pattern(b.nbytes, 100 + i))
    blocks = fresh + [k for k, _ in keep]
    ranges = sorted((b.address, b.address + max(b.nbytes, 1)) for b in blocks)
    for (_, end), (start, _) in zip(ranges, ranges[1:]):
        assert end <= start, "blocks overlap"
    for i, b in enumerate(fresh):
        assert bytes(b) == pattern(b.nbytes, 100 + i)
    for b, data in keep:
        assert bytes(b) == data


# -- the phases -------------------------------------------------------------------------

def test_a_phased_workload_gets_the_right_backend_in_each_phase():
    rng = random.Random(7)
    a = A(256)
    kept = []                                   # (block, bytes, backend it was made by)

    def keep(block, backend):
        data = pattern(block.nbytes, len(kept))
        write(block, data)
        kept.append((block, data, backend))

    # 1. Churn of one size: a pool of 64 blocks of 256 bytes, replaced at random.
    pool = [a.alloc(256) for _ in range(64)]
    for _ in range(5 * 256):
        pool[rng.randrange(64)] = a.alloc(256)
    assert a.backend == "slab" and a.stats()["slab_size"] == 256
    keep(pool.pop(), "slab")
    keep(pool.pop(), "slab")
    del pool
    # 2. Scoped temporaries of 4-64 KiB, eight at a time, freed together.
    for _ in range(5 * 256 // 8):
        scope = [a.alloc(rng.randrange(4 * KiB, 64 * KiB + 1)) for _ in range(8)]
        for b in scope:
            b[0] = 1
        del scope, b
    assert a.backend == "arena"
    keep(a.alloc(5000), "arena")
    # 3. Long-lived blocks of varied sizes: made, and kept.
    lasting = [a.alloc(rng.randrange(16, 8 * KiB)) for _ in range(5 * 256)]
    assert a.backend == "system"
    keep(lasting.pop(), "system")
    # 4. Varied sizes made and freed in no order: a pool of 256, replaced at random.
    pool = [a.alloc(rng.randrange(64, 16 * KiB)) for _ in range(256)]
    for _ in range(6 * 256):
        pool[rng.randrange(256)] = a.alloc(rng.randrange(64, 16 * KiB))
    assert a.backend == "cache"
    keep(pool.pop(), "cache")
    del pool

    st = a.stats()
    assert switches(a) == [("arena", "slab"), ("slab", "arena"), ("arena", "system"),
                           ("system", "cache")]
    assert st["switches"] == 4
    rules = [d["rule"] for d in st["decisions"]]
    assert rules == ["one size", "freed together", "few frees", "varied sizes reused"]
    windows = [d["window"] for d in st["decisions"]]
    assert windows == sorted(windows) and windows[0] == 1       # the first vote is taken at once
    for d in st["decisions"]:
        assert re.search(r"\d+%", d["reason"]) and str(d["allocations"]) in d["reason"]
    assert all(st["allocations_by_backend"][name] > 0 for name in adaptive.BACKENDS)

    # Blocks made before the switches still hold their bytes, say which
    # backend made them, and free into it.
    places = {"slab": "slab segment", "arena": "arena region", "system": "system block",
              "cache": "cache block"}
    for block, data, backend in kept:
        assert bytes(block) == data
        assert places[backend] in repr(block)
    for block, data, backend in kept:
        a.free(block)
    kept.clear()
    del lasting, block
    st = a.stats()
    assert st["in_use"] == 0 and st["live_blocks"] == 0
    assert st["allocations"] == st["frees"]


def test_the_c_level_phases_get_their_backends_and_free_everything():
    a = A(512)
    got = adaptive._run_phases(a, 8192, seed=3)
    assert got["mismatches"] == 0
    assert [p[0] for p in got["phases"]] == list(adaptive.PHASES)
    # Each phase's backend was switched to, in order (the slab is the first vote).
    tos = [to for _, to in switches(a)]
    assert [t for t in tos if t in adaptive.PHASES][:1] == ["slab"]
    positions = [tos.index(name) for name in adaptive.PHASES]
    assert positions == sorted(positions)
    st = a.stats()
    assert st["in_use"] == 0 and st["allocations"] == st["frees"] == 4 * 8192
    assert st["malloced_bytes"] == st["cached_bytes"] <= st["max_cached_bytes"]


@pytest.mark.parametrize("fixed", adaptive.BACKENDS)
def test_a_fixed_backend_never_switches(fixed):
    a = A(512, fixed=fixed)
    assert a.fixed == fixed and a.backend == fixed
    got = adaptive._run_phases(a, 4096, seed=5)
    assert got["mismatches"] == 0
    st = a.stats()
    assert st["switches"] == 0 and st["decisions"] == [] and st["backend"] == fixed
    # What the backend cannot serve goes to malloc; nothing to the other two.
    served = {k for k, v in st["allocations_by_backend"].items() if v}
    assert served <= {fixed, "system"} and fixed in served
    assert st["last_window"]["window"] == st["windows"] > 0
    assert st["in_use"] == 0


def test_votes_that_alternate_do_not_make_it_flap():
    a = A(128)
    held = []
    for w in range(12):
        if w % 2 == 0:                          # a window of one size, churned
            pool = [a.alloc(64) for _ in range(8)]
            for i in range(120):
                pool[i % 8] = a.alloc(64)
            del pool
        else:                                   # a window of long-lived varied blocks
            held += [a.alloc(100 + 7 * i) for i in range(128)]
    # The first vote is taken at once (arena -> slab), and the first window
    # of varied sizes leaves the slab at once (it served none of them); after
    # that no two windows in a row agree on a change, and nothing moves.
    assert switches(a) == [("arena", "slab"), ("slab", "system")]
    assert "enough to switch at once" in a.stats()["decisions"][1]["reason"]
    assert a.stats()["windows"] == 12


def test_the_window_end_records_its_counts():
    a = A(64)
    blocks = [a.alloc(48) for _ in range(64)]
    last = a.stats()["last_window"]
    assert last["window"] == 1 and last["allocations"] == 64 and last["frees"] == 0
    assert last["modal"] == 64 and last["modal_size"] == 48 and last["to"] == "slab"
    del blocks
    for _ in range(64):
        a.alloc(48)                             # alloc, then drop: one free each
    last = a.stats()["last_window"]
    assert last["window"] == 2 and last["frees"] >= 63 and last["short_lived"] == last["frees"]
    assert last["freed_together"] == 64         # the burst of 64 frees, counted at the next alloc


# -- sizes and alignment ------------------------------------------------------------------

@pytest.mark.parametrize("fixed", adaptive.BACKENDS)
def test_every_size_is_served_and_aligned(fixed):
    a = A(64, fixed=fixed)
    blocks = []
    for n in (0, 1, 15, 16, 17, 255, 256, 4095, 4096, 4097, 65536, 300 * KiB, 3 * MiB):
        b = a.alloc(n)
        assert b.address % 16 == 0 and b.nbytes == n
        write(b, pattern(n, n & 0xFF))
        blocks.append(b)
    assert len({b.address for b in blocks}) == len(blocks)
    for b in blocks:
        assert bytes(b) == pattern(b.nbytes, b.nbytes & 0xFF)
    del blocks, b
    assert a.stats()["in_use"] == 0


@pytest.mark.parametrize("fixed", adaptive.BACKENDS)
def test_a_zero_size_block_made_last_frees(fixed):
    # In the arena a zero-size block made last starts where the bump is.
    a = A(64, fixed=fixed)
    keep = a.alloc(40)
    for _ in range(3):
        addr = a._c_alloc_address(0)
        a._free_address(addr)
        b = a.alloc(0)
        a.free(b)
        a.alloc(0)                              # dropped at once
    st = a.stats()
    assert st["allocations"] == st["frees"] + 1 == 10 and st["live_blocks"] == 1
    del keep
    assert a.stats()["in_use"] == 0


def test_a_zero_size_block_at_a_regions_very_end_frees_in_that_region():
    # Fill a 1 MiB region to 16 bytes short of its end (each block takes a
    # 16-byte header); a zero-size block there must not point into the next.
    a = A(fixed="arena")
    keep = [a.alloc(262144) for _ in range(3)]
    keep.append(a.alloc(1048576 - 4 * 16 - 3 * 262144 - 16 - (16 if pgo.DEBUG_BUILD else 0)))
    z = a.alloc(0)
    a.free(z)
    del keep
    st = a.stats()
    assert st["live_blocks"] == 0 and st["in_use"] == 0


def test_alignment_beyond_16_is_refused():
    a = A()
    before = snapshot(a)
    for align in (32, 64, 4096):
        with pytest.raises(ValueError, match="aligns blocks to 16 bytes"):
            a.alloc(8, align)
    assert_unchanged(a, before, failed=3)
    for align in (1, 2, 8, 16):
        assert a.alloc(8, align).address % align == 0
    arr = a.empty(100)                          # numpy's default asks for at most 16 here
    assert arr.ctypes.data % 16 == 0


def test_impossible_sizes_are_memory_errors():
    a = A()
    before = snapshot(a)
    for n in (1 << 40, 1 << 50, (1 << 63) - 2):
        with pytest.raises(MemoryError, match=f"{n:,}"):
            a.alloc(n)
    assert_unchanged(a, before, failed=3)
    with pytest.raises(MemoryError):
        a.empty((1 << 31, 1 << 31))
    with pytest.raises(MemoryError, match="overflows"):
        a._c_calloc_address(1 << 33, 1 << 33)
    assert_usable(a)


def test_c_level_calloc_is_zeroed():
    a = A(64)
    for n in (10, 100, 5000):
        raw = a._c_alloc_address(n)
        ctypes.memset(raw, 0xEE, n)
        a._free_address(raw)
    addrs = [a._c_calloc_address(n, 8) for n in (10, 100, 5000)]
    for addr, n in zip(addrs, (10, 100, 5000)):
        assert ctypes.string_at(addr, 8 * n) == bytes(8 * n)
        a._free_address(addr)


def test_max_bytes_bounds_what_it_takes_from_the_system():
    a = A(64, max_bytes=256 * KiB)              # less than one segment: all from malloc
    held = []
    with pytest.raises(MemoryError, match="10,000 bytes") as exc:
        for i in range(100):
            held.append(a.alloc(10_000))
            write(held[-1], pattern(10_000, i))
    assert "max_bytes=262,144" in str(exc.value)
    before = snapshot(a)
    with pytest.raises(MemoryError, match="10,000"):
        a.alloc(10_000)
    assert_unchanged(a, before, failed=1)
    st = a.stats()
    assert st["in_use"] <= st["capacity"] <= 256 * KiB and st["segments"] == 0
    for i, b in enumerate(held):
        assert bytes(b) == pattern(10_000, i)
    del held, b
    assert len(a.alloc(10_000)) == 10_000


def test_out_of_memory_leaves_it_as_it_was():
    a = A(64, fixed="system")
    keep = a.alloc(100)
    write(keep, pattern(100, 1))
    before = snapshot(a)
    _memory._inject_oom(0)
    with pytest.raises(MemoryError, match="5,000"):
        a.alloc(5000)
    assert_unchanged(a, before, failed=1)
    b = A(64)                                   # the arena commits its first segment
    _memory._inject_oom(0)
    x = b.alloc(100)                            # refused a segment: served by malloc
    assert "system block" in repr(x) and b.stats()["segments"] == 0
    assert_usable(a, keep=[(keep, pattern(100, 1))])


# -- misuse -------------------------------------------------------------------------------

@pytest.mark.parametrize("fixed", adaptive.BACKENDS)
def test_double_free_at_c_level(fixed):
    a = A(64, fixed=fixed)
    keep = a.alloc(64)
    write(keep, pattern(64, 2))
    addr = a._c_alloc_address(64)
    other = a._c_alloc_address(64)
    a._free_address(addr)
    before = snapshot(a)
    with pytest.raises(pgo.AllocatorError, match="double free|not allocated here"):
        a._free_address(addr)
    assert_unchanged(a, before)
    x, y = a._c_alloc_address(64), a._c_alloc_address(64)
    assert x != y
    for p in (x, y, other):
        a._free_address(p)
    assert_usable(a, keep=[(keep, pattern(64, 2))])


@pytest.mark.parametrize("fixed", ["slab", "arena", "cache"])
def test_double_free_names_the_block(fixed):
    # The slab, arena and cache keep freed memory, so a second free is told
    # from a foreign pointer (a system block went back to malloc: it is not
    # ours any more, and is reported as such).
    a = A(64, fixed=fixed)
    addr = a._c_alloc_address(64)
    a._free_address(addr)
    with pytest.raises(pgo.AllocatorError, match="double free of the block at") as exc:
        a._free_address(addr)
    assert repr(a) in str(exc.value)
    b = a.alloc(64)
    a.free(b)
    with pytest.raises(pgo.AllocatorError, match="double free"):
        a.free(b)


@pytest.mark.parametrize("fixed", adaptive.BACKENDS)
def test_interior_pointers(fixed):
    a = A(64, fixed=fixed)
    b = a.alloc(64)
    write(b, pattern(64, 4))
    for offset in (1, 8, 16, 48, 63):
        before = snapshot(a)
        with pytest.raises(pgo.AllocatorError, match="inside a block"):
            a._free_address(b.address + offset)
        assert_unchanged(a, before)
    assert bytes(b) == pattern(64, 4)
    assert_usable(a, keep=[(b, pattern(64, 4))])


def test_foreign_pointers():
    a = A(64)
    b = a.alloc(64)
    write(b, pattern(64, 5))
    other = A(64)
    theirs = other.alloc(64)
    arr = np.zeros(64, dtype=np.uint8)
    beyond = b.address + 64 * MiB              # reserved, never committed
    for address in (theirs.address, arr.ctypes.data, id(object()), beyond, 4096):
        before, before_other = snapshot(a), snapshot(other)
        with pytest.raises(pgo.AllocatorError, match="not allocated here"):
            a._free_address(address)
        assert_unchanged(a, before)
        assert_unchanged(other, before_other)
    with pytest.raises(pgo.AllocatorError, match=r"belongs to <AdaptiveAllocator"):
        a.free(theirs)
    assert_usable(a, keep=[(b, pattern(64, 5))])


def test_free_null_does_nothing():
    a = A()
    before = snapshot(a)
    a._free_address(0)
    assert_unchanged(a, before)


@pytest.mark.parametrize("fixed", adaptive.BACKENDS)
def test_a_python_owned_block_cannot_be_freed_from_c(fixed):
    a = A(64, fixed=fixed)
    b = a.alloc(100)
    arr = a.empty(50)
    for address in (b.address, arr.ctypes.data):
        before = snapshot(a)
        with pytest.raises(pgo.AllocatorError, match="owned by a Python Block"):
            a._free_address(address)
        assert_unchanged(a, before)
    a.free(b)
    del arr
    assert a.live_blocks == 0 and a.stats()["in_use"] == 0


def test_reset_with_live_blocks_is_refused_and_changes_nothing():
    a = A(64)
    b = a.alloc(300)
    write(b, pattern(300, 6))
    arr = a.zeros(1000)
    view = memoryview(b)
    before = snapshot(a)
    with pytest.raises(pgo.AllocatorError, match=r"2 block\(s\) or array\(s\)"):
        a.reset()
    assert_unchanged(a, before)
    assert bytes(b) == pattern(300, 6) and not arr.any()
    view.release()
    del b, arr, view
    gc.collect()
    a.reset()
    assert a.stats()["resets"] == 1
    assert_usable(a)


def test_reset_releases_c_level_blocks_and_starts_over():
    a = A(64)
    addrs = [a._c_alloc_address(n) for n in (10, 300, 5000, 70000, 1 << 20)]
    for _ in range(64):
        a._c_alloc_address(48)                  # a slab after the window
    st = a.stats()
    assert st["live_blocks"] == 0 and st["in_use"] > 0 and st["allocations"] == 69
    a.reset()
    st = a.stats()
    assert st["in_use"] == 0 and st["frees"] == st["allocations"] == 69
    assert st["malloced_bytes"] == 0 and st["free_segments"] == st["segments"]
    assert st["capacity"] == st["segments"] * adaptive.SEGMENT_BYTES
    assert len(addrs) == 5
    assert_usable(a)


# -- test build: fills and canaries -----------------------------------------------------

debug_only = pytest.mark.skipif(not pgo.DEBUG_BUILD, reason="fills exist only in the test build")


@debug_only
@pytest.mark.parametrize("fixed", adaptive.BACKENDS)
def test_fills_on_alloc_and_free(fixed):
    a = A(64, fixed=fixed)
    keep = a.alloc(8)                           # keeps an arena region (and cache lists) in use
    for n in (1, 64, 1000):
        b = a.alloc(n)
        assert bytes(b) == b"\xa5" * n
        write(b, b"\x11" * n)
        addr = b.address
        a.free(b)
        if fixed != "system":                   # still the allocator's memory
            assert ctypes.string_at(addr, n) == b"\x5a" * n
    assert bytes(a.alloc(64)) == b"\xa5" * 64
    del keep


@debug_only
@pytest.mark.parametrize("fixed", adaptive.BACKENDS)
def test_canary_catches_a_one_byte_overflow(fixed):
    a = A(64, fixed=fixed)
    b = a.alloc(24)
    ctypes.memset(b.address + 24, 0, 1)
    with pytest.raises(pgo.AllocatorError, match="past the end"):
        a.free(b)
    ctypes.memset(b.address + 24, 0xA5, 1)
    a.free(b)
    addr = a._c_alloc_address(40)
    ctypes.memset(addr + 40, 0, 1)
    with pytest.raises(pgo.AllocatorError, match="past the end"):
        a._free_address(addr)
    ctypes.memset(addr + 40, 0xA5, 1)
    a._free_address(addr)


# -- numpy, threads -------------------------------------------------------------------------

def test_numpy_arrays_through_a_router():
    a = A(64, threadsafe=True)
    with pgo.use(pgo.Router([pgo.SizeClass(0, None, a)])):
        before = [np.arange(n) for n in (1, 10, 100, 1000)]    # the arena's first window
        for _ in range(150):
            tmp = np.empty(32)                  # one size, churned: the slab
        del tmp
        assert a.backend == "slab"
        after = [np.full(n, 7.0) for n in (3, 30, 300, 3000, 300_000)]
        assert all(pgo.owner(x) is a for x in before + after)
        x = np.arange(1000, dtype=np.int64)
        x.resize(5000, refcheck=False)          # realloc: moves, keeps the data
        assert (x[:1000] == np.arange(1000)).all() and pgo.owner(x) is a
        z = np.zeros((100, 100))
        assert not z.any()
    for n, arr in zip((1, 10, 100, 1000), before):
        assert (arr == np.arange(n)).all()
    assert a.live_blocks == len(before) + len(after) + 2
    del before, after, x, z, arr
    st = a.stats()
    assert st["live_blocks"] == 0 and st["in_use"] == 0


def test_a_router_needs_it_threadsafe():
    with pytest.raises(ValueError, match="threadsafe=True"):
        pgo.Router([pgo.SizeClass(0, None, A())])


def test_threads_share_it_at_the_c_level():
    a = A(256, threadsafe=True)
    results = [None] * 4

    def work(i):
        results[i] = adaptive._run_phases(a, 4096, seed=i + 1)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r is not None and r["mismatches"] == 0 for r in results)
    st = a.stats()
    assert st["allocations"] == st["frees"] == 4 * 4 * 4096
    assert st["in_use"] == 0 and st["threadsafe"]


def test_threads_share_it_through_python_blocks():
    a = A(128, threadsafe=True)
    errors = []

    def work(seed):
        rng = random.Random(seed)
        held = []
        try:
            for i in range(2000):
                b = a.alloc(rng.choice((32, 32, 32, 700, 9000)))
                data = pattern(min(b.nbytes, 64), seed + i)
                b[:len(data)] = data
                held.append((b, data))
                if len(held) > 20:
                    b, data = held.pop(rng.randrange(len(held)))
                    assert bytes(b[:len(data)]) == data
                    a.free(b)
        except Exception as e:                  # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    st = a.stats()
    assert st["in_use"] == 0 and st["allocations"] == st["frees"] == 8000


# -- stats and construction -----------------------------------------------------------------

def test_stats_contents():
    a = A(64)
    blocks = [a.alloc(100) for _ in range(70)]
    st = a.stats()
    for key in ("allocator", "in_use", "peak", "capacity", "allocations", "frees", "live_blocks",
                "requested", "lost", "fragmentation", "utilization", "backend", "switches",
                "allocations_by_backend", "decisions", "last_window", "window", "windows",
                "fixed", "cached_bytes", "segments", "malloced_bytes", "max_bytes"):
        assert key in st, key
    assert st["allocator"] == "AdaptiveAllocator"
    assert sum(st["allocations_by_backend"].values()) == st["allocations"] == 70
    # The first window's 64 on the arena (header + size rounded to 16), the
    # next 6 in 112-byte slab slots (+ 16 bytes of canary room in the test build).
    stride = 16 + 112 + (16 if CANARY else 0)
    assert st["requested"] == 7000 and st["lost"] == 64 * (128 - 100) + 6 * (stride - 100)
    assert 0 < st["in_use"] <= st["capacity"] and st["peak"] >= st["in_use"]
    assert st["live_blocks"] == 70 and st["windows"] == 1 and st["backend"] == "slab"
    d = st["decisions"][0]
    assert set(d) >= {"window", "from", "to", "rule", "reason", "allocations", "frees",
                      "modal", "modal_size", "short_lived", "freed_together", "large"}
    assert (d["window"], d["from"], d["to"], d["slab_size"]) == (1, "arena", "slab", 112)
    del blocks
    st = a.stats()
    assert st["in_use"] == 0 and st["peak"] > 0 and st["frees"] == 70


def test_constructor_arguments():
    with pytest.raises(ValueError, match="at least 64"):
        A(63)
    with pytest.raises(ValueError, match="one of system, slab, arena, cache"):
        A(fixed="stack")
    with pytest.raises(TypeError):
        A(4096, 0)                              # max_bytes is keyword-only
    a = A(100, max_bytes=1 << 30, fixed="cache", threadsafe=True)
    assert (a.window, a.max_bytes, a.fixed, a.threadsafe) == (100, 1 << 30, "cache", True)
    assert repr(a) == ("<AdaptiveAllocator backend=cache window=100 fixed=cache switches=0 "
                       "threadsafe=True>")
    assert A().window == 4096 and A().backend == "arena" and A().fixed is None
    assert adaptive.THRESHOLDS["one_size_share"] == 0.80
