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
         "arena": lambda: pgo.ArenaAllocator(4096)}[kind]()
    b = a.alloc(64)
    address = b.address
    ctypes.memset(address, 1, 64)
    if kind in ("slab", "stack"):
        a.free(b)
    else:
        del b
        a.reset()
    if mode == "use-after-free":
        ctypes.string_at(address, 8)
    print("finished")
""")


def run_under_valgrind(tmp_path, kind, mode):
    supp = tmp_path / "python.supp"
    supp.write_text(SUPPRESSIONS)
    prog = tmp_path / "prog.py"
    prog.write_text(PROGRAM)
    python = os.path.realpath(sys.executable)      # not a shell shim valgrind would trace
    env = dict(os.environ, PYTHONMALLOC="malloc",
               PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run(
        ["valgrind", "-q", f"--suppressions={supp}", python, str(prog), kind, mode],
        capture_output=True, text=True, timeout=300, env=env, cwd=tempfile.gettempdir())
    assert "finished" in proc.stdout, proc.stderr[-3000:]
    return re.findall(r"Invalid (?:read|write) of size \d+.*?(?:\n==\d+== \n|\Z)",
                      proc.stderr, re.S)


@pytest.mark.parametrize("kind", ["slab", "stack", "linear", "arena"])
def test_read_after_free_is_flagged_and_clean_use_is_not(tmp_path, kind):
    assert run_under_valgrind(tmp_path, kind, "clean") == []
    reports = run_under_valgrind(tmp_path, kind, "use-after-free")
    # Exactly the deliberate read: ctypes.string_at copying from the freed
    # block.  (Valgrind describes the address by its pool block, or for a
    # stack/linear/arena buffer, by the malloc'd buffer around it.)
    assert len(reports) == 1, reports
    assert "PyBytes_FromStringAndSize" in reports[0], reports[0]
