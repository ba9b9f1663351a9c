"""The shipped .pyi stubs type-check real use under mypy --strict."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pgo

pytest.importorskip("mypy.api", reason="mypy is not installed")

USE = textwrap.dedent("""
    import numpy as np
    import pgo

    s = pgo.StackAllocator(1 << 16)
    with s.frame() as f:
        a = s.empty((3, 4), dtype=np.float32, order="F")
        z = s.zeros(8)
        b = s.alloc(16, align=64)
        view = memoryview(b)
        first: int = b[0]
        part: memoryview = b[2:4]
        n: int = len(b) + b.address + f.live + s.in_use + s.capacity
    slab = pgo.SlabAllocator(64, align=64, slots_per_slab=8, max_bytes=1 << 20, threadsafe=True)
    stats: dict[str, object] = slab.stats()
    slab.free(slab.alloc(64))
    slab.reset()
    arena = pgo.ArenaAllocator(chunk_size=1 << 20, max_bytes=0, threadsafe=False)
    linear = pgo.LinearAllocator(1 << 20)
    try:
        linear.reset()
    except pgo.AllocatorError as e:
        msg: str = str(e)
    cache = pgo.CacheAllocator(1 << 30, hugepages=True, prefault=False)
    released: int = cache.trim() + pgo.CacheAllocator.class_size(100)
    router = pgo.Router([pgo.SizeClass(1 << 20, None, cache)], name="demo")
    with pgo.use(router) as r:
        x = np.ones(10)
    owner: pgo.Allocator | None = pgo.owner(x)
    name: str | None = pgo.handler_name(x)
    pgo.install(router)
    before: pgo.Router | None = pgo.uninstall()
    route_stats: dict[str, object] = router.stats()
    from_cfg = pgo.Router.from_config([{"min_bytes": 0, "allocator": "cache"}])
    pool = pgo.MappedPool(1 << 20, shared=True, populate=False, huge_pages=False)
    arr = pool.zeros(10)
    where: int = pool.offset(arr)
    seen: np.ndarray = pgo.MappedPool.attach(pool.name).view(where, (10,), np.float64)
    given_back: int = pool.trim()
    pool_name: str = pool.name + pool.mode
    na = pgo.NUMAAllocator(1 << 20, node=None, huge_pages=False)
    nodes: tuple[int, ...] = na.nodes
    placed: dict[int | None, int] = na.nodes_of(na.zeros(8))
    why: str = na.fallback
    home: int = na.home_node()
    hier = pgo.HierarchicalAllocator(max_bytes=1 << 26)
    hier.flush_thread()
    block_size: int = pgo.HierarchicalAllocator.class_size(100, align=64)
    ca = pgo.CompactingAllocator(max_bytes=1 << 26, fragmentation_percent=150)
    done: dict[str, int] = ca.compact()
    maybe: dict[str, int] | None = ca.maybe_compact()
    held: int = ca.resident_bytes + ca.file_bytes + ca.live_bytes
    slot: int = pgo.CompactingAllocator.class_size(100, align=64)
    ad = pgo.AdaptiveAllocator(1024, max_bytes=1 << 26, fixed=None, threadsafe=True)
    chosen: str = ad.backend + str(ad.window)
""")

MISUSE = textwrap.dedent("""
    import pgo
    pgo.SlabAllocator(64).free(3)
""")


@pytest.fixture(autouse=True)
def stub_path(monkeypatch):
    # An installed pgo is found through its py.typed (and mypy refuses
    # site-packages on MYPYPATH); a source checkout built in place is not.
    root = Path(pgo.__file__).resolve().parent.parent
    if "site-packages" not in root.parts:
        monkeypatch.setenv("MYPYPATH", str(root))


def check(tmp_path, source):
    # In a child process: mypy run in-process leaves a large object graph
    # behind, and every later gc.collect() in the test session pays for it.
    path = tmp_path / "use.py"
    path.write_text(source)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir",
         os.devnull, str(path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    return proc.returncode, proc.stdout + proc.stderr


def test_stubs_accept_real_use(tmp_path):
    status, out = check(tmp_path, USE)
    assert status == 0, out


def test_stubs_reject_a_non_block_free(tmp_path):
    status, out = check(tmp_path, MISUSE)
    assert status == 1 and "free" in out, out
