"""The public API of the four allocators, used the way it is meant to be.

Most tests run once per allocator family (the ``kind`` fixture in
conftest.py); family-specific behaviour (stack frames, arena chunk reuse,
slab size classes) is tested at the end.  Misuse is in test_misuse.py.
"""

import gc
import re
import sys
import warnings

import numpy as np
import pytest

import pgo

ALIGNS = [1 << k for k in range(13)]          # 1 .. 4096
STATS_KEYS = {
    "allocator", "in_use", "peak", "capacity", "allocations", "frees", "resets",
    "failed", "live_blocks", "requested", "lost", "fragmentation", "utilization",
    "contention", "threadsafe",
}
CLASSES = {
    "stack": pgo.StackAllocator,
    "linear": pgo.LinearAllocator,
    "arena": pgo.ArenaAllocator,
    "slab": pgo.SlabAllocator,
}


def write(block, data):
    with memoryview(block) as mv:
        mv[:] = data


def pattern(n, seed):
    return bytes((seed * 31 + i * 7 + 1) & 0xFF for i in range(n))


def max_align(a):
    return a.align if isinstance(a, (pgo.SlabAllocator, pgo.AdaptiveAllocator)) else 4096


def check_invariants(a):
    st = a.stats()
    assert 0 <= st["in_use"] <= st["capacity"]
    assert st["peak"] >= st["in_use"]
    assert st["allocations"] >= st["frees"]
    assert st["allocations"] - st["frees"] == st["live_blocks"] >= 0
    assert 0.0 <= st["fragmentation"] <= 1.0
    assert 0.0 <= st["utilization"] <= 1.0
    assert st["lost"] >= 0 and st["requested"] >= 0
    return st


# -- module surface -----------------------------------------------------------

def test_public_names():
    for name in pgo.__all__:
        assert hasattr(pgo, name), name
    assert issubclass(pgo.AllocatorError, pgo.PgoError)
    for cls in CLASSES.values():
        assert issubclass(cls, pgo.Allocator)
    assert isinstance(pgo.DEBUG_BUILD, bool)


def test_base_classes_cannot_be_made_directly():
    with pytest.raises(TypeError):
        pgo.Allocator()
    with pytest.raises(TypeError):
        pgo.Block()


@pytest.mark.parametrize("cls,args", [
    (pgo.StackAllocator, (4096,)),
    (pgo.LinearAllocator, (4096,)),
    (pgo.ArenaAllocator, (4096, 0)),
    (pgo.SlabAllocator, (64,)),
])
def test_threadsafe_is_keyword_only(cls, args):
    with pytest.raises(TypeError):
        cls(*args, True)
    assert cls(*args).threadsafe is False
    a = cls(*args, threadsafe=True)
    assert a.threadsafe is True
    assert a.stats()["threadsafe"] is True


# -- alloc and Block ----------------------------------------------------------

def test_alloc_returns_a_writable_block(make):
    a = make()
    b = a.alloc(100)
    assert type(b) is pgo.Block
    assert len(b) == b.nbytes == 100
    assert b.allocator is a
    assert b.freed is False and b.exports == 0
    assert isinstance(b.address, int) and b.address != 0
    mv = memoryview(b)
    assert mv.obj is b
    assert mv.nbytes == 100 and not mv.readonly and mv.format == "B"
    assert b.exports == 1
    data = pattern(100, 1)
    mv[:] = data
    mv.release()
    assert b.exports == 0
    assert bytes(b) == data
    other = a.alloc(100)
    write(other, pattern(100, 2))
    assert bytes(b) == data
    assert re.search(r"100 bytes at 0x[0-9a-f]+", repr(b))
    assert repr(a) in repr(b)


def test_block_views_share_memory(make):
    a = make()
    b = a.alloc(64)
    arr = np.frombuffer(b, dtype=np.uint8)
    arr[:] = np.arange(64, dtype=np.uint8)
    assert bytes(b) == bytes(range(64))
    with memoryview(b) as mv:
        with mv[8:16] as part:
            part[:] = b"\xff" * 8
    assert arr[8:16].tolist() == [255] * 8
    assert np.asarray(b).ctypes.data == b.address


def test_block_attributes_are_read_only(make):
    b = make().alloc(8)
    for name in ("allocator", "nbytes", "address", "exports", "freed"):
        with pytest.raises(AttributeError):
            setattr(b, name, None)


@pytest.mark.parametrize("align", ALIGNS)
def test_every_pointer_is_aligned(make, align):
    a = make()
    if align > max_align(a):
        # The generic slab aligns to 64 (test_slab_alignment_per_size_class
        # covers the rest); more than a slab aligns to is refused.
        with pytest.raises(ValueError):
            a.alloc(8, align)
        return
    blocks = []
    for n in (0, 1, 3, 24, 100, 1000):
        blocks.append(a.alloc(n, align))
        blocks.append(a.empty(n // 8 + 1, dtype=np.float64, align=align).base)
    for b in blocks:
        assert b.address % align == 0, (b.nbytes, align, hex(b.address))
    del blocks, b
    a.reset()


def test_default_alignments(make):
    a = make()
    assert a.alloc(1).address % min(16, max_align(a)) == 0
    for shape in (1, (3, 5), 0):
        assert a.empty(shape, dtype=np.uint8).ctypes.data % min(64, max_align(a)) == 0
        assert a.zeros(shape, dtype=np.int16).ctypes.data % min(64, max_align(a)) == 0


def test_alloc_zero_is_a_valid_block(make):
    a = make()
    b = a.alloc(0)
    assert len(b) == 0 and b.nbytes == 0
    assert bytes(b) == b""
    with memoryview(b) as mv:
        assert mv.nbytes == 0
    assert a.live_blocks == 1
    del b
    assert a.live_blocks == 0


def test_alloc_zero_has_an_address_of_its_own(make):
    # README: "alloc(0) returns a valid zero-length Block with an address of
    # its own" -- distinct from every other live block.
    a = make()
    blocks = [a.alloc(0), a.alloc(0), a.alloc(1), a.alloc(0)]
    addresses = [b.address for b in blocks]
    assert len(set(addresses)) == len(addresses), [hex(x) for x in addresses]


def test_alloc_accepts_index_integers(make):
    a = make()
    assert len(a.alloc(np.int64(12))) == 12
    assert len(a.alloc(True)) == 1


# -- empty / zeros ------------------------------------------------------------

SHAPES = [(), 0, 5, (3, 4), [2, 3], (2, 0, 2), (1,) * 32]
DTYPES = [
    None, bool, np.int8, np.uint16, "int32", np.int64, np.float16, "f4", float,
    np.complex128, "S5", "U3", "M8[ns]", "V7",
    np.dtype([("x", "<i4"), ("y", "<f8")]), (np.int16, (2,)),
]


def test_empty_and_zeros_shapes_dtypes_orders(make):
    a = make()
    for shape in SHAPES:
        for dtype in DTYPES:
            for order in ("C", "F"):
                for fn, ref in ((a.empty, np.empty), (a.zeros, np.zeros)):
                    arr = fn(shape, dtype=dtype, order=order)
                    want = ref(shape, dtype=dtype, order=order)
                    where = (fn.__name__, shape, dtype, order)
                    assert type(arr) is np.ndarray, where
                    assert arr.shape == want.shape and arr.dtype == want.dtype, where
                    if arr.size:
                        assert arr.strides == want.strides, where
                    assert arr.flags.c_contiguous == want.flags.c_contiguous, where
                    assert arr.flags.f_contiguous == want.flags.f_contiguous, where
                    assert arr.flags.writeable and not arr.flags.owndata, where
                    assert type(arr.base) is pgo.Block, where
                    assert arr.base.allocator is a, where
                    assert arr.base.nbytes == arr.nbytes, where
                    if arr.nbytes:
                        assert arr.ctypes.data == arr.base.address, where
                    if fn == a.zeros:
                        assert arr.tobytes() == want.tobytes(), where
    del arr
    assert a.live_blocks == 0


def test_empty_arrays_hold_their_values(make):
    a = make()
    x = a.empty((4, 8), dtype=np.int32)
    y = a.empty((4, 8), dtype=np.int32, order="F")
    x[...] = np.arange(32).reshape(4, 8)
    y[...] = x * 2
    z = a.zeros(8, dtype=np.int32)
    np.add(x[0], y[1], out=z)
    assert z.tolist() == (np.arange(8) + 2 * np.arange(8, 16)).tolist()
    assert x.sum() == sum(range(32)) and y.sum() == 2 * sum(range(32))


def test_empty_accepts_a_numpy_integer_shape(make):
    # Like np.empty, which takes any integer-like scalar as a 1-d shape.
    a = make()
    assert a.empty(np.int64(3), dtype=np.uint8).shape == (3,)
    assert a.zeros((np.int32(2), np.uint8(3)), dtype=np.uint8).shape == (2, 3)


def test_dtype_given_as_a_list_of_fields(make):
    # np.dtype's list-of-fields spec is unhashable; it must still work.
    a = make()
    spec = [("x", "<i4"), ("y", "<f8")]
    arr = a.zeros(3, dtype=spec)
    assert arr.dtype == np.dtype(spec) and arr.shape == (3,)
    arr["y"] = 1.5
    assert a.empty((2, 2), dtype=spec, order="F").dtype == np.dtype(spec)


def test_empty_default_dtype_is_float64(make):
    a = make()
    assert a.empty(3).dtype == np.float64
    assert a.zeros((2, 2)).dtype == np.float64


def test_zeros_large_block_is_zeroed():
    # Blocks from 1 MiB up are zeroed with the GIL released: another path.
    for a in (pgo.StackAllocator(3 << 20), pgo.LinearAllocator(3 << 20), pgo.ArenaAllocator(1 << 16)):
        dirty = a.empty(1 << 18, dtype=np.float64)
        dirty[:] = 1.0
        del dirty
        if isinstance(a, pgo.LinearAllocator):
            a.reset()
        big = a.zeros(1 << 18, dtype=np.float64)
        assert big.nbytes == 2 << 20
        assert not big.any()


# -- reference counts and lifetimes --------------------------------------------

def test_reference_counts(make):
    # Counts go into a variable before the assert: pytest's assertion
    # rewriting would hold an extra reference to a subexpression.
    a = make()
    rc_alloc = sys.getrefcount(a)
    arr = a.empty(10)
    rc = sys.getrefcount(arr)
    assert rc == 2
    rc = sys.getrefcount(arr.base)
    assert rc == 2                 # the array's reference + the argument
    base = arr.base
    rc = sys.getrefcount(base)
    assert rc == 3
    del base
    view = arr[2:]
    assert view.base is arr
    rc = sys.getrefcount(arr)
    assert rc == 3
    b = a.alloc(8)
    rc = sys.getrefcount(b)
    assert rc == 2
    rc = sys.getrefcount(a)
    assert rc == rc_alloc + 2      # each live Block holds its allocator
    del arr, view, b
    rc = sys.getrefcount(a)
    assert rc == rc_alloc


def test_no_reference_leaks(make):
    a = make()
    dt = np.dtype([("a", "<i2"), ("b", "<f4")])   # a fresh object: not in any cache
    rc_dt, rc_a = sys.getrefcount(dt), sys.getrefcount(a)
    for i in range(200):
        x = a.empty(3, dtype=dt)
        y = a.zeros((2, 2), dtype=dt, order="F")
        b = a.alloc(i % 17)
        with memoryview(b) as mv:
            bytes(mv)
        del x, y, b
    rc_after = sys.getrefcount(dt), sys.getrefcount(a)
    assert rc_after == (rc_dt, rc_a)
    assert a.live_blocks == 0


def test_arrays_keep_the_allocator_alive(make):
    a = make()
    arr = a.zeros(16, dtype=np.int64)
    block = a.alloc(32)
    mv = memoryview(block)
    del a, block
    gc.collect()
    owner = arr.base.allocator
    assert owner is mv.obj.allocator
    assert owner.stats()["live_blocks"] == 2
    arr[:] = np.arange(16)
    mv[:] = b"\x07" * 32
    assert arr.sum() == sum(range(16)) and bytes(mv) == b"\x07" * 32
    del arr
    mv.release()
    del mv
    assert owner.live_blocks == 0


def test_views_keep_the_block_alive(make):
    a = make()
    arr = a.empty(100, dtype=np.int16)
    arr[:] = np.arange(100)
    view = arr[10:20]
    del arr
    gc.collect()
    assert a.live_blocks == 1
    assert view.tolist() == list(range(10, 20))
    del view
    assert a.live_blocks == 0


# -- stats ----------------------------------------------------------------------

def test_stats_keys_and_properties(make):
    a = make()
    keep = [a.alloc(10), a.empty(5)]
    st = a.stats()
    assert STATS_KEYS <= st.keys()
    assert st["allocator"] == type(a).__name__
    assert (a.capacity, a.in_use, a.peak, a.live_blocks, a.threadsafe) == (
        st["capacity"], st["in_use"], st["peak"], st["live_blocks"], st["threadsafe"])
    assert st["allocations"] == 2 and st["live_blocks"] == 2
    assert st["requested"] == 10 + 40
    assert st["contention"] == 0 and st["failed"] == 0
    check_invariants(a)
    del keep


def test_stats_invariants_over_rounds(make):
    a = make()
    allocations = 0
    for rnd in range(4):
        live, requested = [], 0
        for i in range(12):
            n = (rnd * 13 + i * 37) % 200
            if i % 3 == 0:
                live.append(a.empty(n, dtype=np.uint8))
            else:
                live.append(a.alloc(n, min(8 << (i % 4), max_align(a))))
            requested += n
            allocations += 1
            st = check_invariants(a)
            assert st["live_blocks"] == len(live)
            assert st["allocations"] == allocations
            assert st["requested"] == requested
        while live:
            live.pop(len(live) // 2)          # not in allocation order
            assert check_invariants(a)["live_blocks"] == len(live)
        st = check_invariants(a)
        assert st["frees"] == allocations
        assert st["peak"] > 0
        if not isinstance(a, pgo.LinearAllocator):
            assert st["in_use"] == 0
        a.reset()
        st = check_invariants(a)
        assert st["in_use"] == 0 and st["resets"] == rnd + 1
        assert st["requested"] == 0 and st["lost"] == 0
        assert st["allocations"] == st["frees"] == allocations


def test_peak_remembers_the_high_water_mark(make):
    a = make()
    big = a.alloc(800)
    high = a.in_use
    del big
    small = a.alloc(8)
    assert a.peak >= high and a.peak >= a.in_use
    del small


def test_reset_starts_over(make):
    a = make()
    first = a.alloc(16).address          # dropped at once
    more = [a.alloc(16) for _ in range(5)]
    del more
    a.reset()
    assert a.in_use == 0
    assert a.alloc(16).address == first


# -- free -------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["stack", "slab"])
def test_free(make):
    a = make()
    b = a.alloc(48)
    c = a.alloc(48)
    before = a.stats()
    a.free(c)
    assert c.freed is True
    st = a.stats()
    assert st["frees"] == before["frees"] + 1
    assert st["live_blocks"] == before["live_blocks"] - 1
    assert st["in_use"] < before["in_use"]
    assert "freed" in repr(c)
    with pytest.raises(pgo.AllocatorError):
        memoryview(c)
    a.free(b)
    assert a.live_blocks == 0 and a.in_use == 0
    del b, c                              # freed Blocks die without a second release
    assert a.stats()["frees"] == before["frees"] + 2


@pytest.mark.parametrize("kind", ["stack", "slab"])
def test_free_rejects_what_is_not_a_block(make):
    a = make()
    arr = a.empty(4)
    for thing in (arr, None, b"abc", bytearray(8), memoryview(bytearray(8)), 12):
        with pytest.raises(TypeError):
            a.free(thing)
    assert a.live_blocks == 1


@pytest.mark.parametrize("kind", ["linear", "arena"])
def test_no_individual_free(make):
    a = make()
    b = a.alloc(32)
    write(b, pattern(32, 3))
    before = a.stats()
    with pytest.raises(pgo.AllocatorError, match="no individual free"):
        a.free(b)
    assert a.stats() == before
    assert b.freed is False and bytes(b) == pattern(32, 3)
    del b
    assert a.live_blocks == 0


# -- threadsafe allocators, one thread --------------------------------------------

def test_threadsafe_allocator_single_thread(make):
    a = make(threadsafe=True)
    blocks = [a.alloc(i * 5) for i in range(20)]
    if isinstance(a, (pgo.StackAllocator, pgo.SlabAllocator)):
        a.free(blocks.pop())
    arrays = [a.zeros(i) for i in range(5)]
    del blocks, arrays
    st = check_invariants(a)
    assert st["live_blocks"] == 0
    assert st["contention"] == 0          # an uncontended lock never waits
    a.reset()


# -- StackAllocator ------------------------------------------------------------------

def test_stack_lifo_free_and_headers():
    st = pgo.StackAllocator(4096)
    hdr = st.stats()["header_bytes"]
    canary = st.stats()["canary_bytes"]      # 8 in the test build, else 0
    a = st.alloc(8, align=8)
    b = st.alloc(8, align=8)
    assert b.address - a.address == 8 + canary + hdr
    assert st.stats()["top"] == st.in_use == 2 * (8 + canary + hdr)
    st.free(b)
    st.free(a)
    assert st.stats()["top"] == 0


def test_stack_dropped_block_waits_for_the_blocks_above():
    st = pgo.StackAllocator(4096)
    a = st.alloc(100)
    b = st.alloc(100)
    a_range = (a.address, a.address + 100)
    top = st.stats()["top"]
    del a
    assert st.stats()["top"] == top           # b is above: a stays reserved
    c = st.alloc(100)
    assert c.address >= a_range[1]            # a's memory is not reused yet
    st.free(c)
    del b                                     # b and the dead a go together
    assert st.in_use == 0 and st.live_blocks == 0


def test_stack_frame_releases_dropped_blocks():
    st = pgo.StackAllocator(4096)
    keep = st.alloc(64)
    before = st.in_use
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with st.frame() as f:
            assert isinstance(f, pgo.StackFrame)
            x = st.empty(10)
            y = st.alloc(100)
            with st.frame() as inner:
                z = st.zeros(3)
                del z
            assert inner.live == 0
            del x, y
    assert f.live == 0
    assert st.in_use == before
    st.free(keep)


def test_stack_frame_keeps_referenced_blocks():
    st = pgo.StackAllocator(4096)
    with pytest.warns(ResourceWarning, match="1 block"):
        with st.frame() as f:
            kept = st.empty(10)
            dropped = st.alloc(16)
            del dropped
    assert f.live == 1
    kept[:] = 3.0
    assert st.live_blocks == 1 and st.in_use > 0
    del kept
    assert st.in_use == 0


def test_stack_exhaustion_and_recovery():
    st = pgo.StackAllocator(1024)
    blocks = []
    with pytest.raises(MemoryError):
        while True:
            blocks.append(st.alloc(100))
    assert st.in_use <= st.capacity
    while blocks:
        st.free(blocks.pop())
    assert len(st.alloc(900)) == 900


# -- LinearAllocator --------------------------------------------------------------------

def test_linear_bumps_without_headers():
    la = pgo.LinearAllocator(1024)
    a = la.alloc(10, align=1)
    b = la.alloc(10, align=1)
    assert b.address == a.address + 10
    assert la.in_use == la.stats()["top"] == 20
    c = la.alloc(1, align=16)
    assert c.address % 16 == 0
    del a, b, c
    assert la.in_use > 0                      # dropping frees nothing...
    la.reset()
    assert la.in_use == 0                     # ...reset does


def test_linear_exhaustion_and_recovery():
    la = pgo.LinearAllocator(1000)
    blocks = [la.alloc(100, align=1) for _ in range(10)]
    with pytest.raises(MemoryError):
        la.alloc(1, align=1)
    del blocks
    la.reset()
    assert len(la.alloc(1000, align=1)) == 1000


# -- ArenaAllocator ----------------------------------------------------------------------

def test_arena_chunk_is_reused_only_when_nothing_in_it_is_alive():
    ar = pgo.ArenaAllocator(4096)
    a = ar.alloc(100)
    b = ar.alloc(100)
    a_start = a.address
    del a
    c = ar.alloc(100)
    assert c.address >= b.address + 100       # a's bytes are not reused while b lives
    del b, c
    assert ar.in_use == 0 and ar.stats()["chunks_in_use"] == 0
    assert ar.alloc(100).address == a_start   # the whole chunk is free again


def test_arena_grows_by_chunks_and_big_requests_get_their_own():
    ar = pgo.ArenaAllocator(4096)
    blocks = [ar.alloc(1000) for _ in range(8)]
    st = ar.stats()
    assert st["chunks"] >= 2 and st["chunk_size"] == 4096
    assert st["capacity"] == st["chunks"] * 4096
    big = ar.alloc(10000)
    assert ar.stats()["capacity"] >= st["capacity"] + 10000
    write(big, pattern(10000, 5))
    assert bytes(big) == pattern(10000, 5)
    del blocks, big
    assert ar.in_use == 0 and ar.stats()["chunks_in_use"] == 0


def test_arena_steady_state_does_not_grow():
    ar = pgo.ArenaAllocator(4096)
    for _ in range(3):
        tmp = [ar.empty(50) for _ in range(5)]
        del tmp
    capacity = ar.capacity
    for _ in range(200):
        tmp = [ar.empty(50) for _ in range(5)]
        del tmp
    assert ar.capacity == capacity


def test_arena_max_bytes():
    ar = pgo.ArenaAllocator(4096, max_bytes=8192)
    assert ar.stats()["max_bytes"] == 8192
    x, y = ar.alloc(3000), ar.alloc(3000)
    with pytest.raises(MemoryError):
        ar.alloc(3000)
    assert ar.capacity <= 8192
    del x
    del y
    assert len(ar.alloc(3000)) == 3000


# -- SlabAllocator --------------------------------------------------------------------------

@pytest.mark.parametrize("block_size,align", [(1, 8), (8, 8), (9, 16), (24, 32), (64, 64), (100, 64), (5000, 64)])
def test_slab_natural_alignment(block_size, align):
    sl = pgo.SlabAllocator(block_size)
    assert sl.block_size == block_size and sl.align == align
    assert sl.stats()["stride"] % align == 0 and sl.stats()["stride"] >= block_size
    blocks = [sl.alloc(block_size, align) for _ in range(5)]
    assert all(b.address % align == 0 for b in blocks)


@pytest.mark.parametrize("block_size,align", [(1, None), (8, None), (64, 8)])
def test_slab_alloc_with_default_alignment(block_size, align):
    # alloc()'s default align=16 is more than these slabs align to (8, the
    # natural alignment of blocks up to 8 bytes, or asked for); a plain
    # alloc(n) must still work, as empty() does by defaulting to the
    # allocator's own alignment.
    sl = pgo.SlabAllocator(block_size, align=align)
    assert sl.empty(1, dtype=np.uint8).size == 1
    b = sl.alloc(block_size)
    assert len(b) == block_size and b.address % sl.align == 0


@pytest.mark.parametrize("block_size", [1, 7, 8, 24, 100, 4097])
def test_slab_alignment_per_size_class(block_size):
    for align in ALIGNS:
        sl = pgo.SlabAllocator(block_size, align=align, slots_per_slab=2)
        blocks = [sl.alloc(block_size, align) for _ in range(7)]     # three slabs
        blocks += [sl.alloc(0, align=align), sl.empty(1, dtype=np.uint8)]
        assert sl.stats()["slabs"] == 3
        for b in blocks:
            addr = b.address if isinstance(b, pgo.Block) else b.ctypes.data
            assert addr % align == 0, (block_size, align, hex(addr))
        with pytest.raises(ValueError):
            sl.alloc(1, align=align * 2)


def test_slab_slabs_double():
    sl = pgo.SlabAllocator(64, slots_per_slab=4)
    blocks = [sl.alloc(64) for _ in range(4 + 8 + 16)]
    st = sl.stats()
    assert st["slabs"] == 3
    assert st["capacity"] == 28 * st["stride"]
    assert st["free_slots"] == 0
    assert len({b.address for b in blocks}) == 28
    del blocks
    assert sl.stats()["free_slots"] == 28 and sl.in_use == 0


def test_slab_serves_any_size_up_to_block_size():
    sl = pgo.SlabAllocator(100)
    assert len(sl.alloc(100)) == 100
    assert sl.empty(12, dtype=np.float64).nbytes == 96
    with pytest.raises(ValueError, match="at most 100 bytes"):
        sl.alloc(101)
    with pytest.raises(ValueError):
        sl.empty(13, dtype=np.float64)
    assert sl.live_blocks == 0


def test_slab_free_slot_is_reused():
    sl = pgo.SlabAllocator(32, slots_per_slab=4)
    a = sl.alloc(32)
    address = a.address
    sl.free(a)
    assert sl.alloc(32).address == address    # dropped at once...
    assert sl.alloc(32).address == address    # ...and reused again


def test_arena_chunk_with_many_blocks_recycles_only_when_all_are_gone():
    # More blocks than a chunk's first block list holds (64), dropped in a
    # shuffled order: the chunk is reused exactly when the last one goes.
    import random

    ar = pgo.ArenaAllocator(1 << 16)
    blocks = [ar.alloc(24) for _ in range(1000)]
    assert ar.stats()["chunks"] == 1
    order = list(range(len(blocks)))
    random.Random(7).shuffle(order)
    for k, i in enumerate(order):
        blocks[i] = None
        assert (ar.in_use == 0) == (k == len(order) - 1)
    assert ar.live_blocks == 0
    again = ar.alloc(24)
    assert ar.stats()["chunks"] == 1 and ar.in_use > 0
    del again


def test_block_indexing_works_like_a_memoryview(make):
    a = make()
    b = a.alloc(16)
    b[:] = bytes(range(16))
    b[3] = 200
    assert b[3] == 200 and b[0] == 0 and bytes(b[4:8]) == bytes(range(4, 8))
    assert b.exports == 0                      # indexing leaves no view open
    part = b[8:]
    assert b.exports == 1 and len(part) == 8   # a slice is a view, and holds the block
    with pytest.raises((ValueError, TypeError)):
        b[0:2] = b"abc"                        # the block cannot grow
    part.release()
    assert b.exports == 0
    if isinstance(a, (pgo.StackAllocator, pgo.SlabAllocator)):
        a.free(b)


def test_slab_works_under_a_tight_address_space_limit():
    # The slab reserves 64 GiB of address space by default; where the system
    # allows less (ulimit -v, valgrind) it must reserve less, not fail.
    import os
    import resource
    import subprocess
    import sys
    import tempfile

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    code = ("import pgo\n"
            "s = pgo.SlabAllocator(64)\n"
            "blocks = [s.alloc(64) for _ in range(100_000)]\n"
            "assert len({b.address for b in blocks}) == 100_000\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, preexec_fn=limit, cwd=tempfile.gettempdir(),
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"
