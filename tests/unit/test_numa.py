"""NUMAAllocator: the node choice on simulated topologies, placement on
this machine's real node(s), and the fallback when placement is refused."""

import errno
import threading
import warnings

import numpy as np
import pytest

import pgo
from pgo._core import numa
from pgo._core.numa import Topology

KiB, MiB = 1 << 10, 1 << 20


def write_sysfs(root, cpulists, memory, distances=None):
    """A fake /sys/devices/system/node: node<N>/cpulist, has_memory, distance."""
    for n, cpus in cpulists.items():
        d = root / f"node{n}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(cpus + "\n")
        if distances:
            (d / "distance").write_text(" ".join(map(str, distances[n])) + "\n")
    (root / "has_memory").write_text(memory + "\n")
    return root


# -- the node choice on simulated topologies --------------------------------------------

def test_a_four_node_machine_with_a_memoryless_node(tmp_path):
    # Node 2 has CPUs but no memory: its CPUs go to the nearest node that
    # has memory by the distance table (node 3 at 16, not node 0 at 21).
    root = write_sysfs(tmp_path, {0: "0-3", 1: "4-7", 2: "8-9,12", 3: "10-11,13-15"}, "0-1,3",
                       {0: [10, 21, 21, 21], 1: [21, 10, 21, 21], 2: [21, 21, 10, 16],
                        3: [21, 21, 16, 10]})
    t = Topology.read(root)
    assert t.memory_nodes == [0, 1, 3]
    assert t.cpus_of[2] == [8, 9, 12]
    assert [t.home(c) for c in range(16)] == [0] * 4 + [1] * 4 + [3, 3, 3, 3, 3, 3, 3, 3]
    assert t.nearest(2) == [3, 0, 1]
    assert t.cpu_count() == 16
    assert t.home(99) == 0                 # a CPU sysfs does not know: the first node


def test_ties_go_to_the_lowest_node_and_missing_distances_default(tmp_path):
    root = write_sysfs(tmp_path, {0: "0", 1: "1", 2: "2"}, "0-1")   # no distance files
    t = Topology.read(root)
    assert t.home(2) == 0                  # 20 to both: the lowest id
    assert t.nearest(1) == [1, 0]


def test_no_sysfs_is_one_node_with_every_cpu(tmp_path):
    t = Topology.read(tmp_path / "absent")
    assert t.memory_nodes == [0] and t.home(0) == 0


def test_bad_topologies_are_refused():
    with pytest.raises(ValueError, match="needs a node with memory"):
        Topology({0: [0]}, [])
    with pytest.raises(ValueError, match="outside 0..1023"):
        Topology({0: [0]}, [5000])
    with pytest.raises(TypeError, match="must be a pgo Topology"):
        pgo.NUMAAllocator(MiB, topology={"0": [0]})


def test_the_allocator_maps_each_cpu_to_its_nodes_pool(tmp_path):
    # A simulated two-node machine on this one-node kernel: node 1 does not
    # exist, so binding to it is refused (EINVAL) and the allocator falls
    # back -- the mapping from CPUs to pools is checked through a topology
    # whose nodes exist here.
    here = Topology.read()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = pgo.NUMAAllocator(MiB, topology=here)
    assert a.nodes == tuple(here.memory_nodes)
    assert a.home_node() in here.memory_nodes
    fake = Topology({0: [0], 7: [1]}, [0, 7])
    with pytest.warns(RuntimeWarning, match=r"mbind to node 7 was refused: .*errno 22"):
        b = pgo.NUMAAllocator(MiB, topology=fake)
    assert b.nodes == (-1,) and "node 7" in b.fallback


# -- placement on this machine's real node(s) -----------------------------------------------

@pytest.mark.skipif(not numa.numa_available(), reason="the kernel has no NUMA policies")
def test_pages_land_on_the_bound_node():
    t = Topology.read()
    for node in t.memory_nodes:
        a = pgo.NUMAAllocator(8 * MiB, node=node)
        assert a.fallback == "" and a.home_node() == node
        x = a.zeros(MiB // 8)              # 1 MiB, every page written
        assert a.nodes_of(x) == {node: MiB // 4096}
        untouched = a.empty(64 * KiB // 8)
        placed = a.nodes_of(untouched)
        assert set(placed) <= {node, None}
        st = a.stats()
        assert st["allocations_by_node"] == {node: 2} and st["fixed_node"] == node


def test_threads_allocate_from_their_home_node_and_spill_when_it_is_full():
    a = pgo.NUMAAllocator(64 * KiB)
    got = []

    def work():
        got.append((a.home_node(), a.alloc(1000)))

    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert all(node in a.nodes for node, _ in got)
    blocks = [b for _, b in got]
    with pytest.raises(MemoryError, match=r"no pool on any node holds 62,000 bytes"):
        a.alloc(62_000)                     # less than a pool, more than is free
    before = a.stats()
    assert before["live_blocks"] == 4 and before["failed"] == 1
    del blocks
    got.clear()
    assert a.stats()["in_use"] == 0


# -- the fallback ------------------------------------------------------------------------------

@pytest.mark.parametrize("code", [errno.EPERM, errno.ENOSYS, errno.EINVAL])
def test_a_refused_mbind_falls_back_to_one_pool_with_a_warning(code):
    numa._inject_mbind_errno(code)
    try:
        with pytest.warns(RuntimeWarning, match=rf"falls back to one unbound pool: mbind to "
                                                rf"node \d+ was refused: .*\(errno {code}\)"):
            a = pgo.NUMAAllocator(MiB)
    finally:
        numa._inject_mbind_errno(0)
    assert a.nodes == (-1,) and a.home_node() == -1
    assert a.stats()["fallback"] == a.fallback != ""
    x = a.zeros(1000)                       # it still works, unbound
    x[:] = 3
    assert x.sum() == 3000 and pgo.owner(x) is a
    assert "unbound" in repr(a)


# -- use: Blocks, arrays, numpy's handler, misuse -------------------------------------------

def test_blocks_arrays_and_numpy_through_a_router():
    a = pgo.NUMAAllocator(4 * MiB)
    b = a.alloc(100, 256)
    assert b.address % 256 == 0
    with pgo.use(pgo.Router([pgo.SizeClass(0, None, a)])):
        x = np.arange(10_000)
        assert pgo.owner(x) is a
        x.resize(20_000, refcheck=False)
        assert (x[:10_000] == np.arange(10_000)).all()
    a.free(b)
    with pytest.raises(pgo.AllocatorError, match="double free|already"):
        a.free(b)
    del x
    st = a.stats()
    assert st["live_blocks"] == 0 and st["in_use"] == 0 and st["peak"] > 0
    assert st["allocations"] == st["frees"]


def test_c_level_misuse_is_refused():
    a = pgo.NUMAAllocator(MiB)
    b = a.alloc(200)
    with pytest.raises(pgo.AllocatorError, match="owned by a Python Block"):
        a._free_address(b.address)
    with pytest.raises(pgo.AllocatorError, match="inside a block"):
        a._free_address(b.address + 64)
    with pytest.raises(pgo.AllocatorError, match="not allocated here"):
        a._free_address(np.zeros(4).ctypes.data)
    a._free_address(0)
    with pytest.raises(ValueError, match="capacity of at least 1 byte"):
        pgo.NUMAAllocator(0)
    with pytest.raises(ValueError, match="node 5 has no memory here"):
        pgo.NUMAAllocator(MiB, node=5)
    with pytest.raises(pgo.AllocatorError, match="1 block"):
        a.reset()
    del b
    a.reset()
    assert a.stats()["resets"] == 1
