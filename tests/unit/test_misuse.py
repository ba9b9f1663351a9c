"""Misuse, edge sizes and failure injection: shared/RELIABILITY.md cases 1-8
and 10 for the four allocators.

Every error test checks three things: the right exception with a useful
message, an allocator left exactly as it was (stats before == after; a
failed allocation may only add 1 to ``failed``), and an allocator that still
works (``assert_usable``).  Raw-address tests go through the test-only
``_free_address`` hooks, which run the C-level free.  Reads of raw memory
(``ctypes.string_at``) only ever touch memory the allocator still owns.
"""

import ctypes
import gc
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest

import pgo
from pgo._core import _memory

MAKERS = {
    "stack": lambda: pgo.StackAllocator(1 << 16),
    "linear": lambda: pgo.LinearAllocator(1 << 16),
    "arena": lambda: pgo.ArenaAllocator(1 << 14),
    "slab": lambda: pgo.SlabAllocator(1024, slots_per_slab=16),
    "mapped": lambda: pgo.MappedPool(1 << 16),
    "numa": lambda: pgo.NUMAAllocator(1 << 16),
    "hierarchical": lambda: pgo.HierarchicalAllocator(),
    "compacting": lambda: pgo.CompactingAllocator(),
    "adaptive": lambda: pgo.AdaptiveAllocator(64),
}
WITH_FREE = ["stack", "slab", "mapped", "numa", "hierarchical", "compacting", "adaptive"]


def snapshot(a):
    st = a.stats()
    del st["contention"]
    return st


def assert_unchanged(a, before, failed=0):
    """Stats equal to `before`, except `failed`, which grew by `failed`."""
    now = snapshot(a)
    assert now["failed"] == before["failed"] + failed
    now.pop("failed")
    before = dict(before)
    before.pop("failed")
    assert now == before


def pattern(n, seed):
    return bytes((seed * 29 + i * 13 + 3) & 0xFF for i in range(n))


def write(block, data):
    with memoryview(block) as mv:
        mv[:] = data


def where(block):
    """The allocator's description of the block's place ("offset 32",
    "slab 0 slot 3", ...), as its repr gives it."""
    return re.search(r"\(([^()]*)\) of <", repr(block)).group(1)


def assert_usable(a, keep=()):
    """New blocks work and overlap nothing; `keep` ((block, bytes) pairs)
    still hold their bytes; live_blocks comes back to where it was."""
    live = a.live_blocks
    fresh = [a.alloc(n) for n in (1, 16, 40, 0)]
    fresh.append(a.zeros(5, dtype=np.int32).base)
    for i, b in enumerate(fresh):
        write(b, pattern(b.nbytes, 100 + i))
    ranges = sorted((b.address, b.address + b.nbytes) for b in fresh + [k for k, _ in keep] if b.nbytes)
    for (_, end), (start, _) in zip(ranges, ranges[1:]):
        assert end <= start, "blocks overlap"
    for i, b in enumerate(fresh):
        assert bytes(b) == pattern(b.nbytes, 100 + i)
    for b, data in keep:
        assert bytes(b) == data
    assert a.live_blocks == live + len(fresh)
    del fresh, b
    assert a.live_blocks == live


def run_python(code, timeout=60):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    # cwd outside the checkout: `-c` puts cwd first on sys.path, and the
    # source tree's pgo/ (without built extensions) must not shadow the install.
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tempfile.gettempdir(),
                          capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(params=WITH_FREE)
def freeing(request):
    return MAKERS[request.param]()


@pytest.fixture(params=list(MAKERS))
def any_alloc(request):
    return MAKERS[request.param]()


# -- 1. double free --------------------------------------------------------------

def test_double_free(freeing):
    a = freeing
    keep = a.alloc(32)
    write(keep, pattern(32, 1))
    b = a.alloc(64)
    place = where(b)
    a.free(b)
    before = snapshot(a)
    with pytest.raises(pgo.AllocatorError, match="double free") as exc:
        a.free(b)
    assert repr(a) in str(exc.value) and place in str(exc.value)
    assert_unchanged(a, before)
    x, y = a.alloc(64), a.alloc(64)
    assert x.address != y.address
    assert_usable(a, keep=[(keep, pattern(32, 1))])


def test_slab_double_free_at_c_level():
    sl = MAKERS["slab"]()
    keep = sl.alloc(100)
    write(keep, pattern(100, 2))
    b = sl.alloc(100)
    address = b.address
    sl.free(b)
    dropped = sl.alloc(100)
    dropped_address = dropped.address
    del dropped
    for addr in (address, dropped_address):
        before = snapshot(sl)
        with pytest.raises(pgo.AllocatorError, match="double free"):
            sl._free_address(addr)
        assert_unchanged(sl, before)
    # The free list is intact: no slot is handed out twice.
    blocks = [sl.alloc(100) for _ in range(40)]
    assert len({b.address for b in blocks}) == 40
    assert keep.address not in {b.address for b in blocks}
    assert bytes(keep) == pattern(100, 2)
    del blocks
    assert_usable(sl, keep=[(keep, pattern(100, 2))])


def test_slab_double_free_at_c_level_names_the_block():
    # RELIABILITY 1: the error names the allocator and where the block is,
    # also when it comes from the C API (slab_free), not only from free().
    sl = MAKERS["slab"]()
    b = sl.alloc(8)
    address = b.address
    sl.free(b)
    with pytest.raises(pgo.AllocatorError) as exc:
        sl._free_address(address)
    msg = str(exc.value)
    assert "SlabAllocator" in msg
    assert "slot" in msg or f"{address:#x}" in msg, msg


def test_stack_double_free_at_c_level():
    st = MAKERS["stack"]()
    a = st.alloc(64)
    b = st.alloc(64)
    write(b, pattern(64, 3))
    address = a.address
    del a                      # dead, but kept until b is gone
    before = snapshot(st)
    with pytest.raises(pgo.AllocatorError, match="double free"):
        st._free_address(address)
    assert_unchanged(st, before)
    assert_usable(st, keep=[(b, pattern(64, 3))])
    del b
    assert st.in_use == 0 and st.live_blocks == 0


# -- 2. foreign and interior pointers; free(NULL) --------------------------------------

def test_interior_pointer(freeing):
    a = freeing
    b = a.alloc(64)
    write(b, pattern(64, 4))
    for offset in (1, 8, 63):
        before = snapshot(a)
        with pytest.raises(pgo.AllocatorError, match="inside a block"):
            a._free_address(b.address + offset)
        assert_unchanged(a, before)
        assert bytes(b) == pattern(64, 4)
    assert_usable(a, keep=[(b, pattern(64, 4))])
    a.free(b)
    assert a.live_blocks == 0


def test_foreign_pointer(freeing):
    a = freeing
    b = a.alloc(64)
    write(b, pattern(64, 5))
    other = type(a)(1 << 16) if isinstance(a, pgo.StackAllocator) else type(a)(1024)
    theirs = other.alloc(64)
    numpy_owned = np.zeros(64, dtype=np.uint8)
    if isinstance(a, pgo.StackAllocator):
        beyond = b.address + 4096                 # inside the buffer, above the top
    elif isinstance(a, (pgo.MappedPool, pgo.NUMAAllocator)):
        beyond = b.address + a.capacity           # just past the (only) mapping
    elif isinstance(a, pgo.HierarchicalAllocator):
        beyond = b.address + (64 << 20)           # reserved, past the spans handed out
    elif isinstance(a, (pgo.CompactingAllocator, pgo.AdaptiveAllocator)):
        beyond = b.address + (64 << 20)           # reserved, past the memory handed out
    else:
        beyond = b.address + 16 * a.stats()["stride"]   # just past the only slab
    for address in (theirs.address, numpy_owned.ctypes.data, id(object()), beyond, 4096):
        before, before_other = snapshot(a), snapshot(other)
        with pytest.raises(pgo.AllocatorError, match="not allocated here"):
            a._free_address(address)
        assert_unchanged(a, before)
        assert_unchanged(other, before_other)
    assert bytes(b) == pattern(64, 5)
    assert_usable(a, keep=[(b, pattern(64, 5))])


def test_free_null_does_nothing(freeing):
    a = freeing
    b = a.alloc(16)
    before = snapshot(a)
    a._free_address(0)
    assert_unchanged(a, before)
    assert_usable(a)
    a.free(b)


def test_stack_base_address_of_an_empty_stack_is_not_a_block():
    # With nothing allocated, the buffer's first byte is not a block; the
    # C-level free must refuse it like any foreign pointer (and write
    # nothing outside the buffer).  Run apart: the bug corrupts the heap.
    proc = run_python("""
        import pgo
        st = pgo.StackAllocator(1024)
        b = st.alloc(8, align=8)
        base = b.address - st.stats()["header_bytes"]
        st.free(b)
        frees = st.stats()["frees"]
        try:
            st._free_address(base)
            print("accepted")
        except pgo.AllocatorError:
            print("refused")
        print("frees", st.stats()["frees"] - frees)
        del st
        print("done")
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["refused", "frees", "0", "done"], proc.stdout


# -- 3. wrong allocator --------------------------------------------------------------

# Built unlike MAKERS, so that an owner's repr never equals the receiver's.
OWNERS = {
    "stack": lambda: pgo.StackAllocator(1 << 15),
    "linear": lambda: pgo.LinearAllocator(1 << 15),
    "arena": lambda: pgo.ArenaAllocator(1 << 13),
    "slab": lambda: pgo.SlabAllocator(512),
    "mapped": lambda: pgo.MappedPool(1 << 15),
    "numa": lambda: pgo.NUMAAllocator(1 << 15),
    "hierarchical": lambda: pgo.HierarchicalAllocator(1 << 30),
    "compacting": lambda: pgo.CompactingAllocator(1 << 30),
    "adaptive": lambda: pgo.AdaptiveAllocator(128, max_bytes=1 << 30),
}


@pytest.mark.parametrize("owner_kind", list(OWNERS))
def test_block_freed_into_the_wrong_allocator(any_alloc, owner_kind):
    receiver, owner = any_alloc, OWNERS[owner_kind]()
    assert repr(owner) not in repr(receiver)
    b = owner.alloc(48)
    write(b, pattern(48, 6))
    before, before_owner = snapshot(receiver), snapshot(owner)
    with pytest.raises(pgo.AllocatorError) as exc:
        receiver.free(b)
    assert repr(owner) in str(exc.value), str(exc.value)
    assert_unchanged(receiver, before)
    assert_unchanged(owner, before_owner)
    assert b.freed is False and bytes(b) == pattern(48, 6)
    assert_usable(receiver)
    if owner_kind in WITH_FREE:
        owner.free(b)
    else:
        del b
    assert owner.live_blocks == 0


# -- 4. stack freed out of LIFO order ------------------------------------------------

def test_stack_free_out_of_lifo_order():
    st = MAKERS["stack"]()
    blocks = [st.alloc(40) for _ in range(3)]
    for i, b in enumerate(blocks):
        write(b, pattern(40, 10 + i))
    for b in blocks[:2]:
        before = snapshot(st)
        with pytest.raises(pgo.AllocatorError, match="LIFO") as exc:
            st.free(b)
        assert where(b) in str(exc.value)
        assert_unchanged(st, before)          # the top included
        assert b.freed is False
    for i, b in enumerate(blocks):
        assert bytes(b) == pattern(40, 10 + i)
    assert_usable(st, keep=[(b, pattern(40, 10 + i)) for i, b in enumerate(blocks)])
    for b in reversed(blocks):
        st.free(b)
    assert st.in_use == 0 and st.stats()["top"] == 0


# -- 5. reset while arrays or memoryviews are alive -----------------------------------

def test_reset_with_live_arrays_and_memoryviews(any_alloc):
    a = any_alloc
    arr = a.zeros(64, dtype=np.uint8)
    arr[:] = np.frombuffer(pattern(64, 20), dtype=np.uint8)
    b = a.alloc(48)
    mv = memoryview(b)
    mv[:] = pattern(48, 21)
    del b                                  # only the memoryview keeps it
    before = snapshot(a)
    with pytest.raises(pgo.AllocatorError, match=r"\b2 block") as exc:
        a.reset()
    assert repr(a) in str(exc.value)
    assert_unchanged(a, before)
    # Not a byte changed, read through the views and through raw addresses.
    assert arr.tobytes() == pattern(64, 20) and bytes(mv) == pattern(48, 21)
    assert ctypes.string_at(arr.ctypes.data, 64) == pattern(64, 20)
    assert ctypes.string_at(mv.obj.address, 48) == pattern(48, 21)
    assert_usable(a, keep=[(arr.base, pattern(64, 20)), (mv.obj, pattern(48, 21))])
    del arr
    with pytest.raises(pgo.AllocatorError, match=r"\b1 block"):
        a.reset()
    mv.release()
    del mv
    gc.collect()
    a.reset()
    st = a.stats()
    assert st["live_blocks"] == 0 and st["in_use"] == 0
    assert st["resets"] == before["resets"] + 1


def test_reset_after_a_cycle_is_collected(any_alloc):
    a = any_alloc
    holder = [a.empty(8), a.alloc(8)]
    holder.append(holder)
    del holder
    with pytest.raises(pgo.AllocatorError, match=r"\b2 block"):
        a.reset()
    gc.collect()
    a.reset()
    assert a.live_blocks == 0 and a.in_use == 0


# -- blocks that are in use cannot be freed -----------------------------------------

def test_free_with_an_open_memoryview(freeing):
    a = freeing
    b = a.alloc(32)
    mv = memoryview(b)
    mv[:] = pattern(32, 30)
    before = snapshot(a)
    with pytest.raises(pgo.AllocatorError, match="1 open buffer view") as exc:
        a.free(b)
    assert where(b) in str(exc.value)
    assert_unchanged(a, before)
    assert bytes(mv) == pattern(32, 30)
    mv.release()
    a.free(b)
    assert a.live_blocks == 0


def test_free_with_a_numpy_view_of_the_buffer(freeing):
    a = freeing
    b = a.alloc(32)
    view = np.frombuffer(b, dtype=np.uint8)
    before = snapshot(a)
    with pytest.raises(pgo.AllocatorError):
        a.free(b)
    assert_unchanged(a, before)
    view[:] = 7
    del view
    a.free(b)


def test_free_of_an_array_base(freeing):
    a = freeing
    arr = a.empty(16, dtype=np.int16)
    arr[:] = np.arange(16)
    before = snapshot(a)
    with pytest.raises(pgo.AllocatorError, match="numpy array"):
        a.free(arr.base)
    assert_unchanged(a, before)
    assert arr.tolist() == list(range(16))
    del arr
    assert a.live_blocks == 0


def test_freed_block_cannot_be_viewed(freeing):
    a = freeing
    b = a.alloc(16)
    a.free(b)
    before = snapshot(a)
    for view in (memoryview, bytes, np.frombuffer):
        with pytest.raises(pgo.AllocatorError):
            view(b)
    assert_unchanged(a, before)


# -- 6. sizes and alignments ----------------------------------------------------------

def exhaustible():
    yield pgo.StackAllocator(4096), 3000, 5000
    yield pgo.LinearAllocator(4096), 3000, 5000
    yield pgo.ArenaAllocator(4096, max_bytes=8192), 3000, 10000
    yield pgo.SlabAllocator(512, slots_per_slab=2, max_bytes=4096), 512, None


def test_exhaustion_names_the_byte_count():
    for a, n, too_big in exhaustible():
        held = []
        with pytest.raises(MemoryError) as exc:
            for _ in range(100):
                held.append(a.alloc(n))
                write(held[-1], pattern(n, len(held)))
        assert f"{n:,}" in str(exc.value), str(exc.value)
        assert held, a
        before = snapshot(a)
        with pytest.raises(MemoryError, match=f"{n:,}"):
            a.alloc(n)
        assert_unchanged(a, before, failed=1)
        assert a.in_use <= a.capacity
        if too_big is not None:
            with pytest.raises(MemoryError, match=f"{too_big:,}"):
                a.alloc(too_big)
            assert_unchanged(a, before, failed=2)
        for i, b in enumerate(held):
            assert bytes(b) == pattern(n, i + 1)
        del held, b
        gc.collect()
        if isinstance(a, pgo.LinearAllocator):
            a.reset()
        assert_usable(a)
        assert len(a.alloc(n)) == n


@pytest.mark.parametrize("n", [2**63 - 1, 2**63, 2**64, 2**100])
def test_impossible_sizes(any_alloc, n):
    a = any_alloc
    before = snapshot(a)
    with pytest.raises(MemoryError, match=f"{n:,}"):
        a.alloc(n)
    with pytest.raises(MemoryError):
        a.empty(n, dtype=np.uint8)
    with pytest.raises(MemoryError):
        a.zeros((n, 2))
    assert_unchanged(a, before)
    assert_usable(a)


@pytest.mark.parametrize("shape,dtype", [
    ((2**62,), np.float64),                  # 2**65 bytes
    ((2**32, 2**32), np.uint8),              # 2**64
    ((2**31, 2**31, 2**31), np.uint8),
    ((2**60,), np.float64),                  # exactly 2**63 = PTRDIFF_MAX + 1
    ((2**61, 3), np.int32),
])
def test_array_size_overflow(any_alloc, shape, dtype):
    a = any_alloc
    before = snapshot(a)
    with pytest.raises(MemoryError):
        a.empty(shape, dtype=dtype)
    with pytest.raises(MemoryError):
        a.zeros(shape, dtype=dtype, order="F")
    after = snapshot(a)
    assert after["failed"] <= before["failed"] + 2
    assert_unchanged(a, dict(before, failed=after["failed"]))
    assert_usable(a)


def test_negative_and_non_integer_sizes(any_alloc):
    a = any_alloc
    before = snapshot(a)
    for call in (lambda: a.alloc(-1), lambda: a.alloc(-2**70), lambda: a.empty(-1),
                 lambda: a.empty((2, -1)), lambda: a.zeros((-3,), dtype=np.uint8)):
        with pytest.raises(ValueError):
            call()
    for bad in (1.5, "8", None, [3]):
        with pytest.raises(TypeError):
            a.alloc(bad)
    assert_unchanged(a, before)
    assert_usable(a)


@pytest.mark.parametrize("align", [0, 3, 6, 12, 24, 100, 8192, 1 << 20, -1])
def test_bad_alignment(any_alloc, align):
    a = any_alloc
    before = snapshot(a)
    with pytest.raises(ValueError):
        a.alloc(8, align)
    with pytest.raises(ValueError):
        a.empty(4, dtype=np.uint8, align=align)
    with pytest.raises(ValueError):
        a.zeros(4, align=align)
    assert_unchanged(a, before)
    assert_usable(a)


def test_bad_shapes_and_orders(any_alloc):
    a = any_alloc
    before = snapshot(a)
    with pytest.raises(ValueError):
        a.empty((1,) * 65, dtype=np.uint8)
    for order in ("A", "K", "c", ""):
        with pytest.raises(ValueError):
            a.empty(3, order=order)
    with pytest.raises(TypeError):
        a.empty(3.0)
    assert_unchanged(a, before)
    assert_usable(a)


@pytest.mark.parametrize("dtype", [
    object, "O", np.dtype(object), [("a", "O")], np.dtype([("x", "<i8"), ("y", "O")]),
    np.dtype(("O", (2,))),
])
def test_object_dtypes_are_refused(any_alloc, dtype):
    a = any_alloc
    before = snapshot(a)
    with pytest.raises(TypeError, match="object"):
        a.empty(3, dtype=dtype)
    with pytest.raises(TypeError):
        a.zeros((2, 2), dtype=dtype)
    assert_unchanged(a, before)
    assert_usable(a)


def test_slab_constructor_arguments():
    for kwargs in ({"align": 3}, {"align": 8192}, {"align": 0}):
        with pytest.raises(ValueError):
            pgo.SlabAllocator(64, **kwargs)
    with pytest.raises(TypeError):
        pgo.SlabAllocator(64, 64)              # align is keyword-only


def test_slab_block_size_zero_is_a_value_error():
    # block_size 0 is an invalid argument, not a lack of memory (the
    # message used to say "0 bytes is more than it can ever hold").
    with pytest.raises(ValueError):
        pgo.SlabAllocator(0)


# -- 7. out-of-memory injection -------------------------------------------------------

def fail_each_system_call(action):
    """Run `action` with the k-th system allocation failing, for k = 0, 1, ...
    until it succeeds with the failure still pending.  Returns how many
    calls failed it; each failure must be a MemoryError naming a byte
    count, with the injection used up."""
    for k in range(50):
        _memory._inject_oom(k)
        try:
            result = action()
        except MemoryError as e:
            assert re.search(r"\d[\d,]* bytes|\d+-byte", str(e)), str(e)
            assert not _memory._oom_armed(), "MemoryError without the injected failure"
            continue
        finally:
            armed = _memory._oom_armed()
            _memory._inject_oom(-1)
        assert armed, "the action made more system allocations than expected"
        return k, result
    raise AssertionError("never succeeded")


@pytest.mark.parametrize("kind", list(MAKERS))
def test_oom_at_creation(kind):
    failures, a = fail_each_system_call(MAKERS[kind])
    assert failures >= 1
    assert_usable(a)


def test_oom_when_a_slab_grows():
    sl = pgo.SlabAllocator(64, slots_per_slab=2)
    held = []
    for growth in range(4):                   # the first slab, then later ones
        for b in held:
            assert bytes(b) == pattern(64, b.address % 251)
        while sl.stats()["free_slots"]:
            held.append(sl.alloc(64))
            write(held[-1], pattern(64, held[-1].address % 251))
        before = snapshot(sl)

        def grow():
            try:
                return sl.alloc(64)
            except MemoryError:
                assert_unchanged(sl, before, failed=1)
                before["failed"] += 1
                raise

        failures, b = fail_each_system_call(grow)
        # The slot stack and the slab table grow every time; the bitmaps and
        # the committed pages only when they run out.
        assert failures >= 2
        write(b, pattern(64, b.address % 251))
        held.append(b)
        assert sl.stats()["slabs"] == growth + 1
    assert len({b.address for b in held}) == len(held)
    for b in held[::2]:
        sl.free(b)
    assert_usable(sl, keep=[(b, pattern(64, b.address % 251)) for b in held[1::2]])
    del held, b
    assert sl.live_blocks == 0 and sl.in_use == 0


def test_oom_when_an_arena_grows():
    ar = pgo.ArenaAllocator(1024)
    held = []
    for growth in range(10):                 # past 8 chunks the chunk table grows too
        before = snapshot(ar)

        def grow():
            try:
                return ar.alloc(1000)
            except MemoryError:
                assert_unchanged(ar, before, failed=1)
                before["failed"] += 1
                raise

        failures, b = fail_each_system_call(grow)
        # A new chunk: its memory, its block list and two bitmaps (none for
        # the first alloc).  At the 9th the chunk table grows first (a failure
        # after it keeps the bigger table, so the retries see four calls
        # again), and the table of chunk ranges numpy's handler reads grows
        # last: a fifth call.
        assert failures == (0 if growth == 0 else 5 if growth == 8 else 4)
        write(b, pattern(1000, growth))
        held.append(b)
    for i, b in enumerate(held):
        assert bytes(b) == pattern(1000, i)
    assert ar.stats()["chunks"] == 10
    assert_usable(ar, keep=[(b, pattern(1000, i)) for i, b in enumerate(held)])


def test_no_system_allocation_while_there_is_room(any_alloc):
    a = any_alloc
    warm = [a.alloc(8)]                       # the slab makes its first slab lazily
    if isinstance(a, (pgo.HierarchicalAllocator, pgo.CompactingAllocator)):
        # Each size class carves blocks from a span of its own: room is per class.
        warm += [a.empty(4), a.zeros((2, 2), dtype=np.int8), a.alloc(0), a.alloc(16)]
    _memory._inject_oom(0)
    blocks = [a.empty(4), a.zeros((2, 2), dtype=np.int8), a.alloc(0), a.alloc(16)]
    if isinstance(a, (pgo.StackAllocator, pgo.SlabAllocator)):
        a.free(blocks.pop())
    del blocks, warm
    a.reset()
    a.stats()
    assert _memory._oom_armed()


def _mallinfo_used():
    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except AttributeError:
        pytest.skip("glibc without mallinfo2: cannot measure malloc'd bytes")
    fn.restype = Mallinfo2
    info = fn()
    return info.uordblks + info.hblkhd


def test_oom_leaks_nothing():
    def failing_growth():
        for k in range(6):
            sl = pgo.SlabAllocator(64, slots_per_slab=4)
            _memory._inject_oom(k)
            try:
                sl.alloc(64)
            except MemoryError:
                pass
            _memory._inject_oom(-1)
        ar = pgo.ArenaAllocator(1024)
        for k in range(3):
            _memory._inject_oom(k)
            try:
                ar.alloc(2000)
            except MemoryError:
                pass
            _memory._inject_oom(-1)
        for make in MAKERS.values():
            for k in range(3):
                _memory._inject_oom(k)
                try:
                    make()
                except MemoryError:
                    pass
                _memory._inject_oom(-1)

    for _ in range(50):
        failing_growth()                      # warm up Python's own caches
    gc.collect()
    used = _mallinfo_used()
    for _ in range(500):
        failing_growth()
    gc.collect()
    # A leak of even one 8-byte block per failure would be >= 16 KiB here.
    assert _mallinfo_used() - used < 16384


# -- 8. debug fill ---------------------------------------------------------------------

debug_only = pytest.mark.skipif(not pgo.DEBUG_BUILD, reason="fill patterns exist only in the test build")


@debug_only
def test_new_memory_is_filled_with_a5(any_alloc):
    a = any_alloc
    for n in (1, 7, 64, 1000):
        b = a.alloc(n)
        assert bytes(b) == b"\xa5" * n
        arr = a.empty(n, dtype=np.uint8)
        assert arr.tobytes() == b"\xa5" * n
        assert not a.zeros(n, dtype=np.uint8).any()
        b_again = a.alloc(n)                  # also memory that was used before
        write(b_again, b"\x00" * n)
        del b_again
        assert bytes(a.alloc(n)) == b"\xa5" * n


@debug_only
def test_freed_slab_slots_read_5a():
    sl = pgo.SlabAllocator(48, slots_per_slab=8)
    stride = sl.stats()["stride"]
    keep = sl.alloc(48)
    b, c = sl.alloc(48), sl.alloc(48)
    write(b, b"\x11" * 48)
    write(c, b"\x22" * 48)
    write(keep, b"\x33" * 48)
    b_addr, c_addr = b.address, c.address
    sl.free(b)
    del c
    # The slots still belong to the slab, so reading them is safe.
    assert ctypes.string_at(b_addr, stride) == b"\x5a" * stride
    assert ctypes.string_at(c_addr, stride) == b"\x5a" * stride
    assert bytes(keep) == b"\x33" * 48
    del keep
    sl.reset()
    assert ctypes.string_at(b_addr, stride) == b"\x5a" * stride


@debug_only
def test_freed_stack_memory_reads_5a():
    st = pgo.StackAllocator(4096)
    a = st.alloc(100)
    b = st.alloc(100)
    write(a, b"\x11" * 100)
    write(b, b"\x22" * 100)
    a_addr, b_addr = a.address, b.address
    del a                                       # below b: kept as it is
    assert ctypes.string_at(a_addr, 100) == b"\x11" * 100
    st.free(b)                                  # b, then the dead a
    assert ctypes.string_at(b_addr, 100) == b"\x5a" * 100
    assert ctypes.string_at(a_addr, 100) == b"\x5a" * 100


@debug_only
def test_linear_reset_fills_5a():
    la = pgo.LinearAllocator(4096)
    b = la.alloc(200)
    write(b, b"\x11" * 200)
    addr = b.address
    del b
    assert ctypes.string_at(addr, 200) == b"\x11" * 200   # dropping frees nothing
    la.reset()
    assert ctypes.string_at(addr, 200) == b"\x5a" * 200


@debug_only
def test_arena_recycled_chunk_reads_5a():
    ar = pgo.ArenaAllocator(4096)
    a, b = ar.alloc(100), ar.alloc(100)
    write(a, b"\x11" * 100)
    write(b, b"\x22" * 100)
    a_addr, b_addr = a.address, b.address
    del a
    assert ctypes.string_at(a_addr, 100) == b"\x11" * 100   # b keeps the chunk
    del b
    assert ctypes.string_at(a_addr, 100) == b"\x5a" * 100
    assert ctypes.string_at(b_addr, 100) == b"\x5a" * 100


@debug_only
@pytest.mark.parametrize("kind", WITH_FREE)
def test_canary_catches_a_one_byte_overflow(kind):
    # RELIABILITY 8: a trailing canary catches a 1-byte overflow on free and
    # the error names the block.  The stray byte lands in memory the
    # allocator owns (slab padding; the stack's free space), so the write
    # itself is harmless.
    a = pgo.SlabAllocator(24, align=32) if kind == "slab" else pgo.StackAllocator(4096)
    b = a.alloc(24)
    ctypes.memset(b.address + 24, 0x00, 1)
    with pytest.raises(pgo.AllocatorError) as exc:
        a.free(b)
    assert where(b) in str(exc.value)
    assert not b.freed                          # nothing changed: the block is still ours
    ctypes.memset(b.address + 24, 0xA5, 1)      # mend the canary, then it frees cleanly
    a.free(b)


# -- the interpreter survives -------------------------------------------------------------

def test_stats_while_gc_collects_a_threadsafe_allocators_arrays():
    # stats() of a threadsafe allocator holds its mutex while it builds the
    # allocator-specific dict; a garbage collection that runs then and frees
    # an array of the same allocator must not deadlock on that mutex.
    code = """
        import gc, sys, pgo
        kind = sys.argv[1]
        a = {"stack": lambda: pgo.StackAllocator(4096, threadsafe=True),
             "linear": lambda: pgo.LinearAllocator(4096, threadsafe=True),
             "arena": lambda: pgo.ArenaAllocator(4096, threadsafe=True),
             "slab": lambda: pgo.SlabAllocator(64, threadsafe=True),
             "mapped": lambda: pgo.MappedPool(4096, threadsafe=True),
             "numa": lambda: pgo.NUMAAllocator(4096, threadsafe=True),
             "hierarchical": lambda: pgo.HierarchicalAllocator(),
             "compacting": lambda: pgo.CompactingAllocator(threadsafe=True),
             "adaptive": lambda: pgo.AdaptiveAllocator(64, threadsafe=True)}[kind]()
        gc.collect()
        gc.disable()
        for _ in range(5):
            cycle = [a.zeros(2)]
            cycle.append(cycle)
            del cycle
        gc.set_threshold(1, 1, 1)
        gc.enable()
        for _ in range(3):
            a.stats()
        gc.set_threshold(700, 10, 10)
        gc.collect()
        print(a.live_blocks)
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    procs = {kind: subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), kind], env=env, cwd=tempfile.gettempdir(),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for kind in MAKERS}
    hung, failed = [], {}
    deadline = time.monotonic() + 15          # for all four together
    for kind, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            hung.append(kind)
            continue
        if proc.returncode != 0 or out.split() != ["0"]:
            failed[kind] = (proc.returncode, out, err[-1000:])
    assert not hung, f"stats() deadlocked (killed after 15 s) for: {hung}"
    assert not failed


def test_objects_made_without_init_do_not_crash():
    # __new__ skips __init__ (which refuses Block() and Allocator()); what it
    # makes must raise on use, not crash the interpreter.
    proc = run_python("""
        import pgo
        b = pgo.Block.__new__(pgo.Block)
        for use in (repr, len, bytes, lambda b: pgo.SlabAllocator(64).free(b)):
            try:
                use(b)
            except Exception:
                pass
        a = pgo.Allocator.__new__(pgo.Allocator)
        for use in (repr, lambda a: a.capacity, lambda a: a.stats(), lambda a: a.alloc(8),
                    lambda a: a.empty(3), lambda a: a.reset()):
            try:
                use(a)
            except Exception:
                pass
        print("survived")
    """)
    assert proc.returncode == 0, f"crashed with {proc.returncode}: {proc.stderr[-2000:]}"
    assert proc.stdout.split() == ["survived"]


@debug_only
def test_canary_broken_on_a_dropped_block_is_reported_as_unraisable():
    # Nobody can be raised to from a deallocator; the overrun is reported
    # through sys.unraisablehook, naming the block.
    import sys

    seen = []
    old, sys.unraisablehook = sys.unraisablehook, seen.append
    try:
        a = pgo.SlabAllocator(24, align=32)
        b = a.alloc(24)
        ctypes.memset(b.address + 24, 0x00, 1)
        del b
    finally:
        sys.unraisablehook = old
    assert len(seen) == 1
    assert isinstance(seen[0].exc_value, pgo.AllocatorError)
    assert "wrote past the end" in str(seen[0].exc_value)
    assert a.live_blocks == 0


def test_arena_chunk_size_above_its_limit_is_refused():
    # Block starts are stored as 32-bit multiples of 8: chunks hold 32 GiB at most.
    with pytest.raises(MemoryError, match="68,719,476,736 bytes"):
        pgo.ArenaAllocator(chunk_size=64 << 30)
