"""RELIABILITY 24: in the test build each allocator is a valgrind mempool, so
memcheck sees pgo's blocks as it sees malloc's.  A deliberate read of a freed
block must be flagged (the control that proves the annotations work), and the
same program without that read must not be.

Runs only in the test build (PGO_TEST_BUILD=1) on a machine with valgrind.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

import pgo

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not pgo.DEBUG_BUILD, reason="valgrind annotations exist only in the test build"),
    pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed"),
]

# Noise from outside pgo, seen on this machine's glibc and CPython: ld.so's
# rpath strncmp and an AVX2 wmemcmp that read whole words past a string.
SUPPRESSIONS = textwrap.dedent("""
    {
       ldso_rpath_strncmp
       Memcheck:Addr8
       fun:strncmp
       fun:is_dst
    }
    {
       wmemcmp_avx2_overread
       Memcheck:Addr32
       fun:__wmemcmp_avx2_movbe
    }
""")

PROGRAM = textwrap.dedent("""
    import ctypes, sys
    import pgo
    kind, mode = sys.argv[1], sys.argv[2]
    a = {"slab": lambda: pgo.SlabAllocator(64), "stack": lambda: pgo.StackAllocator(4096),
         "linear": lambda: pgo.LinearAllocator(4096),
         "arena": lambda: pgo.ArenaAllocator(4096),
         "cache": lambda: pgo.CacheAllocator(1 << 20),
         "mapped": lambda: pgo.MappedPool(1 << 16),
         "numa": lambda: pgo.NUMAAllocator(1 << 16),
         "hierarchical": lambda: pgo.HierarchicalAllocator(64 << 20),
         "compacting": lambda: pgo.CompactingAllocator(),
         "adaptive": lambda: pgo.AdaptiveAllocator(64)}[kind]()
    b = a.alloc(64)
    address = b.address
    ctypes.memset(address, 1, 64)
    if kind in ("slab", "stack", "cache", "mapped", "numa", "hierarchical", "compacting",
                "adaptive"):
        a.free(b)
    else:
        del b
        a.reset()
    if mode == "use-after-free":
        ctypes.string_at(address, 8)
    print("finished")
""")


# numpy's own allocations through every allocator behind a handler (and a
# router), with the paths numpy takes least often: realloc without the GIL
# (fromstring with sep), resize in place, calloc, zero-size arrays, argsort.
NUMPY_PROGRAM = textwrap.dedent("""
    import gc, sys
    import numpy as np
    import pgo
    kinds = {"slab": pgo.SlabAllocator(4096, align=16, threadsafe=True),
             "stack": pgo.StackAllocator(1 << 22, threadsafe=True),
             "linear": pgo.LinearAllocator(1 << 22, threadsafe=True),
             "arena": pgo.ArenaAllocator(1 << 20, threadsafe=True),
             "cache": pgo.CacheAllocator(),
             "mapped": pgo.MappedPool(1 << 22, threadsafe=True),
             "numa": pgo.NUMAAllocator(1 << 22),
             "hierarchical": pgo.HierarchicalAllocator(64 << 20),
             "compacting": pgo.CompactingAllocator(threadsafe=True),
             "adaptive": pgo.AdaptiveAllocator(64, threadsafe=True)}
    for name, a in kinds.items():
        with pgo.use(a):
            xs = [np.ones(n) * 2 for n in (1, 10, 100, 300)]
            z = np.zeros(50)
            y = np.fromstring(" ".join(["3"] * 2000), sep=" ")
            w = np.empty([2, 0, 2])
            s = np.argsort(np.arange(100)[::-1])
            xs[1].resize(500, refcheck=False)
            assert y.sum() == 6000 and z.sum() == 0 and xs[2].sum() == 200
        del xs, z, y, w, s
        gc.collect()
        assert a.stats()["live_blocks"] == 0, (name, a.stats())
    router = pgo.Router([pgo.SizeClass(1, 512, pgo.SlabAllocator(512, align=16, threadsafe=True))])
    with pgo.use(router):
        for i in range(200):
            v = np.ones(i) + 1
            q = np.fromstring(" ".join(["1"] * (i + 1)), sep=" ")
    assert router.stats()["errors"] == 0
    print("finished")
""")


def run_under_valgrind(tmp_path, kind, mode, program=PROGRAM):
    supp = tmp_path / "python.supp"
    supp.write_text(SUPPRESSIONS)
    prog = tmp_path / "prog.py"
    prog.write_text(program)
    python = os.path.realpath(sys.executable)      # not a shell shim valgrind would trace
    env = dict(os.environ, PYTHONMALLOC="malloc",
               PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run(
        ["valgrind", "-q", f"--suppressions={supp}", python, str(prog), kind, mode],
        capture_output=True, text=True, timeout=300, env=env, cwd=tempfile.gettempdir())
    assert "finished" in proc.stdout, proc.stderr[-3000:]
    return re.findall(r"Invalid (?:read|write) of size \d+.*?(?:\n==\d+== \n|\Z)",
                      proc.stderr, re.S)


@pytest.mark.parametrize("kind", ["slab", "stack", "linear", "arena", "cache", "mapped",
                                  "numa", "hierarchical", "compacting", "adaptive"])
def test_read_after_free_is_flagged_and_clean_use_is_not(tmp_path, kind):
    # The use-after-free run must report exactly the deliberate read, so it
    # also shows the allocator's own accesses are clean; one separate clean
    # run shows that a clean program reports nothing at all (valgrind runs
    # are CI's slowest tests: about 8 s each).
    if kind == "slab":
        assert run_under_valgrind(tmp_path, kind, "clean") == []
    reports = run_under_valgrind(tmp_path, kind, "use-after-free")
    # Exactly the deliberate read: ctypes.string_at copying from the freed
    # block.  (Valgrind describes the address by its pool block, or for a
    # stack/linear/arena buffer, by the malloc'd buffer around it.)
    assert len(reports) == 1, reports
    assert "PyBytes_FromStringAndSize" in reports[0], reports[0]


def test_numpy_through_every_allocator_is_clean(tmp_path):
    assert run_under_valgrind(tmp_path, "-", "-", program=NUMPY_PROGRAM) == []
