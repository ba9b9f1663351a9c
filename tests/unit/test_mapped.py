"""MappedPool: extents, sharing between processes, crash cleanup, fork, trim.

The generic allocator tests (test_allocators, test_misuse, test_numpy_bridge,
test_threads) run on MappedPool too; these are the parts only it has.
"""

import ctypes
import os
import resource
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

import pgo
from pgo._core.mapped import MAX_CAPACITY

KiB, MiB = 1 << 10, 1 << 20


def child_options():
    """The environment and working directory of a child that imports the pgo
    under test (not a source tree in the current directory)."""
    return {"env": dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)),
            "cwd": tempfile.gettempdir()}


def run_python(code, *args):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, timeout=60, **child_options())


def memfd_holders(name):
    """The processes that still hold the memfd named `name` open or mapped."""
    needle = f"memfd:{name}"
    holders = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle in (proc / "maps").read_text():
                holders.append(int(proc.name))
                continue
            for fd in (proc / "fd").iterdir():
                if needle in os.readlink(fd):
                    holders.append(int(proc.name))
                    break
        except OSError:
            continue
    return holders


# -- extents ------------------------------------------------------------------------

def test_frees_merge_with_both_neighbours_back_into_one_extent():
    p = pgo.MappedPool(64 * KiB)
    blocks = [p.alloc(1000) for _ in range(8)]       # 16 units each
    assert p.stats()["free_extents"] == 1               # the tail
    for i in (1, 3, 5):
        p.free(blocks[i])
    assert p.stats()["free_extents"] == 4
    p.free(blocks[2])                                    # joins 1 and 3
    assert p.stats()["free_extents"] == 3
    for i in (0, 4, 6, 7):
        p.free(blocks[i])
    st = p.stats()
    assert st["free_extents"] == 1 and st["largest_free"] == st["capacity"] == 64 * KiB
    assert st["in_use"] == 0 and st["peak"] == 8 * 1024


def test_blocks_are_aligned_and_a_freed_extent_is_reused_first_fit():
    p = pgo.MappedPool(1 * MiB)
    for align in (64, 128, 1024, 4096):
        b = p.alloc(100, align)
        assert b.address % align == 0
    first = p.alloc(4000)
    second = p.alloc(64)
    offset = p.offset(first)
    p.free(first)
    again = p.alloc(3000)                 # fits in the hole `first` left
    assert p.offset(again) == offset
    assert p.offset(second) > offset


def test_out_of_room_names_the_largest_extent_and_changes_nothing():
    p = pgo.MappedPool(16 * KiB)
    keep = [p.alloc(2000) for _ in range(8)]         # 32 units each (with a test-build canary)
    for b in keep[::2]:
        p.free(b)                          # 4 holes of 2 KiB: 8 KiB free, none larger
    before = p.stats()
    with pytest.raises(MemoryError, match=r"no free extent holds 4,096 bytes: 8,192 of 16,384 "
                                          r"bytes are free in 4 extent\(s\), the largest 2,048"):
        p.alloc(4096)
    after = p.stats()
    assert after.pop("failed") == before.pop("failed") + 1
    assert after == before
    with pytest.raises(MemoryError, match="more than it can ever hold"):
        p.alloc(32 * KiB)


def test_bad_arguments_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="capacity of at least 1 byte"):
        pgo.MappedPool(0)
    with pytest.raises(ValueError, match="at most"):
        pgo.MappedPool(MAX_CAPACITY + 1)
    with pytest.raises(ValueError, match="pass one of them"):
        pgo.MappedPool(4096, shared=True, path=tmp_path / "x")
    with pytest.raises(OverflowError):
        pgo.MappedPool(-1)
    existing = tmp_path / "taken"
    existing.write_bytes(b"data")
    with pytest.raises(FileExistsError, match="attach to it with MappedPool.attach"):
        pgo.MappedPool(4096, path=existing)
    assert existing.read_bytes() == b"data"          # nothing lost
    with pytest.raises(FileNotFoundError, match="no pool at"):
        pgo.MappedPool.attach(tmp_path / "missing")
    with pytest.raises(ValueError, match="not whole pages up to .*: it is not a MappedPool"):
        pgo.MappedPool.attach(existing)
    with pytest.raises(FileNotFoundError, match="cannot create .*No such file or directory"):
        pgo.MappedPool(4096, path=tmp_path / "no-such-dir" / "pool")
    with pytest.raises(FileNotFoundError, match=r"no pool named pgo-mapped-1-5-deadbeef: "
                                                r"the process that made it \(pid 1\)"):
        pgo.MappedPool.attach("pgo-mapped-1-5-deadbeef")


def test_offset_and_view_check_their_bounds():
    p = pgo.MappedPool(64 * KiB)
    a = p.zeros(100)
    with pytest.raises(ValueError, match="not inside this pool"):
        p.offset(np.zeros(100))
    with pytest.raises(ValueError, match="run past the pool"):
        p.view(64 * KiB - 8, 2, np.float64)
    with pytest.raises(ValueError, match="run past the pool"):
        p.view(1 << 40, 1, np.uint8)
    v = p.view(p.offset(a), (10, 10))
    v[3, 4] = 7.0
    assert a[34] == 7.0
    del a, v


def test_a_view_keeps_the_pool_mapped():
    p = pgo.MappedPool(64 * KiB, shared=True)
    v = p.view(4096, 16, np.int64)
    v[:] = np.arange(16)
    del p
    assert v.sum() == 120                 # the pool is still there: v holds it


# -- sharing ------------------------------------------------------------------------------

def test_another_process_attaches_by_name_and_sees_the_arrays():
    p = pgo.MappedPool(4 * MiB, shared=True)
    a = p.empty((500, 4), dtype=np.float32)
    a[:] = np.arange(2000, dtype=np.float32).reshape(500, 4)
    r = run_python("""
        import sys
        import numpy as np
        import pgo
        q = pgo.MappedPool.attach(sys.argv[1])
        v = q.view(int(sys.argv[2]), (500, 4), np.float32)
        print(q.mode, q.attached, float(v.sum()), v[499, 3])
        v[0, 0] = -1.0                    # a write the owner sees
        try:
            q.alloc(10)
        except pgo.AllocatorError as e:
            print("refused:", e)
    """, p.name, p.offset(a))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"attached True {float(np.arange(2000).sum())} 1999.0"
    assert "allocates none" in lines[1]
    assert a[0, 0] == -1.0


def test_a_file_pool_is_attached_by_path_and_unlinked_by_its_owner(tmp_path):
    path = tmp_path / "pool"
    p = pgo.MappedPool(1 * MiB, path=path)
    assert p.mode == "file" and p.name == str(path) and path.stat().st_size == 1 * MiB
    a = p.zeros(1000, dtype=np.int32)
    a[:] = 5
    r = run_python("""
        import sys, numpy as np, pgo
        q = pgo.MappedPool.attach(sys.argv[1])
        print(q.view(int(sys.argv[2]), 1000, np.int32).sum())
    """, path, p.offset(a))
    assert r.stdout.strip() == "5000", r.stderr
    p.unlink()
    assert not path.exists()
    a[1] = 6                             # the mapping outlives the name
    assert a.sum() == 5001


def test_unlink_of_a_memfd_pool_stops_new_attaches_only():
    p = pgo.MappedPool(64 * KiB, shared=True)
    a = p.zeros(8)
    q = pgo.MappedPool.attach(p.name)
    p.unlink()
    with pytest.raises(FileNotFoundError, match="no pool named"):
        pgo.MappedPool.attach(p.name)
    a[0] = 3.0
    assert q.view(p.offset(a), 8)[0] == 3.0
    b = p.zeros(8)                       # the owner still allocates
    assert p.offset(b) != p.offset(a)
    with pytest.raises(ValueError, match="only the process that made"):
        q.unlink()


@pytest.mark.parametrize("killed", ["owner", "attacher"])
def test_sigkill_of_either_side_leaves_nothing_behind(killed):
    # The owner makes a shared pool and waits; the attacher maps it.  One of
    # them is SIGKILLed; the other still sees the data, and once it exits no
    # process holds the memfd (the kernel has freed it) and /dev/shm gained
    # nothing.
    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    owner = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time, numpy as np, pgo
        p = pgo.MappedPool(9 << 20, shared=True, populate=True)
        a = p.zeros(1 << 20)
        a[:] = 2.0
        print(p.name, p.offset(a), flush=True)
        sys.stdin.readline()
        print(a.sum(), flush=True)
        sys.stdin.readline()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **child_options())
    name, offset = owner.stdout.readline().split()
    _, _, pid, _fd, token = name.split("-")
    memfd = f"pgo-mapped-{pid}-{token}"
    attacher = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, numpy as np, pgo
        q = pgo.MappedPool.attach(sys.argv[1])
        v = q.view(int(sys.argv[2]), 1 << 20)
        v[0] = 3.0
        print(v.sum(), flush=True)
        sys.stdin.readline()
        print(v.sum(), flush=True)
        sys.stdin.readline()
    """), name, offset], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        **child_options())
    try:
        assert float(attacher.stdout.readline()) == 2.0 * (1 << 20) + 1.0
        assert sorted(memfd_holders(memfd)) == sorted([owner.pid, attacher.pid])
        victim, survivor = (owner, attacher) if killed == "owner" else (attacher, owner)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        survivor.stdin.write("\n")
        survivor.stdin.flush()
        assert float(survivor.stdout.readline()) == 2.0 * (1 << 20) + 1.0
        assert memfd_holders(memfd) == [survivor.pid]
        survivor.stdin.write("\n")
        survivor.stdin.flush()
        assert survivor.wait(timeout=30) == 0
    finally:
        for proc in (owner, attacher):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert memfd_holders(memfd) == []
    shm_after = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    assert shm_after <= shm_before


def test_a_forked_child_may_read_a_shared_pool_but_not_allocate_from_it():
    p = pgo.MappedPool(1 * MiB, shared=True)
    private = pgo.MappedPool(1 * MiB)
    a = p.zeros(4)
    a[:] = 9.0
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                        # the child
        os.close(r)
        out = []
        out.append(str(float(a.sum())))
        try:
            p.alloc(64)
            out.append("allocated")
        except pgo.AllocatorError as e:
            out.append("refused" if "forked" in str(e) and p.name in str(e) else str(e))
        b = private.alloc(64)                           # the child's own copy: fine
        out.append("private ok" if b.nbytes == 64 else "private wrong")
        os.write(w, "|".join(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        got = f.read()
    os.waitpid(pid, 0)
    assert got == "36.0|refused|private ok"
    b = p.alloc(64)                                     # the parent still allocates
    assert p.offset(b) != p.offset(a)


def test_a_forked_child_cannot_trim_or_fill_the_parents_shared_pool():
    # The child's free lists are a stale copy: a trim there would punch
    # holes in memory the parent has since handed out.
    p = pgo.MappedPool(4 * MiB, shared=True)
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.read(go_r, 1)                                # the parent allocated and filled
        os.write(w, str(p.trim()).encode())
        os._exit(0)
    os.close(w)
    a = p.zeros(100_000)
    a[:] = 7.0
    os.write(go_w, b"x")
    with os.fdopen(r) as f:
        trimmed = f.read()
    os.waitpid(pid, 0)
    assert trimmed == "0"
    assert a.sum() == 700_000.0


def test_an_attached_pool_refuses_frees():
    p = pgo.MappedPool(64 * KiB, shared=True)
    a = p.zeros(8)
    q = pgo.MappedPool.attach(p.name)
    with pytest.raises(pgo.AllocatorError, match="not allocated here"):
        q._free_address(a.ctypes.data)
    assert a.sum() == 0.0


def test_the_capacity_bound_is_whole_pages_of_32_bit_unit_counts():
    assert MAX_CAPACITY % 4096 == 0 and MAX_CAPACITY // 64 < 0xffffffff
    with pytest.raises(ValueError, match="at most"):
        pgo.MappedPool(MAX_CAPACITY + 1, shared=True)


# -- memory -------------------------------------------------------------------------------

def _resident_bytes(lo, size):
    """Resident bytes of [lo, lo+size), page by page (mincore).

    Not /proc/self/smaps: the kernel merges a private pool's mapping with a
    neighbouring anonymous one, whose pages would then count as the pool's.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    page = os.sysconf("SC_PAGE_SIZE")
    start = lo - lo % page
    n = (lo + size - start + page - 1) // page
    vec = (ctypes.c_ubyte * n)()
    if libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(n * page), vec) != 0:
        raise OSError(ctypes.get_errno(), "mincore")
    return sum(b & 1 for b in vec) * page


@pytest.mark.parametrize("shared", [False, True])
def test_trim_gives_the_pages_of_free_extents_back_and_keeps_live_blocks(shared):
    p = pgo.MappedPool(32 * MiB, shared=shared)
    keep = p.zeros(1000, dtype=np.uint8)
    keep[:] = 7
    big = p.zeros(24 * MiB, dtype=np.uint8)
    big[:] = 1                                          # resident
    base = keep.ctypes.data - p.offset(keep)
    assert _resident_bytes(base, 32 * MiB) >= 24 * MiB
    del big
    got = p.trim()
    assert got >= 24 * MiB - 8 * KiB
    assert p.stats()["trimmed_bytes"] == got
    assert _resident_bytes(base, 32 * MiB) < 2 * MiB
    assert (keep == 7).all()
    again = p.zeros(24 * MiB, dtype=np.uint8)           # the pages come back, zeroed
    assert not again.any()


def test_populate_faults_the_pages_in_when_the_pool_is_made():
    def faults_writing(pool):
        # (The test build fills a block when it hands it out: that counts too.)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = pool.empty(16 * MiB, dtype=np.uint8)
        a[::4096] = 1
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    lazy = faults_writing(pgo.MappedPool(17 * MiB, huge_pages=False))
    eager = faults_writing(pgo.MappedPool(17 * MiB, populate=True, huge_pages=False))
    eager_shared = faults_writing(pgo.MappedPool(17 * MiB, shared=True, populate=True))
    assert lazy >= 4000                                  # a fault per 4 KiB page
    assert eager < 100 and eager_shared < 100


# -- numpy and configs -------------------------------------------------------------------

def test_numpy_arrays_through_a_router_land_in_the_pool_and_realloc_keeps_data():
    p = pgo.MappedPool(16 * MiB, threadsafe=True)
    with pgo.use(pgo.Router([pgo.SizeClass(0, None, p)])):
        x = np.arange(1000, dtype=np.int64)
        y = np.ones((256, 256))
        assert pgo.owner(x) is p and pgo.owner(y) is p
        x.resize(5000, refcheck=False)
        assert (x[:1000] == np.arange(1000)).all()
        assert p.live_blocks == 2
    del x, y
    assert p.live_blocks == 0 and p.in_use == 0


def test_an_attached_pool_cannot_serve_numpy():
    p = pgo.MappedPool(64 * KiB, shared=True)
    q = pgo.MappedPool.attach(p.name)
    with pytest.raises((TypeError, ValueError), match="attached .* cannot serve numpy arrays"):
        pgo.Router([pgo.SizeClass(0, None, q)])


def test_config_rules_name_the_mapped_pool():
    router = pgo.Router.from_config([
        {"min_bytes": 0, "max_bytes": 1 << 16, "allocator": "mapped", "capacity": 1 << 24,
         "populate": True},
    ], source="job.toml")
    with pgo.use(router):
        x = np.zeros(100)
        owner = pgo.owner(x)
    assert isinstance(owner, pgo.MappedPool) and owner.capacity == 1 << 24
    assert owner.stats()["populate"] is True
    with pytest.raises(pgo.ConfigError, match=r"job.toml: numpy.size_class\[0\]: a mapped pool "
                                              r"needs capacity"):
        pgo.Router.from_config([{"min_bytes": 0, "allocator": "mapped"}], source="job.toml")
    with pytest.raises(pgo.ConfigError, match=r"huge_pages: expected bool, got int"):
        pgo.Router.from_config([{"min_bytes": 0, "allocator": "mapped", "capacity": 4096,
                                 "huge_pages": 1}], source="job.toml")


def test_the_c_api_refuses_to_free_a_python_block():
    p = pgo.MappedPool(64 * KiB)
    b = p.alloc(100)
    with pytest.raises(pgo.AllocatorError, match="owned by a Python Block"):
        p._free_address(b.address)
    with pytest.raises(pgo.AllocatorError, match="inside"):
        p._free_address(b.address + 64)
    p.free(b)
    with pytest.raises(pgo.AllocatorError, match="double free|not allocated"):
        p._free_address(b.address)
