"""BufferPool and ObjectPool: size classes, reuse, misuse, buffers that
still have views on them, the bounds, allocator-backed pools and threads.

``view.obj`` is the backing object (a ``bytearray`` or a pgo ``Block``) a
memoryview from ``get_buffer`` was cut from, so reuse is checked by the
identity of the backing; an ObjectPool's reuse by the identity of the
object.
"""

import gc
import sys
import threading

import numpy as np
import pytest

import pgo

MIB = 1 << 20
MAX_CLASS = 16 * MIB
BUFFER_KEYS = {"hits", "misses", "hit_rate", "bytes_pooled", "buffers_pooled", "in_use",
               "evictions", "unpooled", "still_exported", "max_bytes"}
OBJECT_KEYS = {"hits", "misses", "hit_rate", "idle", "in_use", "reset_failures", "dropped"}


def check_buffer_invariants(pool):
    s = pool.stats()
    assert BUFFER_KEYS <= s.keys()
    assert 0 <= s["bytes_pooled"] <= s["max_bytes"]
    assert s["buffers_pooled"] >= 0 and s["in_use"] >= 0
    lookups = s["hits"] + s["misses"]
    assert s["hit_rate"] == pytest.approx(s["hits"] / lookups if lookups else 0.0)
    return s


def allocator_pools():
    return [
        pytest.param(lambda: pgo.SlabAllocator(4096, threadsafe=True), id="slab"),
        pytest.param(lambda: pgo.ArenaAllocator(threadsafe=True), id="arena"),
    ]


# =============================================================================
# BufferPool
# =============================================================================

# -- get_buffer ---------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 7, 255, 256, 257, 4096, 5000, MIB + 1])
def test_get_buffer_is_a_writable_view_of_exactly_n_bytes(n):
    pool = pgo.BufferPool()
    view = pool.get_buffer(n)
    assert isinstance(view, memoryview)
    assert len(view) == n and view.nbytes == n
    assert not view.readonly
    view[:] = b"\xab" * n
    assert view[0] == 0xAB and view[n - 1] == 0xAB
    assert bytes(view) == b"\xab" * n
    assert pool.stats()["in_use"] == 1
    pool.put_buffer(view)
    assert pool.stats()["in_use"] == 0


@pytest.mark.parametrize("n, backing", [
    (1, 256), (100, 256), (256, 256), (257, 512), (512, 512), (513, 1024),
    (4096, 4096), (4097, 8192), (MIB, MIB), (MIB + 1, 2 * MIB),
    (MAX_CLASS - 1, MAX_CLASS), (MAX_CLASS, MAX_CLASS),
])
def test_size_classes(n, backing):
    pool = pgo.BufferPool()
    view = pool.get_buffer(n)
    assert len(view) == n
    assert len(view.obj) == backing
    s = pool.stats()
    assert (s["misses"], s["hits"], s["unpooled"]) == (1, 0, 0)
    pool.put_buffer(view)
    s = check_buffer_invariants(pool)
    assert s["bytes_pooled"] == backing and s["buffers_pooled"] == 1


def test_over_16_mib_is_unpooled_and_never_pooled():
    pool = pgo.BufferPool(max_bytes=1 << 30)
    n = MAX_CLASS + 1
    view = pool.get_buffer(n)
    assert len(view) == n
    backing = view.obj
    s = pool.stats()
    assert (s["unpooled"], s["hits"], s["misses"]) == (1, 0, 0)
    pool.put_buffer(view)
    s = check_buffer_invariants(pool)
    assert s["bytes_pooled"] == 0 and s["buffers_pooled"] == 0 and s["in_use"] == 0
    view2 = pool.get_buffer(n)
    assert view2.obj is not backing
    s = pool.stats()
    assert (s["unpooled"], s["hits"], s["misses"]) == (2, 0, 0)
    pool.put_buffer(view2)


# -- reuse --------------------------------------------------------------------

def test_put_then_get_same_class_reuses_the_backing():
    pool = pgo.BufferPool()
    view = pool.get_buffer(300)
    view[:3] = b"abc"
    backing = view.obj
    pool.put_buffer(view)
    view2 = pool.get_buffer(400)             # same class (512)
    assert view2.obj is backing
    assert len(view2) == 400
    s = check_buffer_invariants(pool)
    assert (s["hits"], s["misses"]) == (1, 1)
    assert s["hit_rate"] == pytest.approx(0.5)
    assert s["bytes_pooled"] == 0 and s["buffers_pooled"] == 0 and s["in_use"] == 1
    pool.put_buffer(view2)


def test_different_class_is_a_miss():
    pool = pgo.BufferPool()
    view = pool.get_buffer(300)              # 512
    backing = view.obj
    pool.put_buffer(view)
    view2 = pool.get_buffer(200)             # 256
    assert view2.obj is not backing
    view3 = pool.get_buffer(600)             # 1024
    assert view3.obj is not backing
    s = pool.stats()
    assert (s["hits"], s["misses"]) == (0, 3)
    assert s["buffers_pooled"] == 1 and s["bytes_pooled"] == 512
    pool.put_buffer(view2)
    pool.put_buffer(view3)


def test_buffer_context_manager_gives_back_on_exit_and_on_error():
    pool = pgo.BufferPool()
    with pool.buffer(1000) as view:
        assert len(view) == 1000
        view[:] = bytes(1000)
        backing = view.obj
        assert pool.stats()["in_use"] == 1
    s = pool.stats()
    assert s["in_use"] == 0 and s["buffers_pooled"] == 1
    with pytest.raises(RuntimeError):
        with pool.buffer(1000) as view:
            assert view.obj is backing
            raise RuntimeError("boom")
    s = pool.stats()
    assert s["in_use"] == 0 and s["buffers_pooled"] == 1 and s["hits"] == 1


# -- misuse -------------------------------------------------------------------

def test_put_twice_is_a_pool_error_and_changes_nothing():
    pool = pgo.BufferPool()
    view = pool.get_buffer(100)
    pool.put_buffer(view)
    before = pool.stats()
    with pytest.raises(pgo.PoolError):
        pool.put_buffer(view)
    assert pool.stats() == before
    # And the pool still works: the buffer is handed out once, not twice.
    a = pool.get_buffer(100)
    b = pool.get_buffer(100)
    assert a.obj is not b.obj
    pool.put_buffer(a)
    pool.put_buffer(b)


@pytest.mark.parametrize("make", [
    pytest.param(lambda pool: memoryview(bytearray(256)), id="bytearray-view"),
    pytest.param(lambda pool: memoryview(bytearray(256))[:100], id="sliced-view"),
    pytest.param(lambda pool: pgo.BufferPool().get_buffer(100), id="other-pool"),
])
def test_put_of_a_foreign_view_is_a_pool_error(make):
    pool = pgo.BufferPool()
    keep = pool.get_buffer(100)
    foreign = make(pool)
    before = pool.stats()
    with pytest.raises(pgo.PoolError):
        pool.put_buffer(foreign)
    assert pool.stats() == before
    pool.put_buffer(keep)


def test_put_of_a_slice_of_our_view_is_a_pool_error():
    pool = pgo.BufferPool()
    view = pool.get_buffer(100)
    part = view[:50]
    before = pool.stats()
    with pytest.raises(pgo.PoolError):
        pool.put_buffer(part)
    assert pool.stats() == before
    del part
    pool.put_buffer(view)
    assert pool.stats()["buffers_pooled"] == 1


# -- buffers that still have views on them ----------------------------------

def _exported_holders():
    return [
        pytest.param(lambda v: np.frombuffer(v, dtype=np.uint8), id="numpy"),
        pytest.param(lambda v: v[10:20], id="memoryview-slice"),
        pytest.param(lambda v: memoryview(v), id="memoryview-of-view"),
    ]


@pytest.mark.parametrize("hold", _exported_holders())
def test_buffer_with_a_live_view_is_not_reused(hold):
    pool = pgo.BufferPool()
    view = pool.get_buffer(300)
    backing = view.obj
    view[:] = b"\x01" * 300
    holder = hold(view)
    pool.put_buffer(view)
    s = check_buffer_invariants(pool)
    assert s["still_exported"] == 1
    assert s["buffers_pooled"] == 0 and s["bytes_pooled"] == 0 and s["in_use"] == 0
    view2 = pool.get_buffer(300)
    assert view2.obj is not backing
    s = pool.stats()
    assert (s["hits"], s["misses"]) == (0, 2)
    # The holder still sees the old buffer, not the new user's writes.
    view2[:] = b"\x55" * 300
    assert holder[0] == 1 and backing[0] == 1
    # Dropping the holder later does not bring the backing back.
    del holder
    gc.collect()
    pool.put_buffer(view2)
    view3 = pool.get_buffer(300)
    assert view3.obj is not backing
    pool.put_buffer(view3)


def test_view_dropped_before_put_is_reused():
    pool = pgo.BufferPool()
    view = pool.get_buffer(300)
    backing = view.obj
    arr = np.frombuffer(view, dtype=np.uint8)
    arr[:] = 7
    del arr
    pool.put_buffer(view)
    s = pool.stats()
    assert s["still_exported"] == 0 and s["buffers_pooled"] == 1
    assert pool.get_buffer(300).obj is backing


# -- max_bytes ----------------------------------------------------------------

def test_max_bytes_bounds_pooled_bytes_and_counts_evictions():
    pool = pgo.BufferPool(max_bytes=4096)
    views = [pool.get_buffer(1024) for _ in range(6)]    # 6 x 1 KiB
    for i, v in enumerate(views):
        pool.put_buffer(v)
        s = check_buffer_invariants(pool)
        assert s["bytes_pooled"] <= 4096
        assert s["bytes_pooled"] == min(i + 1, 4) * 1024
    s = pool.stats()
    assert s["evictions"] == 2 and s["buffers_pooled"] == 4
    # A class too big to fit at all is always evicted.
    big = pool.get_buffer(8192)
    pool.put_buffer(big)
    s = check_buffer_invariants(pool)
    assert s["evictions"] == 3 and s["bytes_pooled"] == 4096


def test_max_bytes_mixed_sizes_never_exceeded():
    pool = pgo.BufferPool(max_bytes=10_000)
    sizes = [100, 3000, 700, 5000, 256, 2000, 9000, 1, 4097]
    for _ in range(3):
        views = [pool.get_buffer(n) for n in sizes]
        for v in views:
            pool.put_buffer(v)
            assert check_buffer_invariants(pool)["bytes_pooled"] <= 10_000
    assert pool.stats()["evictions"] > 0


def test_max_bytes_zero_pools_nothing():
    pool = pgo.BufferPool(max_bytes=0)
    for _ in range(3):
        view = pool.get_buffer(100)
        backing = view.obj
        pool.put_buffer(view)
        s = pool.stats()
        assert s["bytes_pooled"] == 0 and s["buffers_pooled"] == 0
        assert pool.get_buffer(100).obj is not backing
    s = pool.stats()
    assert s["hits"] == 0 and s["evictions"] == 3


def test_clear_returns_bytes_and_empties():
    pool = pgo.BufferPool()
    views = [pool.get_buffer(n) for n in (100, 300, 300, 5000)]
    backings = [v.obj for v in views]
    for v in views:
        pool.put_buffer(v)
    assert pool.stats()["bytes_pooled"] == 256 + 512 + 512 + 8192
    assert pool.clear() == 256 + 512 + 512 + 8192
    s = pool.stats()
    assert s["bytes_pooled"] == 0 and s["buffers_pooled"] == 0
    assert pool.clear() == 0
    view = pool.get_buffer(300)
    assert all(view.obj is not b for b in backings)
    assert pool.stats()["hits"] == 0
    pool.put_buffer(view)


# -- argument checks ----------------------------------------------------------

@pytest.mark.parametrize("n", [0, -1, True, False, 1.0, 256.0, "256", None])
def test_get_buffer_bad_sizes(n):
    pool = pgo.BufferPool()
    before = pool.stats()
    with pytest.raises(ValueError):
        pool.get_buffer(n)
    with pytest.raises(ValueError):
        with pool.buffer(n):
            pass
    assert pool.stats() == before


@pytest.mark.parametrize("m", [-1, True, 1.5, "1"])
def test_max_bytes_bad_values(m):
    with pytest.raises(ValueError):
        pgo.BufferPool(max_bytes=m)


# -- allocator-backed pools ---------------------------------------------------

@pytest.mark.parametrize("make_alloc", allocator_pools())
def test_allocator_backed_pool(make_alloc):
    alloc = make_alloc()
    pool = pgo.BufferPool(allocator=alloc)

    # Reuse by Block identity, sized by class.
    view = pool.get_buffer(300)
    block = view.obj
    assert len(block) == 512 and len(view) == 300 and not view.readonly
    view[:] = b"\x11" * 300
    pool.put_buffer(view)
    assert block.exports == 0
    view = pool.get_buffer(500)
    assert view.obj is block
    assert bytes(view[:300]) == b"\x11" * 300           # contents: last user's
    s = pool.stats()
    assert (s["hits"], s["misses"]) == (1, 1)
    pool.put_buffer(view)

    # Different class: a different block.
    view = pool.get_buffer(2000)
    assert view.obj is not block and len(view.obj) == 2048
    pool.put_buffer(view)

    # A live numpy array over it: not reused.
    view = pool.get_buffer(4000)
    held_block = view.obj
    arr = np.frombuffer(view, dtype=np.uint8)
    pool.put_buffer(view)
    assert held_block.exports != 0
    assert pool.stats()["still_exported"] == 1
    view = pool.get_buffer(4000)
    assert view.obj is not held_block
    pool.put_buffer(view)

    # A memoryview slice: not reused either.
    view = pool.get_buffer(100)
    held_block2 = view.obj
    part = view[1:5]
    pool.put_buffer(view)
    assert pool.stats()["still_exported"] == 2
    view = pool.get_buffer(100)
    assert view.obj is not held_block2
    pool.put_buffer(view)

    assert alloc.stats()["live_blocks"] > 0
    del arr, part, held_block, held_block2, block, view, pool
    gc.collect()
    assert alloc.stats()["live_blocks"] == 0


@pytest.mark.parametrize("make_alloc", allocator_pools())
def test_allocator_backed_pool_clear_and_eviction_free_blocks(make_alloc):
    alloc = make_alloc()
    pool = pgo.BufferPool(max_bytes=2048, allocator=alloc)
    views = [pool.get_buffer(1024) for _ in range(4)]
    assert alloc.stats()["live_blocks"] == 4
    for v in views:
        pool.put_buffer(v)
    del views, v
    gc.collect()
    assert pool.stats()["evictions"] == 2
    assert alloc.stats()["live_blocks"] == 2
    assert pool.clear() == 2048
    gc.collect()
    assert alloc.stats()["live_blocks"] == 0


# -- threads ------------------------------------------------------------------

def _run_threads(target, n_threads):
    errors = []
    start = threading.Barrier(n_threads)

    def wrap(tid):
        try:
            start.wait()
            target(tid)
        except BaseException as e:   # noqa: BLE001 -- reported below
            errors.append(e)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=wrap, args=(t,)) for t in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    if errors:
        raise errors[0]


@pytest.mark.parametrize("make_alloc", [
    pytest.param(lambda: None, id="bytearray"),
    pytest.param(lambda: pgo.SlabAllocator(4096, threadsafe=True), id="slab"),
])
def test_buffer_pool_threads(make_alloc):
    alloc = make_alloc()
    pool = pgo.BufferPool(allocator=alloc)
    sizes = (1, 200, 256, 300, 1000, 2048, 4096) if alloc is not None else \
        (1, 200, 300, 1000, 4096, 5000, 20000)
    n_threads, cycles = 4, 2000
    patterns = {(t, n): bytes([t + 1]) * n for t in range(n_threads) for n in sizes}
    mismatches = []

    def work(tid):
        for i in range(cycles):
            n = sizes[(i * 7 + tid) % len(sizes)]
            pat = patterns[tid, n]
            view = pool.get_buffer(n)
            view[:] = pat
            if view.tobytes() != pat or view[0] != tid + 1:
                mismatches.append((tid, i, n))
            pool.put_buffer(view)

    _run_threads(work, n_threads)
    assert mismatches == []
    s = check_buffer_invariants(pool)
    assert s["hits"] + s["misses"] == n_threads * cycles
    assert s["in_use"] == 0 and s["still_exported"] == 0 and s["unpooled"] == 0
    assert s["hits"] > 0


# =============================================================================
# ObjectPool
# =============================================================================

class Thing:
    made = 0

    def __init__(self):
        Thing.made += 1
        self.data = []
        self.owner = None
        self.resets = 0


def reset_thing(t):
    t.data.clear()
    t.resets += 1


def test_object_pool_reuse_is_a_hit():
    pool = pgo.ObjectPool(Thing)
    a = pool.get()
    assert isinstance(a, Thing)
    s = pool.stats()
    assert OBJECT_KEYS <= s.keys()
    assert (s["hits"], s["misses"], s["in_use"], s["idle"]) == (0, 1, 1, 0)
    pool.put(a)
    s = pool.stats()
    assert (s["in_use"], s["idle"]) == (0, 1)
    b = pool.get()
    assert b is a
    s = pool.stats()
    assert (s["hits"], s["misses"]) == (1, 1)
    assert s["hit_rate"] == pytest.approx(0.5)
    c = pool.get()                     # pool empty again: a new one
    assert c is not a
    assert pool.stats()["misses"] == 2
    pool.put(b)
    pool.put(c)
    assert pool.stats()["idle"] == 2


def test_reset_called_on_put():
    pool = pgo.ObjectPool(Thing, reset=reset_thing)
    a = pool.get()
    a.data.append(1)
    assert a.resets == 0
    pool.put(a)
    assert a.resets == 1 and a.data == []
    assert pool.get() is a


def test_reset_raising_drops_the_object():
    calls = []

    def bad_reset(obj):
        calls.append(obj)
        raise RuntimeError("cannot reset")

    pool = pgo.ObjectPool(Thing, reset=bad_reset)
    a = pool.get()
    pool.put(a)                        # does not raise
    assert calls == [a]
    s = pool.stats()
    assert s["reset_failures"] == 1 and s["idle"] == 0 and s["in_use"] == 0
    b = pool.get()
    assert b is not a
    s = pool.stats()
    assert (s["hits"], s["misses"]) == (0, 2)
    with pytest.raises(pgo.PoolError):   # a is no longer ours
        pool.put(a)


def test_max_size_bounds_idle_and_counts_dropped():
    pool = pgo.ObjectPool(Thing, max_size=2)
    objs = [pool.get() for _ in range(5)]
    for o in objs:
        pool.put(o)
    s = pool.stats()
    assert s["idle"] == 2 and s["dropped"] == 3 and s["in_use"] == 0
    got = {id(pool.get()) for _ in range(3)}
    assert len(got & {id(o) for o in objs[:2]}) == 2


def test_max_size_zero_keeps_nothing():
    pool = pgo.ObjectPool(Thing, max_size=0)
    a = pool.get()
    pool.put(a)
    s = pool.stats()
    assert s["idle"] == 0 and s["dropped"] == 1
    assert pool.get() is not a


def test_object_put_twice_is_a_pool_error_and_changes_nothing():
    resets = []
    pool = pgo.ObjectPool(Thing, reset=resets.append)
    a = pool.get()
    pool.put(a)
    before = pool.stats()
    with pytest.raises(pgo.PoolError):
        pool.put(a)
    assert pool.stats() == before
    assert resets == [a]                 # not reset a second time
    # Handed out once only.
    x, y = pool.get(), pool.get()
    assert x is not y


@pytest.mark.parametrize("foreign", [
    pytest.param(lambda: Thing(), id="new-object"),
    pytest.param(lambda: pgo.ObjectPool(Thing).get(), id="other-pool"),
    # None: a lookup that defaulted to None once let it through.
    pytest.param(lambda: None, id="None"),
])
def test_object_put_foreign_is_a_pool_error(foreign):
    pool = pgo.ObjectPool(Thing)
    keep = pool.get()
    before = pool.stats()
    with pytest.raises(pgo.PoolError):
        pool.put(foreign())
    assert pool.stats() == before
    pool.put(keep)


def test_take_context_manager():
    pool = pgo.ObjectPool(Thing, reset=reset_thing)
    with pool.take() as a:
        assert pool.stats()["in_use"] == 1
        a.data.append(1)
    assert a.data == [] and a.resets == 1
    assert pool.stats()["idle"] == 1
    with pytest.raises(KeyError):
        with pool.take() as b:
            assert b is a
            raise KeyError("x")
    s = pool.stats()
    assert s["idle"] == 1 and s["in_use"] == 0 and a.resets == 2


def test_factory_raising_propagates_and_leaves_nothing_out():
    def factory():
        raise OSError("no")

    pool = pgo.ObjectPool(factory)
    with pytest.raises(OSError):
        pool.get()
    assert pool.stats()["in_use"] == 0


@pytest.mark.parametrize("kwargs, exc", [
    (dict(factory=None), TypeError),
    (dict(factory=42), TypeError),
    (dict(factory=Thing, reset=42), TypeError),
    (dict(factory=Thing, reset="x"), TypeError),
    (dict(factory=Thing, max_size=-1), ValueError),
    (dict(factory=Thing, max_size=True), ValueError),
    (dict(factory=Thing, max_size=1.0), ValueError),
    (dict(factory=Thing, max_size="3"), ValueError),
])
def test_object_pool_validation(kwargs, exc):
    with pytest.raises(exc):
        pgo.ObjectPool(**kwargs)


def test_object_pool_threads():
    pool = pgo.ObjectPool(Thing, reset=reset_thing, max_size=3)
    n_threads, cycles = 4, 2000
    clashes = []

    def work(tid):
        for i in range(cycles):
            obj = pool.get()
            if obj.owner is not None:
                clashes.append((tid, i, obj.owner))
            obj.owner = tid
            obj.data.append(tid)
            if obj.data != [tid] or obj.owner != tid:
                clashes.append((tid, i, "data"))
            obj.owner = None
            pool.put(obj)

    _run_threads(work, n_threads)
    assert clashes == []
    s = pool.stats()
    assert s["hits"] + s["misses"] == n_threads * cycles
    assert s["in_use"] == 0 and s["reset_failures"] == 0
    assert s["idle"] <= 3
    assert s["hits"] > 0
