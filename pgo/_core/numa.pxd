# NUMAAllocator: one mapped pool per NUMA node, its pages bound to the node
# (mbind MPOL_BIND, as libnuma's numa_alloc_onnode), each allocation served
# from the pool of the node the calling thread runs on (or one fixed node).
#
#   cdef NUMAAllocator na = NUMAAllocator(64 << 20)      # made from Python
#   cdef void* p = numa_alloc(na.s, 4096, 64)              # this thread's node
#   numa_free(na.s, p)       # double free / interior / foreign: AllocatorError
#
# Where placement cannot be had (no NUMA in the kernel, or mbind refused:
# EPERM in a container without CAP_SYS_NICE) the allocator is one unbound
# pool and says why (a RuntimeWarning when made, stats()["fallback"]).

from libc.stdint cimport uint64_t

from pgo._core._base cimport Allocator
from pgo._core._typedefs cimport pgo_lock_t, pgo_stats_t
from pgo._core.mapped cimport pgo_mapped_t

cdef enum:
    PGO_NUMA_MAX_POOLS = 64


ctypedef struct pgo_numa_t:
    size_t npools
    pgo_mapped_t* pools[PGO_NUMA_MAX_POOLS]
    int node_of_pool[PGO_NUMA_MAX_POOLS]   # the OS node; -1: unbound (the fallback)
    uint64_t allocs_of_pool[PGO_NUMA_MAX_POOLS]
    int* pool_of_cpu          # cpu -> the pool of its node (or the nearest with memory)
    size_t ncpus
    int fixed                 # a pool index: every allocation there; -1: the caller's node
    uint64_t spills           # allocations another node's pool served: the home pool was full
    size_t lo, hi             # the pools' lowest and highest address, for numpy's router
    pgo_stats_t stats
    pgo_lock_t lock


# n bytes aligned to `align` from the calling thread's node (spilling to the
# other nodes when its pool is full), or from the fixed node: the block, or
# NULL with MemoryError / ValueError.
cdef void* numa_alloc(pgo_numa_t* s, size_t n, size_t align) except NULL nogil
# 0, or -1 with AllocatorError (double free, interior or foreign pointer, a
# block a Python Block or array owns).  NULL: 0.
cdef int numa_free(pgo_numa_t* s, void* p) except -1 nogil
# The pool the calling thread allocates from now.
cdef size_t numa_home_pool(pgo_numa_t* s) noexcept nogil


cdef class NUMAAllocator(Allocator):
    cdef pgo_numa_t* s
    cdef object _topology
    cdef str _fallback
    cdef tuple _nodes
