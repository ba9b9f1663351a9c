"""pgo's .pxd files are a usable C API for third-party Cython code.

The ``cext`` fixture (tests/conftest.py) compiles tests/_cython/stress.pyx,
which cimports pgo._core.stack, linear, arena, slab, mapped, numa and hier, against the .pxd
files shipped next to the pgo under test.  That it builds and imports is
the first proof; each wrapper makes its C-API call inside ``with nogil:``,
so these tests also prove that errors raised without the GIL reach Python
as the right exceptions, and that C-level and Python-level users of one
allocator see the same memory and the same stats.
"""

import ctypes
from pathlib import Path

import numpy as np
import pytest

import pgo


def test_extension_builds_against_the_pxd_files(cext):
    for name in ("stack_alloc_c", "linear_alloc_c", "arena_alloc_c", "slab_alloc_c",
                 "stress", "drain", "Exchange"):
        assert hasattr(cext, name), name


# -- stack ---------------------------------------------------------------------

def test_stack_c_api(cext):
    st = pgo.StackAllocator(4096)
    a = cext.stack_alloc_c(st, 100, 64)
    b = cext.stack_alloc_c(st, 10, 256)
    assert a % 64 == 0 and b % 256 == 0 and b >= a + 100
    ctypes.memset(a, 0x11, 100)
    ctypes.memset(b, 0x22, 10)
    s = st.stats()
    assert s["allocations"] == 2 and s["live_blocks"] == 0      # C blocks are not Python Blocks
    assert s["requested"] == 110
    cext.stack_free_c(st, b)
    assert ctypes.string_at(a, 100) == b"\x11" * 100
    cext.stack_free_c(st, a)
    assert st.in_use == 0 and st.stats()["frees"] == 2
    cext.stack_free_c(st, 0)                                      # NULL: nothing


def test_stack_free_out_of_order_raises_through_the_c_api(cext):
    st = pgo.StackAllocator(4096)
    a = cext.stack_alloc_c(st, 64)
    b = cext.stack_alloc_c(st, 64)
    before = st.stats()
    with pytest.raises(pgo.AllocatorError, match="LIFO"):
        cext.stack_free_c(st, a)
    assert st.stats() == before                                   # the top is unchanged
    with pytest.raises(pgo.AllocatorError):
        cext.stack_free_c(st, a + 8)                              # inside a block
    with pytest.raises(pgo.AllocatorError):
        cext.stack_free_c(st, b + 4096)                           # above the top
    assert st.stats() == before
    cext.stack_free_c(st, b)
    cext.stack_free_c(st, a)
    assert st.in_use == 0


def test_stack_c_errors(cext):
    st = pgo.StackAllocator(1024)
    before = st.stats()
    with pytest.raises(MemoryError, match="2,000"):
        cext.stack_alloc_c(st, 2000)
    with pytest.raises(ValueError, match="power of two"):
        cext.stack_alloc_c(st, 8, 24)
    after = st.stats()
    assert after["failed"] == before["failed"] + 2
    assert after["in_use"] == 0 and after["allocations"] == 0


def test_stack_mark_and_release(cext):
    st = pgo.StackAllocator(4096)
    kept = st.alloc(32)
    mark = cext.stack_mark_c(st)
    for _ in range(5):
        cext.stack_alloc_c(st, 50)
    cext.stack_release_c(st, mark)
    assert st.stats()["top"] == mark[0]
    assert st.stats()["frees"] == 5
    # A Python Block above the mark is alive: release refuses, changing nothing.
    cext.stack_alloc_c(st, 50)
    py = st.alloc(16)
    before = st.stats()
    with pytest.raises(pgo.AllocatorError):
        cext.stack_release_c(st, mark)
    assert st.stats() == before
    del py
    cext.stack_release_c(st, mark)
    assert st.stats()["top"] == mark[0]
    with pytest.raises(pgo.AllocatorError):
        cext.stack_reset_c(st)                                    # `kept` is alive
    del kept
    cext.stack_reset_c(st)
    assert st.in_use == 0 and st.stats()["resets"] == 1


def test_stack_without_a_python_object(cext):
    assert cext.stack_standalone(4096) == (True, True, True)


def test_c_and_python_blocks_share_the_stack(cext):
    st = pgo.StackAllocator(4096)
    py = st.alloc(40)
    c = cext.stack_alloc_c(st, 40)
    with pytest.raises(pgo.AllocatorError, match="LIFO"):
        st.free(py)                                               # the C block is on top
    cext.stack_free_c(st, c)
    st.free(py)
    assert st.in_use == 0


# -- linear --------------------------------------------------------------------

def test_linear_c_api(cext):
    la = pgo.LinearAllocator(1024)
    a = cext.linear_alloc_c(la, 10, 1)
    b = cext.linear_alloc_c(la, 10, 1)
    assert b == a + 10
    assert cext.linear_alloc_c(la, 1, 64) % 64 == 0
    with pytest.raises(MemoryError, match="2,000"):
        cext.linear_alloc_c(la, 2000)
    with pytest.raises(ValueError):
        cext.linear_alloc_c(la, 8, 3)
    py = la.alloc(8)
    with pytest.raises(pgo.AllocatorError):
        cext.linear_reset_c(la)                                   # a Python Block is alive
    del py
    cext.linear_reset_c(la)
    assert la.in_use == 0
    assert cext.linear_alloc_c(la, 10, 1) == a


def test_linear_without_a_python_object(cext):
    assert cext.linear_standalone(1000, 100) == 10


# -- arena ---------------------------------------------------------------------

def test_arena_c_api(cext):
    ar = pgo.ArenaAllocator(4096)
    blocks = [cext.arena_alloc_c(ar, 100) for _ in range(10)]
    assert all(p % 16 == 0 for p in blocks)
    assert len(set(blocks)) == 10
    big = cext.arena_alloc_c(ar, 10000, 4096)
    assert big % 4096 == 0 and ar.stats()["chunks"] == 2
    for p in blocks + [big]:
        cext.arena_release_c(ar, p)
    s = ar.stats()
    assert s["in_use"] == 0 and s["chunks_in_use"] == 0
    assert s["allocations"] == s["frees"] == 11
    cext.arena_release_c(ar, 0)                                   # NULL: nothing
    with pytest.raises(MemoryError):
        cext.arena_alloc_c(ar, 2**62)
    with pytest.raises(ValueError):
        cext.arena_alloc_c(ar, 8, 48)
    cext.arena_reset_c(ar)


def test_arena_release_of_a_foreign_pointer_raises(cext):
    ar = pgo.ArenaAllocator(4096)
    p = cext.arena_alloc_c(ar, 64)
    other = pgo.ArenaAllocator(4096)
    q = cext.arena_alloc_c(other, 64)
    before = ar.stats()
    with pytest.raises(pgo.AllocatorError, match="not allocated here"):
        cext.arena_release_c(ar, q)
    assert ar.stats() == before
    cext.arena_release_c(ar, p)
    cext.arena_release_c(other, q)
    py = ar.alloc(8)
    with pytest.raises(pgo.AllocatorError):
        cext.arena_reset_c(ar)
    del py
    cext.arena_reset_c(ar)


# -- slab ----------------------------------------------------------------------

def test_slab_c_api(cext):
    sl = pgo.SlabAllocator(48, slots_per_slab=4)
    ptrs = [cext.slab_alloc_c(sl) for _ in range(10)]
    assert len(set(ptrs)) == 10 and all(p % sl.align == 0 for p in ptrs)
    py = sl.alloc(48)
    assert py.address not in ptrs
    for p in ptrs:
        cext.slab_free_c(sl, p)
    s = sl.stats()
    assert s["allocations"] == 11 and s["frees"] == 10 and s["live_blocks"] == 1
    cext.slab_free_c(sl, 0)                                       # NULL: nothing
    sl.free(py)
    cext.slab_reset_c(sl)
    assert sl.in_use == 0


def test_slab_misuse_raises_through_the_c_api(cext):
    sl = pgo.SlabAllocator(48, slots_per_slab=4)
    p = cext.slab_alloc_c(sl)
    q = cext.slab_alloc_c(sl)
    cext.slab_free_c(sl, p)
    before = sl.stats()
    with pytest.raises(pgo.AllocatorError, match="double free"):
        cext.slab_free_c(sl, p)
    with pytest.raises(pgo.AllocatorError, match="inside a block"):
        cext.slab_free_c(sl, q + 1)
    with pytest.raises(pgo.AllocatorError, match="not allocated here"):
        cext.slab_free_c(sl, q + (1 << 20))
    assert sl.stats() == before
    assert len({cext.slab_alloc_c(sl), cext.slab_alloc_c(sl)} | {q}) == 3


def test_slab_exhaustion_raises_through_the_c_api(cext):
    # The test build's canary makes slots bigger: size the limit in slots.
    stride = pgo.SlabAllocator(64).stats()["stride"]
    sl = pgo.SlabAllocator(64, slots_per_slab=2, max_bytes=4 * stride)
    ptrs = [cext.slab_alloc_c(sl) for _ in range(4)]
    with pytest.raises(MemoryError, match="64 bytes"):
        cext.slab_alloc_c(sl)
    cext.slab_free_c(sl, ptrs.pop())
    ptrs.append(cext.slab_alloc_c(sl))
    assert len(set(ptrs)) == 4


def test_mapped_c_api(cext):
    mp = pgo.MappedPool(1 << 20)
    ptrs = [cext.mapped_alloc_c(mp, 100 * (i + 1)) for i in range(10)]
    assert len(set(ptrs)) == 10 and all(p % 64 == 0 for p in ptrs)
    assert cext.mapped_alloc_c(mp, 10, 4096) % 4096 == 0
    py = mp.alloc(48)
    before = mp.stats()
    with pytest.raises(pgo.AllocatorError, match="owned by a Python Block"):
        cext.mapped_free_c(mp, py.address)
    with pytest.raises(pgo.AllocatorError, match="inside a block"):
        cext.mapped_free_c(mp, ptrs[3] + 64)
    with pytest.raises(pgo.AllocatorError, match="not allocated here"):
        cext.mapped_free_c(mp, ptrs[0] + (2 << 20))
    with pytest.raises(MemoryError, match="MappedPool: cannot allocate 1,044,480 bytes"):
        cext.mapped_alloc_c(mp, (1 << 20) - 4096)
    with pytest.raises(ValueError, match="alignment"):
        cext.mapped_alloc_c(mp, 10, 3)
    after = mp.stats()
    assert after.pop("failed") == before.pop("failed") + 2
    assert after == before
    for p in ptrs:
        cext.mapped_free_c(mp, p)
    with pytest.raises(pgo.AllocatorError, match="double free"):
        cext.mapped_free_c(mp, ptrs[0])
    cext.mapped_free_c(mp, 0)                                      # NULL: nothing
    assert cext.mapped_trim_c(mp) > 0


def test_mapped_without_a_python_object(cext):
    # Everything freed merges back: the pool ends as one free extent.
    assert cext.mapped_without_a_python_object(1 << 20, 3) == (1 << 20) // 64


def test_hierarchical_c_api(cext):
    h = pgo.HierarchicalAllocator()
    ptrs = [cext.hier_alloc_c(h, n) for n in (1, 16, 17, 300, 5000, 262144 - 8)]
    assert len(set(ptrs)) == 6 and all(p % 16 == 0 for p in ptrs)
    py = h.alloc(48)
    before = h.stats()
    with pytest.raises(pgo.AllocatorError, match="owned by a Python Block"):
        cext.hier_free_c(h, py.address)
    with pytest.raises(pgo.AllocatorError, match="inside a block"):
        cext.hier_free_c(h, ptrs[3] + 16)
    with pytest.raises(pgo.AllocatorError, match="not allocated here"):
        cext.hier_free_c(h, ptrs[0] + (256 << 20))
    with pytest.raises(MemoryError, match="1,048,576 bytes is more than it can ever hold"):
        cext.hier_alloc_c(h, 1 << 20)
    assert h.stats()["allocations"] == before["allocations"]
    for p in ptrs:
        cext.hier_free_c(h, p)
    # A second free of a C block is caught by the mark a freed block carries.
    with pytest.raises(pgo.AllocatorError, match="double free"):
        cext.hier_free_c(h, ptrs[2])
    cext.hier_free_c(h, 0)                                         # NULL: nothing
    st = h.stats()
    assert st["allocations"] == st["frees"] + 1 and st["live_blocks"] == 1


def test_compacting_c_api(cext):
    a = pgo.CompactingAllocator()
    ptrs = [cext.compact_alloc_c(a, n) for n in (0, 16, 17, 300, 5000, 16384 - 8)]
    assert len(set(ptrs)) == 6 and all(p % 16 == 0 for p in ptrs)
    py = a.alloc(48)
    before = a.stats()
    with pytest.raises(pgo.AllocatorError, match="owned by a Python Block"):
        cext.compact_free_c(a, py.address)
    with pytest.raises(pgo.AllocatorError, match="inside a block"):
        cext.compact_free_c(a, ptrs[3] + 16)
    with pytest.raises(pgo.AllocatorError, match="not allocated here"):
        cext.compact_free_c(a, ptrs[0] + (256 << 20))
    with pytest.raises(MemoryError, match="1,048,576 bytes is more than it can ever hold"):
        cext.compact_alloc_c(a, 1 << 20)
    assert a.stats()["allocations"] == before["allocations"]
    for p in ptrs:
        cext.compact_free_c(a, p)
    with pytest.raises(pgo.AllocatorError, match="double free"):
        cext.compact_free_c(a, ptrs[2])
    cext.compact_free_c(a, 0)                                      # NULL: nothing
    done = cext.compact_c(a)               # the five emptied spans go back
    assert done["emptied"] == 5 and done["released_bytes"] > 0
    st = a.stats()
    assert st["allocations"] == st["frees"] + 1 and st["live_blocks"] == 1


def test_numa_c_api(cext):
    na = pgo.NUMAAllocator(1 << 20)
    (p, pool), (q, _) = cext.numa_alloc_c(na, 1000), cext.numa_alloc_c(na, 1000, 4096)
    assert na.nodes[pool] == na.home_node() and q % 4096 == 0 and p != q
    before = na.stats()
    with pytest.raises(pgo.AllocatorError, match="inside a block"):
        cext.numa_free_c(na, p + 64)
    with pytest.raises(MemoryError, match="NUMAAllocator: 2,097,152 bytes is more than"):
        cext.numa_alloc_c(na, 1 << 21)
    after = na.stats()
    assert after.pop("failed") == before.pop("failed") + 1
    assert after == before
    cext.numa_free_c(na, p)
    cext.numa_free_c(na, q)
    with pytest.raises(pgo.AllocatorError, match="double free"):
        cext.numa_free_c(na, p)
    assert na.stats()["in_use"] == 0 and na.stats()["frees"] == 2


# -- the test build's directives ---------------------------------------------------

TEST_BUILD_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": True,
    "wraparound": True,
    "overflowcheck": True,
    "cdivision": True,
}


@pytest.mark.slow
def test_sources_cythonize_with_the_test_build_directives(tmp_path):
    # PGO_TEST_BUILD=1 turns on bounds, wraparound and overflow checks; the
    # sources must still translate to C under them (Cython itself is run,
    # not the C compiler, to keep this quick).
    cython_build = pytest.importorskip("Cython.Build")
    setuptools = pytest.importorskip("setuptools")
    import numpy

    core = Path(pgo.__file__).resolve().parent / "_core"
    sources = sorted(core.glob("*.pyx"))
    if not sources:
        pytest.skip(f"no .pyx sources next to {core}")
    root = core.parent.parent
    failures = {}
    for source in sources:
        ext = setuptools.Extension(f"pgo._core.{source.stem}", [str(source)],
                                   include_dirs=[numpy.get_include()])
        try:
            cython_build.cythonize([ext], compiler_directives=TEST_BUILD_DIRECTIVES,
                                   include_path=[str(root)], build_dir=str(tmp_path),
                                   force=True, quiet=True)
        except BaseException as e:              # Cython's own crashes included
            failures[source.name] = f"{type(e).__name__}: {e}"
    assert not failures, failures


# -- C-level misuse found in review -------------------------------------------------

def test_arena_release_refuses_a_block_python_owns(cext):
    ar = pgo.ArenaAllocator(4096)
    x = ar.zeros(16, dtype=np.uint8)
    before = ar.stats()
    with pytest.raises(pgo.AllocatorError, match="Python Block"):
        cext.arena_release_c(ar, x.ctypes.data)
    assert ar.stats() == before
    p = cext.arena_alloc_c(ar, 16)
    assert p != x.ctypes.data                  # the chunk was not recycled under x
    assert not x.any()


def test_arena_double_and_interior_release_are_refused(cext):
    ar = pgo.ArenaAllocator(4096)
    p1 = cext.arena_alloc_c(ar, 16)
    p2 = cext.arena_alloc_c(ar, 16)
    cext.arena_release_c(ar, p1)
    for bad in (p1, p2 + 8):
        before = ar.stats()
        with pytest.raises(pgo.AllocatorError, match="not the start of a live block"):
            cext.arena_release_c(ar, bad)
        assert ar.stats() == before
    # p2 is still alive, so its chunk is not reused: a new block lands after it.
    assert cext.arena_alloc_c(ar, 16) > p2
    cext.arena_release_c(ar, p2)


def test_stack_release_to_a_stale_mark_is_refused(cext):
    st = pgo.StackAllocator(1 << 16)
    a = cext.stack_alloc_c(st, 64)
    a2 = cext.stack_alloc_c(st, 64)
    mark = cext.stack_mark_c(st)
    cext.stack_free_c(st, a2)
    cext.stack_free_c(st, a)                   # the mark now points at released blocks
    b = cext.stack_alloc_c(st, 4096)
    ctypes.memset(b, 0xFF, 4096)               # b's data covers a2's old header
    before = st.stats()
    with pytest.raises(pgo.AllocatorError, match="LIFO"):
        cext.stack_release_c(st, mark)
    assert st.stats() == before
    cext.stack_free_c(st, b)
    assert st.in_use == 0


def test_c_level_misuse_names_the_address(cext):
    sl = pgo.SlabAllocator(64)
    p = cext.slab_alloc_c(sl)
    cext.slab_free_c(sl, p)
    with pytest.raises(pgo.AllocatorError, match=f"double free.*{p:#x}"):
        cext.slab_free_c(sl, p)
    st = pgo.StackAllocator(4096)
    a = cext.stack_alloc_c(st, 16)
    b = cext.stack_alloc_c(st, 16)
    with pytest.raises(pgo.AllocatorError, match=f"LIFO.*{a:#x}"):
        cext.stack_free_c(st, a)
    cext.stack_free_c(st, b)
    cext.stack_free_c(st, a)
