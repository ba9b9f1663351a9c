"""NUMAAllocator: per-node mapped pools, bound to their node.

Design: the machine's topology is read from sysfs (``Topology``): the nodes
that have memory, the CPUs of each node, and the distances between nodes.
Each node with memory gets a private ``MappedPool`` region whose pages are
bound to it with ``mbind(MPOL_BIND)`` before any is touched -- what
libnuma's ``numa_alloc_onnode`` does -- so the kernel places every page
there when it is first written.  An allocation goes to the pool of the node
the calling thread runs on (``sched_getcpu``; a CPU of a node without memory
uses the nearest node that has some, by the sysfs distances), or, with
``node=``, always to one node.  A full home pool spills to the others in
order of distance (counted); a fixed node does not spill.  ``nodes_of()``
asks the kernel where the pages of a block really are (``move_pages`` in
query mode).

Fallback: ``get_mempolicy`` failing (a kernel without NUMA) or ``mbind``
refused (EPERM in a container without CAP_SYS_NICE, EINVAL, ENOSYS) makes
the allocator one unbound pool, with a ``RuntimeWarning`` naming the reason
and ``stats()["fallback"]`` keeping it: never a crash.  The syscalls are
made directly (no libnuma needed to build or run).

# NOTE: ownership.  The ``pgo_numa_t`` and its pools (``pgo_mapped_t``,
# each with its own mapping and side arrays) and the CPU table belong to
# the NUMAAllocator; its ``_destroy`` frees them all.  Blocks and arrays
# hold the allocator, so the pools outlive them.
# NOTE: threads and the GIL.  Every C path is nogil.  One mutex (the
# allocator's; the pools' own are off) covers every pool when
# threadsafe=True, the default: threads on different nodes still share
# it.  The pools' address ranges and the CPU table never change after
# __cinit__, so range tests and the home-pool lookup need no lock.
"""

import os
import warnings
from pathlib import Path

from libc.errno cimport errno
from libc.stdint cimport uint64_t, uintptr_t
from libc.string cimport strerror

from pgo._core._base cimport (
    Allocator, Block, pgo_locked_alloc, pgo_locked_free, pgo_raise_at,
)
from pgo._core._c.pgo_memory cimport PGO_PAGE_BYTES
from pgo._core._memory cimport pgo_sys_calloc, pgo_sys_free
from pgo._core._typedefs cimport (
    PGO_CANARY, PGO_ERR_DOUBLE_FREE, PGO_ERR_FOREIGN, PGO_ERR_NOMEM, PGO_ERR_PY_OWNED, PGO_OK,
    pgo_alloc_fn, pgo_backend_init, pgo_destroy_fn, pgo_lock_destroy, pgo_lock_gil_held,
    pgo_lock_init, pgo_unlock, pgo_within,
)
from pgo._core.mapped cimport (
    MAPPED_UNIT_SHIFT, mapped_create, mapped_destroy, mapped_locate, mapped_release,
    mapped_reset_unlocked, mapped_take_unlocked, memory_of,
)

from pgo._errors import AllocatorError

cdef extern from *:
    """
    #include <sched.h>
    #include <sys/syscall.h>
    #include <unistd.h>
    #define PGO_MPOL_BIND 2
    static long pgo_get_mempolicy(void) {
        return syscall(SYS_get_mempolicy, NULL, NULL, 0, NULL, 0);
    }
    static long pgo_mbind(void* p, unsigned long len, int mode, const unsigned long* mask,
                          unsigned long maxnode) {
        return syscall(SYS_mbind, p, len, mode, mask, maxnode, 0);
    }
    static long pgo_move_pages_query(unsigned long count, void** pages, int* status) {
        return syscall(SYS_move_pages, 0, count, pages, NULL, status, 0);
    }
    static int pgo_this_cpu(void) { return sched_getcpu(); }
    """
    const int PGO_MPOL_BIND
    long pgo_get_mempolicy() nogil
    long pgo_mbind(void* p, unsigned long len, int mode, const unsigned long* mask,
                   unsigned long maxnode) nogil
    long pgo_move_pages_query(unsigned long count, void** pages, int* status) nogil
    int pgo_this_cpu() nogil

cdef enum:
    MASK_WORDS = 16           # the mbind mask: 16 longs, node ids 0..1023

MAX_NODE_ID = MASK_WORDS * 64 - 1
MAX_POOLS = PGO_NUMA_MAX_POOLS

# Test-only: the errno mbind answers instead of being called (0: call it).
cdef int _mbind_errno = 0


def _inject_mbind_errno(int e=0):
    """Test-only: make every mbind fail with errno `e` (0: real calls)."""
    global _mbind_errno
    _mbind_errno = e


def numa_available():
    """Whether the kernel has NUMA memory policies (libnuma's numa_available)."""
    return pgo_get_mempolicy() == 0


# -- topology --------------------------------------------------------------------------------

def _parse_list(text):
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11]."""
    out = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


class Topology:
    """NUMA nodes, their CPUs and memory, and the distances between them.

    ``Topology.read()`` reads ``/sys/devices/system/node`` (or ``root``, for
    a simulated machine); a system without it is one node holding every CPU.
    ``home(cpu)`` is the node whose pool serves that CPU: its own node when
    that node has memory, else the nearest node with memory (lowest id on a
    tie).
    """

    def __init__(self, cpus_of, memory_nodes, distance=None):
        self.cpus_of = {int(n): sorted(map(int, c)) for n, c in cpus_of.items()}
        self.memory_nodes = sorted(int(n) for n in memory_nodes)
        if not self.memory_nodes:
            raise ValueError("a NUMA topology needs a node with memory")
        for n in self.memory_nodes:
            if n < 0 or n > MAX_NODE_ID:
                raise ValueError(f"node id {n} is outside 0..{MAX_NODE_ID}")
        if len(self.memory_nodes) > MAX_POOLS:
            raise ValueError(f"{len(self.memory_nodes)} nodes with memory; at most {MAX_POOLS}")
        self.distance = {(int(a), int(b)): int(d) for (a, b), d in (distance or {}).items()}

    @classmethod
    def read(cls, root="/sys/devices/system/node"):
        root = Path(root)
        nodes = sorted(int(p.name[4:]) for p in root.glob("node[0-9]*")) if root.is_dir() else []
        if not nodes:
            return cls({0: range(os.cpu_count() or 1)}, [0])
        cpus_of = {n: _parse_list((root / f"node{n}" / "cpulist").read_text()) for n in nodes}
        has_memory = root / "has_memory"
        memory = _parse_list(has_memory.read_text()) if has_memory.exists() else nodes
        distance = {}
        for n in nodes:
            f = root / f"node{n}" / "distance"
            if f.exists():
                for m, d in zip(nodes, f.read_text().split()):
                    distance[n, m] = int(d)
        return cls(cpus_of, memory, distance)

    def node_of_cpu(self, cpu):
        for n, cpus in self.cpus_of.items():
            if cpu in cpus:
                return n
        return None

    def _dist(self, a, b):
        return self.distance.get((a, b), 10 if a == b else 20)

    def nearest(self, node, among=None):
        """The memory nodes (or `among`) by distance from `node`, nearest first."""
        among = self.memory_nodes if among is None else among
        return sorted(among, key=lambda m: (self._dist(node, m), m))

    def home(self, cpu):
        node = self.node_of_cpu(cpu)
        if node is None:
            return self.memory_nodes[0]
        return self.nearest(node)[0]

    def cpu_count(self):
        return max((max(c) for c in self.cpus_of.values() if c), default=0) + 1

    def __repr__(self):
        return (f"Topology(nodes={sorted(self.cpus_of)}, memory={self.memory_nodes}, "
                f"cpus={ {n: len(c) for n, c in self.cpus_of.items()} })")


# -- the C paths -------------------------------------------------------------------------------

cdef size_t numa_home_pool(pgo_numa_t* s) noexcept nogil:
    cdef int cpu
    if s.fixed >= 0:
        return <size_t>s.fixed
    cpu = pgo_this_cpu()
    if cpu < 0 or <size_t>cpu >= s.ncpus:
        return 0
    return <size_t>s.pool_of_cpu[cpu]


cdef int _take(pgo_numa_t* s, size_t n, size_t align, bint py, void** out,
               size_t* pool) noexcept nogil:
    cdef size_t home = numa_home_pool(s), k, i
    cdef int err = mapped_take_unlocked(s.pools[home], n, align, py, out)
    if err == PGO_OK:
        pool[0] = home
    elif err == PGO_ERR_NOMEM and s.fixed < 0:
        # Spill to the other pools, nearest first (the CPU table's order is
        # the home's; the pools are in node order, which for a machine's
        # few nodes is close enough -- and spills are counted).
        for i in range(1, s.npools):
            k = (home + i) % s.npools
            if mapped_take_unlocked(s.pools[k], n, align, py, out) == PGO_OK:
                s.spills += 1
                pool[0] = k
                err = PGO_OK
                break
    if err == PGO_OK:
        s.allocs_of_pool[pool[0]] += 1
        s.stats.allocs += 1
        s.stats.requested += n
        s.stats.in_use += <size_t>s.pools[pool[0]].len_at[
            (<char*>out[0] - s.pools[pool[0]].base) >> MAPPED_UNIT_SHIFT] << MAPPED_UNIT_SHIFT
        if s.stats.in_use > s.stats.peak:
            s.stats.peak = s.stats.in_use
    else:
        s.stats.failed += 1
    return err


cdef int _find(pgo_numa_t* s, void* p, size_t* pool, size_t* unit) noexcept nogil:
    cdef size_t k
    cdef int err
    for k in range(s.npools):
        if pgo_within(p, s.pools[k].base, s.pools[k].size):
            err = mapped_locate(s.pools[k], p, unit)
            pool[0] = k
            return err
    return PGO_ERR_FOREIGN


cdef void _give_back(pgo_numa_t* s, size_t pool, size_t unit) noexcept nogil:
    cdef uint64_t frees = s.pools[pool].stats.frees
    s.stats.in_use -= <size_t>s.pools[pool].len_at[unit] << MAPPED_UNIT_SHIFT
    mapped_release(s.pools[pool], unit)
    s.stats.frees += s.pools[pool].stats.frees - frees


cdef int _alloc_c(void* state, size_t n, size_t align, void** out) noexcept nogil:
    cdef size_t pool
    return _take(<pgo_numa_t*>state, n, align, False, out, &pool)


cdef int _free_c(void* state, void* p) noexcept nogil:
    cdef pgo_numa_t* s = <pgo_numa_t*>state
    cdef size_t pool, unit
    cdef int err
    if p == NULL:
        return PGO_OK
    err = _find(s, p, &pool, &unit)
    if err != PGO_OK:
        return err
    if (s.pools[pool].pybits[unit >> 6] >> (unit & 63)) & 1:
        return PGO_ERR_PY_OWNED
    _give_back(s, pool, unit)
    return PGO_OK


cdef void* numa_alloc(pgo_numa_t* s, size_t n, size_t align) except NULL nogil:
    return pgo_locked_alloc(&s.lock, &s.stats, _alloc_c, s, n, align, "NUMAAllocator")


cdef int numa_free(pgo_numa_t* s, void* p) except -1 nogil:
    return pgo_locked_free(&s.lock, &s.stats, _free_c, s, p, "NUMAAllocator")


# numpy's handler: Python-owned blocks, as a Block's.
cdef int _take_py(void* state, size_t n, size_t align, void** out) noexcept nogil:
    cdef size_t pool
    return _take(<pgo_numa_t*>state, n, align, True, out, &pool)


cdef bint _holds(void* state, void* p) noexcept nogil:
    cdef pgo_numa_t* s = <pgo_numa_t*>state
    cdef size_t k
    for k in range(s.npools):
        if pgo_within(p, s.pools[k].base, s.pools[k].size):
            return True
    return False


cdef int _give_py(void* state, void* p) noexcept nogil:
    cdef pgo_numa_t* s = <pgo_numa_t*>state
    cdef size_t pool, unit
    cdef int err = _find(s, p, &pool, &unit)
    if err == PGO_OK and not ((s.pools[pool].pybits[unit >> 6] >> (unit & 63)) & 1):
        return PGO_ERR_DOUBLE_FREE
    if err == PGO_OK:
        _give_back(s, pool, unit)
    return err


cdef size_t _span(void* state, void* p) noexcept nogil:
    cdef pgo_numa_t* s = <pgo_numa_t*>state
    cdef size_t pool, unit
    if _find(s, p, &pool, &unit) != PGO_OK:
        return 0
    return (<size_t>s.pools[pool].len_at[unit] << MAPPED_UNIT_SHIFT) - PGO_CANARY


cdef int _reset(void* state) noexcept nogil:
    cdef pgo_numa_t* s = <pgo_numa_t*>state
    cdef size_t k
    cdef uint64_t frees
    for k in range(s.npools):
        frees = s.pools[k].stats.frees
        mapped_reset_unlocked(s.pools[k])
        s.stats.frees += s.pools[k].stats.frees - frees
    s.stats.resets += 1
    s.stats.requested = 0
    s.stats.lost = 0
    s.stats.in_use = 0
    return PGO_OK


cdef void _numa_destroy(pgo_numa_t* s) noexcept nogil:
    cdef size_t k
    if s == NULL:
        return
    for k in range(s.npools):
        mapped_destroy(s.pools[k])
    pgo_lock_destroy(&s.lock)
    pgo_sys_free(s.pool_of_cpu)
    pgo_sys_free(s)


cdef str _errno_text(int e):
    return f"{os.strerror(e)} (errno {e})"


cdef class NUMAAllocator(Allocator):
    """Memory on the NUMA node of the thread that asks for it.

    Args:
        capacity: bytes of each node's pool (whole pages; pools never grow).
        node: serve every allocation from this node (as
            ``numa_alloc_onnode``); by default each comes from the node of
            the CPU the calling thread runs on.
        huge_pages: advise transparent huge pages for pools of 4 MiB and more.
        threadsafe: one mutex over every pool (default True: the point of
            NUMA placement is threads on several nodes).
        topology: a ``Topology`` (default: this machine's, from sysfs).

    Without NUMA policies in the kernel, or where ``mbind`` is refused
    (EPERM in a container without CAP_SYS_NICE), it is one unbound pool and
    warns why once (``RuntimeWarning``); ``stats()["fallback"]`` keeps the
    reason.  ``nodes_of(obj)`` says which node each page of a Block or array
    is on.
    """

    def __cinit__(self, size_t capacity=0, *, node=None, bint huge_pages=False,
                  bint threadsafe=True, topology=None):
        cdef pgo_numa_t* s
        cdef size_t k, size
        cdef int cpu, e
        cdef unsigned long mask[MASK_WORDS]
        cdef pgo_alloc_fn take = _take_py
        if capacity == 0:
            raise ValueError("NUMAAllocator needs a capacity of at least 1 byte per node")
        topo = Topology.read() if topology is None else topology
        if not isinstance(topo, Topology):
            raise TypeError(f"topology must be a pgo Topology, got {type(topo).__name__}")
        self._topology = topo
        self._fallback = ""
        if not numa_available():
            self._fallback = f"the kernel has no NUMA memory policy ({_errno_text(errno)})"
        nodes = [-1] if self._fallback else list(topo.memory_nodes)
        if node is not None and node not in topo.memory_nodes:
            raise ValueError(f"node {node!r} has no memory here; nodes with memory: "
                             f"{topo.memory_nodes}")
        size = (capacity + PGO_PAGE_BYTES - 1) & ~(PGO_PAGE_BYTES - 1)
        s = <pgo_numa_t*>pgo_sys_calloc(1, sizeof(pgo_numa_t))
        if s == NULL:
            raise MemoryError(f"NUMAAllocator: cannot allocate its {sizeof(pgo_numa_t)}-byte "
                              f"state")
        self.s = s
        pgo_lock_init(&s.lock, threadsafe)
        s.fixed = -1
        try:
            for k, n in enumerate(nodes):
                s.pools[k] = mapped_create(size, huge_pages, False)
                s.node_of_pool[k] = n
                s.npools = k + 1
                if n < 0:
                    continue
                for e in range(MASK_WORDS):
                    mask[e] = 0
                mask[n >> 6] = (<unsigned long>1) << (n & 63)
                e = _mbind_errno
                if e == 0 and pgo_mbind(s.pools[k].base, size, PGO_MPOL_BIND, mask,
                                        MASK_WORDS * 64 + 1) != 0:
                    e = errno
                if e != 0:
                    self._fallback = f"mbind to node {n} was refused: {_errno_text(e)}"
                    break
            if self._fallback and nodes != [-1]:
                # One unbound pool instead: drop the pools made so far.
                for k in range(s.npools):
                    mapped_destroy(s.pools[k])
                    s.pools[k] = NULL
                s.npools = 0
                s.pools[0] = mapped_create(size, huge_pages, False)
                s.node_of_pool[0] = -1
                s.npools = 1
                nodes = [-1]
            self._nodes = tuple(nodes)
            s.ncpus = topo.cpu_count()
            s.pool_of_cpu = <int*>pgo_sys_calloc(s.ncpus, sizeof(int))
            if s.pool_of_cpu == NULL:
                raise MemoryError(f"NUMAAllocator: cannot allocate its CPU table "
                                  f"({s.ncpus * sizeof(int):,} bytes)")
            if nodes != [-1]:
                for cpu in range(<int>s.ncpus):
                    s.pool_of_cpu[cpu] = nodes.index(topo.home(cpu))
                if node is not None:
                    s.fixed = nodes.index(node)
            s.lo = <size_t>-1
            for k in range(s.npools):
                s.stats.capacity += s.pools[k].size
                s.lo = min(s.lo, s.pools[k].lo)
                s.hi = max(s.hi, s.pools[k].hi)
        except BaseException:
            _numa_destroy(s)
            self.s = NULL
            raise
        pgo_backend_init(&self._be, s, &s.lock, &s.stats, take, NULL, size,
                         _holds, _give_py, _span, &s.lo, &s.hi)
        self._bind(<pgo_destroy_fn>_numa_destroy, 64, PGO_PAGE_BYTES)
        if self._fallback:
            warnings.warn(f"pgo: NUMAAllocator falls back to one unbound pool: {self._fallback}",
                          RuntimeWarning, stacklevel=2)

    # -- properties ---------------------------------------------------------------------
    @property
    def nodes(self):
        """The node of each pool, in pool order (``(-1,)`` for the fallback)."""
        return self._nodes

    @property
    def topology(self):
        return self._topology

    @property
    def fallback(self):
        """Why placement is off ('' when every pool is bound to its node)."""
        return self._fallback

    def home_node(self):
        """The node the calling thread allocates from now (-1: unbound)."""
        return self._nodes[numa_home_pool(self.s)]

    def nodes_of(self, obj):
        """{node: pages} for the pages of a Block or array, as the kernel
        places them now (``move_pages`` query); pages not yet touched count
        under None."""
        import numpy as np
        cdef uintptr_t pp, sp
        address, nbytes = memory_of(obj)
        first = address & ~(PGO_PAGE_BYTES - 1)
        count = max(1, (address + nbytes - first + PGO_PAGE_BYTES - 1) // PGO_PAGE_BYTES)
        pages = np.array([first + i * PGO_PAGE_BYTES for i in range(count)], dtype=np.uintp)
        status = np.zeros(count, dtype=np.intc)
        pp = pages.ctypes.data
        sp = status.ctypes.data
        if pgo_move_pages_query(count, <void**>pp, <int*>sp) != 0:
            raise OSError(errno, f"move_pages: {_errno_text(errno)}")
        out = {}
        for st in status.tolist():
            key = None if st < 0 else st
            out[key] = out.get(key, 0) + 1
        return out

    # -- the Allocator hooks ---------------------------------------------------------------
    cdef int _c_alloc(self, size_t nbytes, size_t align, void** out, size_t* token) noexcept:
        cdef size_t pool
        cdef int err = _take(self.s, nbytes, align, True, out, &pool)
        if err == PGO_OK:
            token[0] = ((<size_t>(<char*>out[0] - self.s.pools[pool].base) >> MAPPED_UNIT_SHIFT)
                        * PGO_NUMA_MAX_POOLS + pool)
        return err

    cdef int _c_free(self, Block b) noexcept:
        _give_back(self.s, b.token % PGO_NUMA_MAX_POOLS, b.token // PGO_NUMA_MAX_POOLS)
        return PGO_OK

    cdef void _c_dead(self, Block b) noexcept:
        _give_back(self.s, b.token % PGO_NUMA_MAX_POOLS, b.token // PGO_NUMA_MAX_POOLS)

    cdef int _c_reset(self) noexcept:
        return _reset(self.s)

    cdef void _sync(self) noexcept:
        cdef size_t k, lost = 0
        for k in range(self.s.npools):
            lost += self.s.pools[k].stats.lost
        self.s.stats.lost = lost

    cdef object _where(self, char* p):
        cdef size_t k
        for k in range(self.s.npools):
            if pgo_within(p, self.s.pools[k].base, self.s.pools[k].size):
                return f"node {self._nodes[k]} offset {p - self.s.pools[k].base:,}"
        return f"address {<uintptr_t>p:#x}"

    def _describe_nomem(self, size_t nbytes):
        free = [self.s.pools[k].free_units << MAPPED_UNIT_SHIFT for k in range(self.s.npools)]
        where = ("node " + str(self._nodes[self.s.fixed]) if self.s.fixed >= 0
                 else "any node")
        return (f"{self!r}: no pool on {where} holds {nbytes:,} bytes (free bytes per node: "
                f"{dict(zip(self._nodes, free))})")

    def _extra_stats(self):
        return {"nodes": list(self._nodes), "fallback": self._fallback,
                "fixed_node": self._nodes[self.s.fixed] if self.s.fixed >= 0 else None,
                "spills": self.s.spills,
                "allocations_by_node": {self._nodes[k]: self.s.allocs_of_pool[k]
                                        for k in range(self.s.npools)},
                "in_use_by_node": {self._nodes[k]: self.s.pools[k].live_units << MAPPED_UNIT_SHIFT
                                   for k in range(self.s.npools)}}

    def _free_address(self, size_t address):
        """Test-only: run the C-level free on a raw address."""
        cdef int code
        pgo_lock_gil_held(self._lock, self._st)
        code = _free_c(self.s, <void*>address)
        pgo_unlock(self._lock)
        if code != PGO_OK:
            pgo_raise_at(code, "NUMAAllocator", <void*>address)

    def __repr__(self):
        placed = "unbound" if self._fallback else f"nodes={list(self._nodes)}"
        fixed = f" node={self._nodes[self.s.fixed]}" if self.s.fixed >= 0 else ""
        return (f"<NUMAAllocator {placed}{fixed} capacity={self.s.stats.capacity:,} "
                f"threadsafe={bool(self.s.lock.enabled)}>")
