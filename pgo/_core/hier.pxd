# HierarchicalAllocator: tcmalloc's shape.  Per-thread caches of free
# blocks, one list per size class, in front of a central free list per class
# (under its own mutex, refilled and drained a batch at a time), in front of
# 1 MiB spans committed from one address-space reservation.
#
#   cdef HierarchicalAllocator h = HierarchicalAllocator()     # from Python
#   cdef void* p = hier_alloc(h.s, 200)     # this thread's cache: no lock
#   hier_free(h.s, p)     # any thread; double free / interior / foreign raise
#
# Blocks of 16 B to 256 KiB (56 classes: 16-byte steps to 256, then four
# per power of two); a block is aligned to 16, or to its size when that is
# a power of two.  A free goes to the freeing thread's cache, so frees from
# another thread are ordinary; a cache over its bound gives a batch back to
# the central list.  A thread's caches go back to the central lists when it
# exits.

from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t

from pgo._core._base cimport Allocator
from pgo._core._typedefs cimport pgo_lock_t, pgo_stats_t, pthread_mutex_t

cdef enum:
    HIER_NCLASSES = 56
    HIER_SPAN_SHIFT = 20          # 1 MiB spans
    HIER_MAX_SMALL = 262144       # 256 KiB: the largest class


ctypedef struct pgo_hier_list_t:
    void* head                    # intrusive: a free block's first word is the next
    uint32_t count
    uint32_t max                  # more than this: a batch goes to the central list


ctypedef struct pgo_hier_cache_t:
    uint64_t owner_id             # the allocator's id; 0 once it is gone
    void* owner                   # its pgo_hier_t
    pgo_hier_cache_t* next_of_thread   # the thread's other caches
    pgo_hier_cache_t* next_of_owner    # the allocator's other caches
    pgo_hier_cache_t* prev_of_owner
    uint64_t allocs, frees, requested
    int64_t bytes                 # class bytes handed out minus given back by this thread
    pgo_hier_list_t lists[HIER_NCLASSES]


ctypedef struct pgo_hier_central_t:
    pthread_mutex_t mutex
    void* head
    size_t count
    char* bump                    # the class's current span: next block to carve
    char* bump_end
    uint64_t waits                # lock acquisitions that had to wait
    uint64_t spans
    char pad[64]                  # keep neighbouring classes' mutexes off one line


ctypedef struct pgo_hier_t:
    uint64_t id                   # unique in the process, never reused
    void* next_allocator          # every live one, for fork() (under the registry mutex)
    uint64_t cookie               # marks a free block (with its address): double frees
    char* base                    # the reservation: spans at base + i << 20
    size_t max_spans
    size_t nspans                 # spans handed out (grows; read atomically)
    void* raw
    size_t raw_len
    size_t max_bytes              # 0: the reservation is the limit
    uint16_t* span_class          # class + 1 of each span handed out
    uint32_t* span_carved         # bytes of each span carved into blocks so far
    uint64_t** span_py            # per span: bit set = a Python Block or array owns the block
    pthread_mutex_t span_mutex
    pgo_hier_central_t central[HIER_NCLASSES]
    pgo_hier_cache_t* caches      # every thread's cache of it (under the registry mutex)
    # What exited threads' caches counted (under the registry mutex):
    uint64_t gone_allocs, gone_frees, gone_requested
    int64_t gone_bytes
    uint64_t py_failed            # allocations the Python path could not make (under `lock`)
    uint64_t c_failed             # ... and the C API (atomic)
    size_t lo, hi
    pgo_stats_t stats             # the Python / numpy path's (under `lock`)
    pgo_lock_t lock               # the Python / numpy path's mutex (the C API takes none)


# size -> class, class -> size.
cdef size_t hier_class_of(size_t n) noexcept nogil
cdef size_t hier_class_size(size_t c) noexcept nogil

# n bytes (1 ..  256 KiB), 16-byte aligned: NULL with MemoryError (the
# reservation or max_bytes is full) or ValueError (too big).
cdef void* hier_alloc(pgo_hier_t* h, size_t n) except NULL nogil
# 0, or -1 with AllocatorError: double free, interior or foreign pointer, a
# block a Python Block or array owns.  NULL: 0.
cdef int hier_free(pgo_hier_t* h, void* p) except -1 nogil
# Gives the calling thread's cached blocks back to the central lists.
cdef void hier_flush_thread(pgo_hier_t* h) noexcept nogil


cdef class HierarchicalAllocator(Allocator):
    cdef pgo_hier_t* s
