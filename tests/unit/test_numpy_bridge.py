"""pgo allocators as numpy's data-memory handler: use, install, Router.

- A port of numpy's own conformance checks (numpy/_core/tests/
  test_mem_policy.py) to pgo's handler: set and restore, handler names on
  arrays and views, per-thread and per-asyncio-task policy, and arrays that
  outlive the handler that made them (RELIABILITY 14, 15).
- numpy's awkward paths (RELIABILITY 16, 17): zero-size arrays, reallocs
  (``fromstring``/``fromfile`` with a separator realloc without the GIL,
  ``resize``), calloc over reused memory, ``free(NULL)``, malformed capsules.
- Routing: validation, fallback when an allocator is exhausted, reset()
  refused while arrays live, the linear allocator's rewind, uninstall.
- A thread stress under one installed router.

Comparisons of numpy arrays allocate too, so inside a ``use`` block every
check that must not disturb a count runs after the block.  The autouse
fixture uninstalls whatever a test installed, so no test leaks a handler.
"""

import asyncio
import concurrent.futures
import ctypes
import datetime
import gc
import multiprocessing.pool
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import weakref

import numpy as np
import numpy.ma  # noqa: F401  (np.unique imports it lazily; its module arrays would stay alive)
import pytest

import pgo
from pgo._core import numpy_bridge

get_handler_name = np._core.multiarray.get_handler_name
get_handler_version = np._core.multiarray.get_handler_version

MiB = 1 << 20
MAKERS = {
    "stack": lambda: pgo.StackAllocator(8 * MiB, threadsafe=True),
    "linear": lambda: pgo.LinearAllocator(8 * MiB, threadsafe=True),
    "arena": lambda: pgo.ArenaAllocator(MiB, threadsafe=True),
    "slab": lambda: pgo.SlabAllocator(1 << 16, align=16, threadsafe=True),
    "cache": lambda: pgo.CacheAllocator(),
    "mapped": lambda: pgo.MappedPool(8 * MiB, threadsafe=True),
    "numa": lambda: pgo.NUMAAllocator(8 * MiB),
    "hierarchical": lambda: pgo.HierarchicalAllocator(),
    "compacting": lambda: pgo.CompactingAllocator(threadsafe=True),
    "adaptive": lambda: pgo.AdaptiveAllocator(64, threadsafe=True),
}
KINDS = list(MAKERS)
# The kinds that serve arrays of 64 KiB and more (a compacting allocator's
# largest block is 16 KiB: test_compacting covers its arrays).
LARGE = [k for k in KINDS if k != "compacting"]


def routed(kind, name="pgo-test"):
    """A fresh allocator of `kind` and a Router sending every size it can serve to it."""
    a = MAKERS[kind]()
    hi = a.block_size if isinstance(a, pgo.SlabAllocator) else None
    return a, pgo.Router([pgo.SizeClass(0, hi, a)], name=name)


def address(arr):
    return arr.__array_interface__["data"][0]


def in_thread(fn, *args):
    """Run fn in a new threading.Thread; return its result or raise its error."""
    out = {}

    def target():
        try:
            out["result"] = fn(*args)
        except BaseException as e:                  # re-raised in the caller
            out["error"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["result"]


@pytest.fixture(autouse=True)
def _no_handler_leaks():
    assert pgo.installed() is None, "an earlier test left a handler installed"
    before = get_handler_name()
    try:
        yield
    finally:
        pgo.uninstall()
        gc.collect()
    assert get_handler_name() == before


ORIG = get_handler_name()
# numpy makes a few module-level arrays the first time some functions run
# (numpy.random keeps one from its first Generator); made under a test's
# handler they would keep its allocator alive, so they are made here.
np.random.default_rng(0).permutation(10)


# -- numpy's test_mem_policy, ported ------------------------------------------------

def test_set_policy_and_restore():
    a = np.arange(10).reshape((2, 5))               # a view: its base owns the data
    assert get_handler_name(a) is None and get_handler_version(a) is None
    assert get_handler_name(a.base) == ORIG and get_handler_version(a.base) == 1

    cache = pgo.CacheAllocator()
    router = pgo.Router([pgo.SizeClass(0, None, cache)], name="secret_pgo")
    with pgo.use(router) as r:
        assert r is router
        assert get_handler_name() == "secret_pgo"
        b = np.arange(10).reshape((2, 5))
        assert get_handler_name(b) is None and get_handler_version(b) is None
        assert get_handler_name(b.base) == "secret_pgo" and get_handler_version(b.base) == 1
    assert get_handler_name() == ORIG
    c = np.arange(10)
    assert get_handler_name(c) == ORIG
    # pgo's helpers follow views to the array that owns the memory.
    assert pgo.handler_name(b) == pgo.handler_name(b.base) == "secret_pgo"
    assert pgo.owner(b) is cache and pgo.owner(b.base) is cache
    assert pgo.handler_name(a) == ORIG and pgo.owner(a) is None
    assert pgo.handler_name(c) == ORIG and pgo.owner(c) is None
    assert (b.ravel() == np.arange(10)).all()


def test_default_names():
    with pgo.use(pgo.CacheAllocator()):
        assert get_handler_name() == "pgo:CacheAllocator"
    with pgo.use(pgo.SlabAllocator(64, align=16, threadsafe=True)):
        assert get_handler_name() == "pgo:SlabAllocator"
    with pgo.use(pgo.Router()):
        assert get_handler_name() == "pgo"
    assert get_handler_name() == ORIG


def test_nested_use_restores_each_level():
    outer, inner = pgo.Router(name="outer"), pgo.Router(name="inner")
    with pgo.use(outer):
        with pgo.use(inner):
            assert get_handler_name() == "inner"
        assert get_handler_name() == "outer"
        u = pgo.use(inner)                          # one use object, entered twice
        with u:
            with u:
                assert get_handler_name() == "inner"
            assert get_handler_name() == "inner"
        assert get_handler_name() == "outer"
    assert get_handler_name() == ORIG
    with pytest.raises(KeyError):
        with pgo.use(outer):
            raise KeyError("boom")
    assert get_handler_name() == ORIG


def test_policy_propagation_through_subclass_views():
    class MyArr(np.ndarray):
        pass

    cache = pgo.CacheAllocator()
    with pgo.use(cache):
        a = np.arange(10).view(MyArr).reshape((2, 5))
    assert get_handler_name(a) is None and a.flags.owndata is False
    assert get_handler_name(a.base) is None and a.base.flags.owndata is False
    assert get_handler_name(a.base.base) == "pgo:CacheAllocator"
    assert a.base.base.flags.owndata is True
    assert pgo.handler_name(a) == "pgo:CacheAllocator"
    assert pgo.owner(a) is cache
    assert pgo.owner(a[1, ::2]) is cache


def test_helpers_on_other_arrays():
    cache = pgo.CacheAllocator()
    from_allocator = cache.empty(10)                # a Block's memory, not a handler's
    assert pgo.handler_name(from_allocator) is None
    assert pgo.owner(from_allocator) is cache and pgo.owner(from_allocator[2:]) is cache
    buf = np.frombuffer(bytearray(16), dtype=np.uint8)
    assert pgo.handler_name(buf) is None and pgo.owner(buf) is None
    with pytest.raises(TypeError):
        pgo.handler_name([1, 2])
    with pytest.raises(TypeError):
        pgo.owner(b"abc")


def test_use_accepts_a_handler_capsule():
    cache = pgo.CacheAllocator()
    router = pgo.Router([pgo.SizeClass(0, None, cache)], name="by-capsule")
    u = pgo.use(router)
    with pgo.use(u.capsule) as r:
        assert r is None
        assert get_handler_name() == "by-capsule"
        a = np.ones(1000)
    assert pgo.owner(a) is cache
    # numpy's own handler is a capsule too.
    default_capsule = pgo.current_handler()
    with u:
        with pgo.use(default_capsule):
            assert get_handler_name() == ORIG
            b = np.ones(1000)
        assert get_handler_name() == "by-capsule"
    assert get_handler_name(b) == ORIG and pgo.owner(b) is None


# -- threads and asyncio tasks (RELIABILITY 15) ---------------------------------------

def test_thread_locality():
    router = pgo.Router(name="thread-local")
    entered, looked = threading.Event(), threading.Event()
    seen = {}

    def first():
        with pgo.use(router):
            seen["first"] = get_handler_name()
            entered.set()
            looked.wait()                           # stays inside while `second` looks
            seen["first_later"] = get_handler_name()

    def second():
        entered.wait()
        seen["second"] = get_handler_name()         # not affected by `first`
        looked.set()
        with pgo.use(router):
            seen["second_inside"] = get_handler_name()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"first": "thread-local", "first_later": "thread-local",
                    "second": ORIG, "second_inside": "thread-local"}
    assert get_handler_name() == ORIG


def test_one_use_object_shared_by_two_threads():
    # A use() made once (at module level, say) and entered by two threads
    # whose blocks interleave: each thread must get back its own previous
    # handler, as with numpy's per-thread policy.
    shared = pgo.use(pgo.Router(name="shared"))
    outer = pgo.Router(name="outer")
    a_in, a_out = threading.Event(), threading.Event()
    b_in = threading.Event()
    seen = {}

    def a():
        with pgo.use(outer):
            with shared:
                a_in.set()
                b_in.wait()
            a_out.set()
            seen["a"] = get_handler_name()

    def b():
        a_in.wait()
        with shared:
            b_in.set()
            a_out.wait()
        seen["b"] = get_handler_name()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": "outer", "b": ORIG}


def test_one_use_object_shared_by_two_tasks():
    shared = pgo.use(pgo.Router(name="shared"))
    outer = pgo.Router(name="outer")

    async def main():
        a_in, a_out, b_in = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def a():
            with pgo.use(outer):
                with shared:
                    a_in.set()
                    await b_in.wait()
                a_out.set()
                return get_handler_name()

        async def b():
            await a_in.wait()
            with shared:
                b_in.set()
                await a_out.wait()
            return get_handler_name()

        return await asyncio.gather(a(), b())

    assert asyncio.run(main()) == ["outer", ORIG]
    assert get_handler_name() == ORIG


def test_a_thread_started_inside_use_does_not_inherit_it():
    cache = pgo.CacheAllocator()
    with pgo.use(cache):
        name, own = in_thread(lambda: (get_handler_name(), pgo.owner(np.ones(100000))))
        here = np.ones(100000)
    assert name == ORIG and own is None
    assert pgo.owner(here) is cache


def test_install_reaches_new_threads_and_pool_workers():
    cache = pgo.CacheAllocator()
    go = threading.Event()
    early = {}

    def started_before_install():
        go.wait()
        early["name"] = get_handler_name()
        early["owner"] = pgo.owner(np.ones(100000))

    before = threading.Thread(target=started_before_install)
    before.start()
    router = pgo.install(cache)
    assert isinstance(router, pgo.Router) and pgo.installed() is router
    assert get_handler_name() == "pgo:CacheAllocator"
    go.set()
    before.join()
    assert early == {"name": ORIG, "owner": None}   # threads already running keep theirs

    def work(i):
        a = np.arange(20000, dtype=np.float64) * i
        return get_handler_name(), a

    name, a = in_thread(work, 1)
    assert name == "pgo:CacheAllocator" and pgo.owner(a) is cache
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(8)))
    with multiprocessing.pool.ThreadPool(2) as pool:
        results += pool.map(work, range(8, 12))
    for i, (name, arr) in enumerate(results):
        assert name == "pgo:CacheAllocator"
        assert pgo.owner(arr) is cache
        assert arr[-1] == 19999.0 * i
    assert pgo.uninstall() is router
    assert pgo.installed() is None and pgo.uninstall() is None
    assert get_handler_name() == ORIG
    del a, arr, results
    gc.collect()
    assert cache.live_blocks == 0


def test_adopt_thread_handler_reaches_a_context_copied_before_install():
    # Dask runs each task in a copy of a context made at its start-up,
    # before install(): adopt_thread_handler gives such a context pgo's
    # handler (pgo.dask calls it as a task starts executing).
    import contextvars

    from pgo._core._handler_hook import adopt_thread_handler
    early = contextvars.copy_context()
    assert early.run(adopt_thread_handler) is False          # nothing installed
    cache = pgo.CacheAllocator()
    router = pgo.install(cache)
    try:
        assert early.run(get_handler_name) == ORIG
        assert early.run(adopt_thread_handler) is True
        assert early.run(get_handler_name) == "pgo:CacheAllocator"
        assert early.run(lambda: pgo.owner(np.ones(100000))) is cache
        assert early.run(adopt_thread_handler) is False       # already has it
    finally:
        assert pgo.uninstall() is router
    gc.collect()
    assert cache.live_blocks == 0


def test_install_again_replaces():
    first, second = pgo.CacheAllocator(), pgo.CacheAllocator()
    r1 = pgo.install(first)
    a = np.ones(100000)
    r2 = pgo.install(second)
    assert pgo.installed() is r2 and r2 is not r1
    b = np.ones(100000)
    c = in_thread(lambda: np.ones(100000))
    assert pgo.owner(a) is first and pgo.owner(b) is second and pgo.owner(c) is second
    assert pgo.uninstall() is r2
    assert get_handler_name() == ORIG
    del a, b, c
    assert first.live_blocks == 0 and second.live_blocks == 0


def test_install_takes_routers_and_allocators_only():
    with pytest.raises(TypeError):
        pgo.install(datetime.datetime_CAPI)
    with pytest.raises(TypeError):
        pgo.install("cache")
    with pytest.raises(ValueError, match="threadsafe"):
        pgo.install(pgo.SlabAllocator(64))
    assert pgo.installed() is None and get_handler_name() == ORIG


def test_uninstall_is_process_wide():
    cache = pgo.CacheAllocator()
    router = pgo.install(cache)
    got_first, go_on = threading.Event(), threading.Event()
    out = {}

    def worker():
        a = np.full(100000, 7.0)
        out["before"] = pgo.owner(a)
        got_first.set()
        go_on.wait()
        b = np.full(100000, 8.0)
        out["after"] = pgo.owner(b)
        out["values"] = (float(a.sum()), float(b.sum()))
        del a                                       # a pgo block, freed after uninstall

    t = threading.Thread(target=worker)
    t.start()
    got_first.wait()
    assert pgo.uninstall() is router
    go_on.set()
    t.join()
    assert out["before"] is cache
    assert out["after"] is None                     # the thread kept the handler, but it is off
    assert out["values"] == (700000.0, 800000.0)
    assert cache.live_blocks == 0 and router.stats()["errors"] == 0


def test_asyncio_task_locality():
    cache = pgo.CacheAllocator()
    router = pgo.Router([pgo.SizeClass(0, None, cache)], name="task-local")

    async def main():
        seen = {}
        with pgo.use(router):
            async def inherited():
                return get_handler_name(), pgo.owner(np.ones(100000))
            child = asyncio.create_task(inherited())
        seen["child"] = await child
        seen["parent_after"] = get_handler_name()

        entered = asyncio.Event()

        async def enters_use():
            with pgo.use(router):
                seen["inside"] = get_handler_name()
                entered.set()
                await asyncio.sleep(0.01)
                seen["inside_later"] = get_handler_name()

        async def sibling():
            await entered.wait()
            seen["sibling"] = get_handler_name()
            seen["sibling_owner"] = pgo.owner(np.ones(100000))

        await asyncio.gather(asyncio.create_task(enters_use()), asyncio.create_task(sibling()))
        seen["parent_end"] = get_handler_name()
        return seen

    seen = asyncio.run(main())
    assert seen["child"] == ("task-local", cache)
    assert seen["parent_after"] == ORIG
    assert seen["inside"] == seen["inside_later"] == "task-local"
    assert seen["sibling"] == ORIG and seen["sibling_owner"] is None
    assert seen["parent_end"] == ORIG


# -- arrays outliving their handler (RELIABILITY 14) ------------------------------------

@pytest.mark.parametrize("how", ["use", "install"])
@pytest.mark.parametrize("kind", KINDS)
def test_arrays_outlive_the_handler_and_keep_the_allocator_alive(kind, how):
    alloc, router = routed(kind)
    ref = weakref.ref(alloc)
    if how == "use":
        with pgo.use(router):
            arrays = [np.arange(i * 100, i * 100 + 300, dtype=np.int64) for i in range(6)]
    else:
        pgo.install(router)
        arrays = [np.arange(i * 100, i * 100 + 300, dtype=np.int64) for i in range(6)]
        assert pgo.uninstall() is router
    assert all(pgo.owner(a) is alloc for a in arrays)
    del alloc, router
    gc.collect()
    assert ref() is not None                        # the arrays hold it
    for i in range(6):
        assert (arrays[i] == np.arange(i * 100, i * 100 + 300)).all()
    del arrays[::2]                                 # freed after the handler is gone
    gc.collect()
    assert ref() is not None and ref().live_blocks == 3
    for k, i in enumerate((1, 3, 5)):
        assert (arrays[k] == np.arange(i * 100, i * 100 + 300)).all()
    views = [a[::2] for a in arrays]
    del arrays
    gc.collect()
    assert ref() is not None and ref().live_blocks == 3
    assert int(views[0][1]) == 102
    del views
    gc.collect()
    assert ref() is None                            # collected with the last array


def test_handler_swapped_while_arrays_live():
    a1, r1 = routed("arena", "first")
    a2, r2 = routed("slab", "second")
    with pgo.use(r1):
        xs = [np.full(500, i, dtype=np.int32) for i in range(10)]
        with pgo.use(r2):
            ys = [np.full(500, -i, dtype=np.int32) for i in range(10)]
            del xs[:5]                              # freed while r2 is the handler
        assert a1.live_blocks == 5 and a2.live_blocks == 10
        del ys[:5]                                  # freed while r1 is the handler
    assert a1.live_blocks == 5 and a2.live_blocks == 5
    pgo.install(pgo.CacheAllocator())
    for k in range(5):
        assert (xs[k] == k + 5).all() and pgo.handler_name(xs[k]) == "first"
        assert (ys[k] == -(k + 5)).all() and pgo.handler_name(ys[k]) == "second"
    del xs, ys
    pgo.uninstall()
    assert a1.live_blocks == 0 and a2.live_blocks == 0
    assert r1.stats()["errors"] == 0 and r2.stats()["errors"] == 0


# -- numpy's awkward paths (RELIABILITY 16, 17) -------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_zero_size_arrays_and_size_mismatch_at_free(kind):
    alloc, router = routed(kind)
    with pgo.use(router):
        arrays = [np.empty([2, 0, 2]), np.zeros(0), np.empty((0,), dtype=np.int8),
                  np.ones((3, 0)), np.arange(0)]
        shrunk = np.arange(1000.0)
        shrunk.resize(10, refcheck=False)           # freed with a size numpy made up
        grown = np.arange(10.0)
        grown.resize((5, 0), refcheck=False)
        idx = np.argsort(np.array([3.0, 1.0, 2.0]))    # argsort frees NULL
    assert [a.size for a in arrays] == [0, 0, 0, 0, 0]
    assert all(pgo.owner(a) is alloc for a in arrays)
    assert len({address(a) for a in arrays}) == len(arrays)   # each has an address of its own
    assert (shrunk == np.arange(10.0)).all() and grown.size == 0
    assert idx.tolist() == [1, 2, 0]
    del arrays, shrunk, grown, idx
    gc.collect()
    assert alloc.live_blocks == 0
    assert router.stats()["errors"] == 0 and router.stats()["fallback"] == 0


def numbers_text(n):
    return " ".join(str(i) for i in range(n))


@pytest.mark.parametrize("kind", LARGE)
def test_realloc_paths(kind, tmp_path):
    alloc, router = routed(kind)
    text = numbers_text(6000)                       # more than numpy's first guess (4096)
    path = tmp_path / "numbers.txt"
    path.write_text(text)
    with pgo.use(router):
        small = np.fromstring("1 2 3 4 5", sep=" ")
        from_string = np.fromstring(text, sep=" ")  # grows by realloc, then shrinks
        from_file = np.fromfile(path, sep=" ")      # the same, without the GIL
        counted = np.fromstring(text, sep=" ", count=100)
        grown = np.arange(100.0)
        grown.resize(6000, refcheck=False)          # realloc bigger, in place
        shrunk = np.arange(3000, dtype=np.int64)
        shrunk.resize(10, refcheck=False)
        empty_then_grown = np.arange(50.0)
        empty_then_grown.resize(0, refcheck=False)  # realloc to (almost) 0
        empty_then_grown.resize(40, refcheck=False)
    expected = np.arange(6000.0)
    assert (small == [1, 2, 3, 4, 5]).all()
    assert (from_string == expected).all() and (from_file == expected).all()
    assert (counted == expected[:100]).all()
    assert (grown[:100] == expected[:100]).all() and (grown[100:] == 0).all()
    assert (shrunk == np.arange(10)).all()
    assert (empty_then_grown == 0).all() and empty_then_grown.shape == (40,)
    owners = [pgo.owner(x) for x in (small, from_string, from_file, counted, grown, shrunk,
                                     empty_then_grown)]
    assert owners == [alloc] * 7
    assert router.stats()["routes"][0]["allocations"] > 0
    del small, from_string, from_file, counted, grown, shrunk, empty_then_grown
    gc.collect()
    assert alloc.live_blocks == 0 and router.stats()["errors"] == 0


@pytest.mark.parametrize("kind", LARGE + ["system"])
def test_calloc_gives_zeros_on_reused_memory(kind):
    if kind == "system":
        alloc, router = None, pgo.Router([pgo.SizeClass(1 << 30, None, pgo.CacheAllocator())])
    else:
        alloc, router = routed(kind)
    reused = 0
    for n in (1, 8, 100, 1000, 5000, 40000):
        with pgo.use(router):
            a = np.empty(n, dtype=np.uint8)
            a.fill(0xAB)
            where = address(a)
            del a
            z = np.zeros(n, dtype=np.uint8)
            z2 = np.zeros((n, 2), dtype=np.int32)
        reused += address(z) == where
        assert not z.any() and not z2.any(), (kind, n)
        assert pgo.owner(z) is alloc
        del z, z2
    if kind != "system":
        assert reused == 6                          # the test really read reused memory
    else:
        assert reused >= 1


def test_argsort_and_friends():
    alloc, router = routed("cache")
    rng = np.random.default_rng(5)
    data = rng.permutation(10000)
    with pgo.use(router):
        order = np.argsort(data, kind="stable")
        parts = np.argpartition(data, 100)
        merged = np.sort(data, kind="mergesort")
        unique = np.unique(data % 97)
    assert (data[order] == np.arange(10000)).all()
    assert (data[parts[:100]] < 100).all()
    assert (merged == np.arange(10000)).all()
    assert (unique == np.arange(97)).all()
    del order, parts, merged, unique
    gc.collect()
    assert alloc.live_blocks == 0 and router.stats()["errors"] == 0


class Handler(ctypes.Structure):
    # numpy's PyDataMem_Handler
    _fields_ = [("name", ctypes.c_char * 127), ("version", ctypes.c_uint8),
                ("ctx", ctypes.c_void_p), ("malloc", ctypes.c_void_p),
                ("calloc", ctypes.c_void_p), ("realloc", ctypes.c_void_p),
                ("free", ctypes.c_void_p)]


_KEEP = []


def capsule_of(handler, name=b"mem_handler"):
    new = ctypes.pythonapi.PyCapsule_New
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    cname = ctypes.create_string_buffer(name)
    _KEEP.append((handler, cname))                  # the capsule points into both
    return new(ctypes.addressof(handler), ctypes.addressof(cname), None)


@pytest.mark.parametrize("case", ["version0", "no_callbacks", "version2", "missing_free",
                                  "other_name", "datetime"])
def test_malformed_capsule_is_refused(case):
    h = Handler(name=b"bogus", version=1)
    if case == "version0":
        h.version = 0
        h.malloc = h.calloc = h.realloc = h.free = 1
    elif case == "version2":
        h.version = 2
        h.malloc = h.calloc = h.realloc = h.free = 1
    elif case == "missing_free":
        h.malloc = h.calloc = h.realloc = 1
    capsule = {
        "other_name": lambda: capsule_of(h, b"not_mem_handler"),
        "datetime": lambda: datetime.datetime_CAPI,
    }.get(case, lambda: capsule_of(h))()
    with pytest.raises(ValueError, match="capsule"):
        pgo.use(capsule)
    assert get_handler_name() == ORIG
    assert np.arange(5).sum() == 10


MALLOC = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
CALLOC = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t)
REALLOC = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
FREE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


def handler_struct(capsule):
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype = ctypes.c_void_p
    get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return Handler.from_address(get(capsule, b"mem_handler"))


@pytest.mark.parametrize("kind", KINDS)
def test_callbacks_directly(kind):
    # numpy's handler contract, called as numpy calls it (without the GIL):
    # realloc(NULL) allocates, realloc to 0 keeps a valid block, realloc
    # keeps the contents, free(NULL) does nothing, overflowing or impossible
    # requests return NULL, and free ignores the size it is given.
    alloc, router = routed(kind, name="direct")
    u = pgo.use(router)
    h = handler_struct(u.capsule)
    assert h.name == b"direct" and h.version == 1
    ctx = h.ctx
    malloc, calloc = MALLOC(h.malloc), CALLOC(h.calloc)
    realloc, free = REALLOC(h.realloc), FREE(h.free)

    p = realloc(ctx, None, 100)
    assert p and router.owner_of(p) is alloc
    ctypes.memmove(p, bytes(range(100)), 100)
    p = realloc(ctx, p, 3000)
    assert p and ctypes.string_at(p, 100) == bytes(range(100))
    p = realloc(ctx, p, 40)
    assert p and ctypes.string_at(p, 40) == bytes(range(40))
    p = realloc(ctx, p, 0)
    assert p
    free(ctx, p, 12345)                             # the size is ignored
    free(ctx, None, 0)
    z = calloc(ctx, 100, 8)
    assert z and ctypes.string_at(z, 800) == bytes(800)
    free(ctx, z, 0)
    assert not calloc(ctx, 1 << 62, 8)              # n * size overflows
    fallback = router.stats()["fallback"]
    assert not malloc(ctx, 1 << 62)                 # nobody can: NULL, not a crash
    # Routed (all but the slab's bounded class), refused, tried on the system.
    assert router.stats()["fallback"] == fallback + (kind != "slab")
    blocks = [malloc(ctx, n) for n in (0, 0, 1, 16, 17, 4096)]
    assert all(blocks) and len(set(blocks)) == len(blocks)
    assert all(b % 16 == 0 for b in blocks)
    for b in blocks:
        free(ctx, b, 0)
    assert alloc.live_blocks == 0
    assert router.stats()["errors"] == 0


@pytest.mark.parametrize("target", [None, 3, "pgo", object(), pgo.SizeClass, [1]])
def test_use_of_something_else_is_a_type_error(target):
    with pytest.raises(TypeError):
        pgo.use(target)
    assert get_handler_name() == ORIG


# -- Router validation ----------------------------------------------------------------------

def test_router_validation():
    cache = pgo.CacheAllocator()
    arena = pgo.ArenaAllocator(1 << 16, threadsafe=True)
    with pytest.raises(ValueError, match="overlap"):
        pgo.Router([pgo.SizeClass(0, 100, cache), pgo.SizeClass(100, 200, arena)])
    with pytest.raises(ValueError, match="overlap"):
        pgo.Router([pgo.SizeClass(50, 60, arena), pgo.SizeClass(0, None, cache)])
    pgo.Router([pgo.SizeClass(0, 99, cache), pgo.SizeClass(100, 200, arena)])   # adjacent is fine
    with pytest.raises(ValueError, match="threadsafe"):
        pgo.Router([pgo.SizeClass(0, None, pgo.ArenaAllocator(1 << 16))])
    with pytest.raises(ValueError, match="threadsafe"):
        pgo.use(pgo.StackAllocator(1 << 16))
    slab = pgo.SlabAllocator(256, align=16, threadsafe=True)
    with pytest.raises(ValueError, match="max_bytes <= block_size"):
        pgo.Router([pgo.SizeClass(0, 257, slab)])
    with pytest.raises(ValueError, match="max_bytes <= block_size"):
        pgo.Router([pgo.SizeClass(0, None, slab)])
    pgo.Router([pgo.SizeClass(0, 256, slab)])
    with pytest.raises(ValueError, match="align=16"):
        pgo.Router([pgo.SizeClass(0, 8, pgo.SlabAllocator(8, threadsafe=True))])
    many = [pgo.SizeClass(i * 10, i * 10 + 9, cache) for i in range(17)]
    with pytest.raises(ValueError, match="at most 16"):
        pgo.Router(many)
    pgo.Router(many[:16])
    with pytest.raises(TypeError):
        pgo.Router([(0, None, cache)])


@pytest.mark.parametrize("name", ["", "x" * 127, "é" * 64, None, 5])
def test_router_bad_names(name):
    with pytest.raises(ValueError, match="name"):
        pgo.Router(name=name)


@pytest.mark.parametrize("name", ["p", "x" * 126, "é" * 63])
def test_router_longest_names(name):
    with pgo.use(pgo.Router(name=name)):
        assert get_handler_name() == name


def test_size_class_validation():
    cache = pgo.CacheAllocator()
    with pytest.raises(TypeError):
        pgo.SizeClass(0, None, object())
    with pytest.raises(TypeError):
        pgo.SizeClass(0, None, pgo.Allocator)
    with pytest.raises(ValueError):
        pgo.SizeClass(-1, None, cache)
    with pytest.raises(ValueError):
        pgo.SizeClass(10, 9, cache)
    with pytest.raises(ValueError):
        pgo.SizeClass(True, None, cache)
    with pytest.raises(ValueError):
        pgo.SizeClass(0, 1.5, cache)
    sc = pgo.SizeClass(0, 10, cache)
    assert sc == pgo.SizeClass(0, 10, cache) and sc != pgo.SizeClass(0, 11, cache)
    assert repr(sc).startswith("SizeClass(0, 10, <CacheAllocator")


def test_router_routes_by_size_and_reports():
    slab = pgo.SlabAllocator(256, align=16, threadsafe=True)
    arena = pgo.ArenaAllocator(1 << 20, threadsafe=True)
    cache = pgo.CacheAllocator()
    router = pgo.Router([pgo.SizeClass(1 << 16, None, cache), pgo.SizeClass(0, 256, slab),
                         pgo.SizeClass(1024, (1 << 16) - 1, arena)], name="three")
    assert [sc.allocator for sc in router.size_classes] == [slab, arena, cache]
    with pgo.use(router):
        s = np.ones(32)                             # 256 B
        gap = np.ones(100)                          # 800 B: the system path
        a = np.ones(1000)
        c = np.ones(10000)
    assert [pgo.owner(x) for x in (s, gap, a, c)] == [slab, None, arena, cache]
    assert router.owner_of(address(s)) is slab and router.owner_of(address(gap)) is None
    assert router.owner_of(address(c)) is cache
    st = router.stats()
    assert st["name"] == "three" and st["fallback"] == 0 and st["errors"] == 0
    # np.ones fills from a 0-d array: the slab served that one too.
    assert [min(r["allocations"], 1) for r in st["routes"]] == [1, 1, 1]
    assert [r["allocations"] for r in st["routes"]][1:] == [1, 1]
    assert [r["allocator"] for r in st["routes"]] == ["SlabAllocator", "ArenaAllocator",
                                                     "CacheAllocator"]
    assert "three" in repr(router)


def test_system_blocks_inside_the_cache_address_span_are_freed():
    # A cache's blocks come from the heap (small classes) and from mmap (big
    # ones), so the span [lowest, highest) of its addresses covers memory it
    # does not own: system-path blocks the router hands out.  Freeing one
    # must give it to the system, not count it as an error and leak it.
    cache = pgo.CacheAllocator()
    router = pgo.Router([pgo.SizeClass(2048, 4096, cache), pgo.SizeClass(MiB, None, cache)],
                        small_cache=False)
    with pgo.use(router):
        low = np.empty(3000, dtype=np.uint8)       # a page from the heap
        high = np.empty(64 * MiB, dtype=np.uint8)  # a fresh mapping, above it
        # Enough heap blocks that some lie above `low`, wherever it is.
        system = [np.empty(n, dtype=np.uint8) for n in (100, 1000, 100000) for _ in range(100)]
    lo, hi = sorted((address(low), address(high)))
    inside = [a for a in system if lo < address(a) < hi]
    if not inside:
        pytest.skip("no system block landed between the cache's blocks on this malloc")
    assert all(pgo.owner(a) is None for a in system)
    del system, inside
    gc.collect()
    assert router.stats()["errors"] == 0


def test_another_allocators_blocks_inside_the_cache_address_span_are_freed():
    # The same, for a slab routed after the cache: its reservation lies
    # between two cache blocks, and the cache must not claim (and keep) the
    # slab's blocks.  Blocks of 64 MiB are fresh mappings (above glibc's
    # largest mmap threshold), each put in the highest gap that fits: the
    # slab's 64 GiB reservation, made after `high`, lands below it, and the
    # blocks made after the slab fill the gaps above it, then go below it.
    cache = pgo.CacheAllocator()
    high = cache.alloc(64 * MiB)
    slab = pgo.SlabAllocator(8192, align=16, threadsafe=True)
    router = pgo.Router([pgo.SizeClass(0, 4096, cache), pgo.SizeClass(4097, 8192, slab)])
    with pgo.use(router):
        a = np.full(6000, 3, dtype=np.uint8)
    lows = []
    while len(lows) < 16 and (not lows or lows[-1].address > address(a)):
        lows.append(cache.alloc(64 * MiB))
    if not lows[-1].address < address(a) < high.address:
        pytest.skip(f"the slab's reservation is not between the cache's blocks here "
                    f"({lows[-1].address:#x} {address(a):#x} {high.address:#x})")
    for b in [high] + lows:
        cache.free(b)
    cache.trim()
    assert pgo.owner(a) is slab and (a == 3).all()
    del a
    gc.collect()
    assert router.stats()["errors"] == 0
    assert slab.live_blocks == 0
    slab.reset()


# -- fallback, reset, stats ------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: pgo.StackAllocator(4096, threadsafe=True),
    lambda: pgo.ArenaAllocator(1 << 16, max_bytes=1 << 16, threadsafe=True),
    lambda: pgo.LinearAllocator(8192, threadsafe=True),
    lambda: pgo.SlabAllocator(2048, align=16, max_bytes=1 << 16, slots_per_slab=4,
                              threadsafe=True),
], ids=["stack", "arena", "linear", "slab"])
def test_exhausted_allocator_falls_back_to_the_system(make):
    alloc = make()
    hi = alloc.block_size if isinstance(alloc, pgo.SlabAllocator) else None
    router = pgo.Router([pgo.SizeClass(0, hi, alloc)], name="small")
    arrays, fell_back = [], []
    with pgo.use(router):
        for i in range(60):
            before = router.stats()["fallback"]
            a = np.empty(200, dtype=np.int64) if i % 2 else np.zeros(200, dtype=np.int64)
            fell_back.append(router.stats()["fallback"] - before)
            a.fill(i)                               # (a[:] = i would allocate a scalar)
            arrays.append(a)
    owners = [pgo.owner(a) for a in arrays]
    assert fell_back == [int(o is None) for o in owners]
    assert 0 < sum(fell_back) < len(arrays)
    assert router.stats()["fallback"] == sum(fell_back)
    for i, a in enumerate(arrays):
        assert (a == i).all()
        assert pgo.handler_name(a) == "small"       # made by the handler all the same
    del arrays, a
    gc.collect()
    assert alloc.live_blocks == 0 and router.stats()["errors"] == 0
    alloc.reset()


@pytest.mark.parametrize("kind", KINDS)
def test_reset_refused_while_handler_arrays_live(kind):
    alloc, router = routed(kind)
    with pgo.use(router):
        a = np.arange(1000.0)
        b = np.ones(50)
    view = a[::3]
    del a
    with pytest.raises(pgo.AllocatorError, match="2 block"):
        alloc.reset()
    del b
    with pytest.raises(pgo.AllocatorError, match="1 block"):
        alloc.reset()
    assert view[2] == 6.0                           # nothing changed
    del view
    gc.collect()
    alloc.reset()
    st = alloc.stats()
    assert st["live_blocks"] == 0 and st["in_use"] == 0


@pytest.mark.parametrize("kind", LARGE)
def test_live_blocks_back_to_zero(kind):
    alloc, router = routed(kind)
    with pgo.use(router):
        keep = [np.full(n, n, dtype=np.int16) for n in (1, 7, 64, 1000, 30000)]
        for _ in range(50):
            t = np.arange(500) * 2 + 1
        assert alloc.live_blocks >= len(keep)
    st = alloc.stats()
    assert st["allocations"] >= 100 and st["live_blocks"] == len(keep) + 1
    del keep, t
    gc.collect()
    st = alloc.stats()
    assert st["live_blocks"] == 0 and st["in_use"] == 0
    assert st["allocations"] == st["frees"] >= 100
    assert router.stats()["errors"] == 0


def test_linear_rewinds_when_its_last_array_dies():
    linear = pgo.LinearAllocator(1 * MiB, threadsafe=True)
    with pgo.use(linear):
        first = np.ones(100)
        base = address(first)
        rest = [np.ones(n) for n in (10, 1000, 3)]
    assert linear.in_use > 0 and linear.live_blocks == 4
    del rest
    assert linear.in_use > 0 and linear.live_blocks == 1
    del first
    assert linear.in_use == 0 and linear.live_blocks == 0
    with pgo.use(linear):
        again = np.ones(100)
    assert address(again) == base
    del again
    for _ in range(200):                            # a loop of temporaries reuses one buffer
        with pgo.use(linear):
            x = np.arange(10000.0) + 1
        del x
    assert linear.in_use == 0 and linear.peak < 200000


def test_linear_rewinds_when_a_block_dies_after_the_arrays():
    # linear.pyx: "once the last of them (and every Python Block) is gone
    # the buffer rewinds, as reset() would" -- whichever of the two goes last.
    linear = pgo.LinearAllocator(1 * MiB, threadsafe=True)
    block = linear.alloc(100)
    with pgo.use(linear):
        a = np.ones(100)
    del a
    assert linear.live_blocks == 1 and linear.in_use > 0   # the Block still lives
    del block
    assert linear.live_blocks == 0
    assert linear.in_use == 0
    stats = linear.stats()
    assert stats["rewinds"] == 1 and stats["resets"] == 0   # a rewind is not a reset()


def test_linear_does_not_rewind_under_c_level_blocks(cext):
    # C code's linear_alloc blocks are not counted anywhere, so once C code
    # has allocated, only reset() may rewind: the handler's last array
    # going must leave the C block's bytes alone.
    linear = pgo.LinearAllocator(1 * MiB, threadsafe=True)
    address = cext.linear_alloc_c(linear, 64)
    ctypes.memset(address, 0x3C, 64)
    with pgo.use(linear):
        a = np.ones(1000)
    del a
    assert linear.live_blocks == 0 and linear.stats()["rewinds"] == 0
    with pgo.use(linear):
        b = np.zeros(1000)          # bumps past the C block, never over it
    assert ctypes.string_at(address, 64) == b"\x3c" * 64
    del b
    linear.reset()                  # the C caller's way to give it up
    with pgo.use(linear):
        c = np.ones(10)
    del c
    assert linear.stats()["rewinds"] == 1


# -- the per-thread small-block cache ---------------------------------------------------------

def small_cache_run(router):
    """In a fresh thread: small arrays made and dropped under `router`, then
    made again.  Returns (blocks cached after the drop, blocks reused, arrays
    made, whether np.zeros over the cache gave zeros)."""
    def body():
        assert numpy_bridge._small_cache_count_for_tests() == 0
        with pgo.use(router):
            arrays = [np.empty(k, dtype=np.uint8) for k in range(1, 200, 7)]
            first = {address(a) for a in arrays}
            del arrays
            cached = numpy_bridge._small_cache_count_for_tests()
            again = [np.empty(k, dtype=np.uint8) for k in range(1, 200, 7)]
            reused = len(first & {address(a) for a in again})
            zeros = np.zeros(150, dtype=np.uint8)
            zeros_ok = not zeros.any()
            del again, zeros
        return cached, reused, len(first), zeros_ok
    return in_thread(body)


def test_small_arrays_reuse_blocks_through_the_thread_cache():
    router = pgo.Router([pgo.SizeClass(MiB, None, pgo.CacheAllocator())])
    cached, reused, made, zeros_ok = small_cache_run(router)
    assert zeros_ok
    if pgo.DEBUG_BUILD:
        assert cached == 0                          # off in the test build
    else:
        assert cached == made                       # every freed block was kept...
        assert reused == made                       # ...and handed out again


def test_small_cache_can_be_turned_off():
    router = pgo.Router([pgo.SizeClass(MiB, None, pgo.CacheAllocator())], small_cache=False)
    cached, _, _, zeros_ok = small_cache_run(router)
    assert cached == 0 and zeros_ok


def test_routed_small_sizes_bypass_the_small_cache():
    slab = pgo.SlabAllocator(1024, align=16, threadsafe=True)
    router = pgo.Router([pgo.SizeClass(0, 1024, slab)])
    cached, reused, made, zeros_ok = small_cache_run(router)
    assert cached == 0 and zeros_ok and slab.live_blocks == 0
    assert reused == made                           # the slab reuses its slots itself


def test_many_short_threads_release_their_small_caches():
    router = pgo.Router([pgo.SizeClass(MiB, None, pgo.CacheAllocator())])
    counts, errors = [], []

    def body(i):
        try:
            with pgo.use(router):
                xs = [np.full(k, i, dtype=np.uint8) for k in range(1, 300, 13)]
                ok = all((x == i % 256).all() for x in xs)
                del xs
                counts.append((numpy_bridge._small_cache_count_for_tests(), ok))
        except BaseException as e:
            errors.append(e)

    for start in range(0, 200, 20):
        threads = [threading.Thread(target=body, args=(i,)) for i in range(start, start + 20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors and len(counts) == 200
    assert all(ok for _, ok in counts)
    if not pgo.DEBUG_BUILD:
        assert all(n > 0 for n, _ in counts)
    # Threads under install() too, their arrays freed by the main thread.
    pgo.install(router)
    handed = []
    threads = [threading.Thread(target=lambda: handed.append(np.ones(50))) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pgo.uninstall()
    assert all(h.sum() == 50 for h in handed)
    del handed
    gc.collect()
    assert router.stats()["errors"] == 0


# -- many threads, one router -----------------------------------------------------------------

def test_thread_stress_under_one_installed_router():
    slab = pgo.SlabAllocator(256, align=16, threadsafe=True)
    arena = pgo.ArenaAllocator(MiB, threadsafe=True)
    cache = pgo.CacheAllocator(max_cached_bytes=128 * MiB)
    router = pgo.Router([pgo.SizeClass(0, 256, slab),               # 257..4096: system path
                         pgo.SizeClass(4097, 256 << 10, arena),
                         pgo.SizeClass((256 << 10) + 1, None, cache)], name="stress")
    pgo.install(router)
    handoff, handoff_lock = [], threading.Lock()
    mismatches, errors, ops = [], [], []
    deadline = time.monotonic() + 5.0

    def check(cond, what):
        if not cond:
            mismatches.append(what)

    def work(tid):
        rnd = random.Random(tid)
        rng = np.random.default_rng(tid)
        done = 0
        try:
            assert get_handler_name() == "stress"
            while time.monotonic() < deadline:
                n = int(2 ** rnd.uniform(0, 21))    # float64s: 8 B .. 16 MiB
                a = np.arange(n, dtype=np.float64)
                check(a.sum() == n * (n - 1) / 2, ("sum", n))
                b = a * 2.0 + 1.0
                check(b[0] == 1.0 and b[-1] == 2.0 * n - 1, ("ufunc", n))
                c = np.concatenate([a, b])
                check(c.size == 2 * n and c[n - 1] == n - 1 and c[n] == 1.0, ("concat", n))
                z = np.zeros(n)
                check(not z.any(), ("zeros", n))
                if n <= 2000:
                    f = np.fromstring(numbers_text(n), sep=" ")
                    check(np.array_equal(f, a), ("fromstring", n))
                if n <= 1 << 16:
                    p = a[rng.permutation(n)]
                    check(np.array_equal(np.sort(p), a), ("sort", n))
                    check(np.array_equal(p[np.argsort(p)], a), ("argsort", n))
                if rnd.random() < 0.3:
                    with handoff_lock:
                        handoff.append((c, n))
                        other = handoff.pop(rnd.randrange(len(handoff))) if len(handoff) > 16 else None
                    if other is not None:               # freed on another thread than its maker's
                        oc, on = other
                        check(oc.sum() == on * (on - 1) / 2 + on * on, ("handoff", on))
                done += 1
            ops.append(done)
        except BaseException as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pgo.uninstall()
    handoff.clear()
    gc.collect()
    assert not errors, errors
    assert not mismatches, mismatches[:10]
    assert len(ops) == 8 and min(ops) > 0
    st = router.stats()
    assert all(r["allocations"] > 0 for r in st["routes"]), st   # every allocator was used
    for alloc in (slab, arena, cache):
        assert alloc.live_blocks == 0, alloc.stats()
    assert st["errors"] == 0 and st["fallback"] == 0
    cs = cache.stats()
    assert cs["hits"] + cs["misses"] == cs["allocations"] == cs["frees"]
    assert cs["in_use"] == 0 and cs["hits"] > 0


FORK_UNDER_LOAD = textwrap.dedent("""
    import os, threading, time
    import numpy as np
    import pgo
    first, second = pgo.CacheAllocator(1 << 30), pgo.CacheAllocator(1 << 30)
    pgo.install(pgo.Router([pgo.SizeClass(0, 1 << 20, first),
                            pgo.SizeClass((1 << 20) + 1, None, second)]))
    stop = False
    def trimmer():                # holds a mutex without the GIL, over and over
        while not stop:
            blocks = [second.alloc(1 << 16) for _ in range(100)]
            del blocks
            second.trim()
    def allocator():              # numpy's callbacks wait on mutexes with the GIL held
        while not stop:
            x = np.empty(1000)
            del x
    for target in (trimmer, allocator):
        threading.Thread(target=target, daemon=True).start()
    forks, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < 2:
        pid = os.fork()
        if pid == 0:
            x = np.zeros(1000) + 1      # the child can allocate through pgo
            os._exit(0 if x.sum() == 1000 else 1)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        forks += 1
    stop = True
    print("forks", forks)
""")


def test_fork_while_threads_use_the_handler_does_not_deadlock():
    # RELIABILITY 18: fork() takes every allocator mutex inside fork itself
    # (pthread_atfork), not from a Python hook that would wait for them with
    # the GIL released while numpy's callbacks wait for them holding it.
    proc = subprocess.run([sys.executable, "-c", FORK_UNDER_LOAD], capture_output=True,
                          text=True, timeout=60, cwd=tempfile.gettempdir(),
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) > 10
