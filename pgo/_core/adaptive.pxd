# AdaptiveAllocator: watches its own request sizes and lifetimes with a few
# counters per window of allocations and, at the end of each window (inside
# an allocation, under its lock: a safe point), picks the backend that
# serves the next one: a slab of slots for one dominant size, bump regions
# for temporaries freed together, size-classed free lists for varied sizes
# that come back, or malloc for long-lived blocks.
#
#   cdef pgo_adaptive_t* a = adaptive_create(4096, 0, PGO_ADAPT_AUTO, False)
#   cdef void* p = adaptive_alloc(a, 200)      # any size; 16-byte aligned
#   adaptive_free(a, p)     # double free / interior / foreign: AllocatorError
#   adaptive_destroy(a)
#
# Every block has a 16-byte header in front of it (pgo_adapt_hdr_t) that
# says which backend made it, its size and whether it is alive, so a block
# made before a switch goes back to the backend that made it.  Slab slots
# and arena regions are 1 MiB segments of one address-space reservation (a
# pointer's segment is a subtraction and a shift); cache and system blocks
# come from malloc and are kept in a hash set of their addresses, so a
# pointer is only ever read as a header once it is known to be ours.
#
# Error contracts: allocating paths `except NULL`, frees and reset
# `except -1` (MemoryError naming the byte count, ValueError, or
# pgo.AllocatorError for misuse, raised with the GIL taken by pgo_raise);
# queries `noexcept`.  With threadsafe=True every entry point takes the
# allocator's mutex.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from pgo._core._base cimport Allocator
from pgo._core._typedefs cimport pgo_lock_t, pgo_stats_t

cdef enum:
    # Backends (the values are stored in block headers and segment kinds).
    PGO_ADAPT_SYSTEM = 0
    PGO_ADAPT_SLAB = 1
    PGO_ADAPT_ARENA = 2
    PGO_ADAPT_CACHE = 3
    PGO_ADAPT_NBACKENDS = 4
    PGO_ADAPT_AUTO = 4           # adaptive_create's `fixed`: choose by itself
    PGO_ADAPT_HEADER = 16        # bytes in front of every block
    PGO_ADAPT_ALIGN = 16         # every block is aligned to this (and no more)
    PGO_ADAPT_SEG_SHIFT = 20     # 1 MiB segments
    PGO_ADAPT_SLAB_MAX = 4096    # largest request a slab slot serves
    PGO_ADAPT_SLAB_CLASSES = 257 # slot sizes 16 * k, k = 1..256 (index 0 unused)
    PGO_ADAPT_ARENA_MAX = 262144 # largest request an arena region serves (256 KiB)
    PGO_ADAPT_CACHE_CLASSES = 80 # 16 B .. 16 MiB: 16-byte steps to 256, then 4 per power of two
    PGO_ADAPT_HISTORY = 32       # switches remembered for stats()
    PGO_ADAPT_MIN_WINDOW = 64
    # Decision rules, in the order they are tried (see adaptive.pyx).
    PGO_ADAPT_RULE_ONE_SIZE = 1
    PGO_ADAPT_RULE_FEW_FREES = 2
    PGO_ADAPT_RULE_TOGETHER = 3
    PGO_ADAPT_RULE_REUSED = 4


ctypedef struct pgo_adapt_hdr_t:
    uint64_t mark             # cookie ^ address while alive; then a free-list link or a freed mark
    uint64_t info             # size << 24 | born window (16 bits) << 8 | flags << 4 | backend


# One window's counts and what they voted for; the switches are kept as these.
ctypedef struct pgo_adapt_window_t:
    uint64_t window           # 1-based number of the window that decided
    uint64_t allocs
    uint64_t frees
    uint64_t modal            # requests of the most common slab-sized size class
    uint64_t modal_size       # that class's size (bytes, a multiple of 16); 0: none
    uint64_t young            # frees of blocks born in this window or the one before
    uint64_t together         # frees in runs of >= 4 with no allocation between them
    uint64_t large            # requests over PGO_ADAPT_ARENA_MAX
    uint64_t fallback         # requests the backend in use left to malloc
    uint8_t src               # backend before the decision
    uint8_t dst               # backend the window voted for
    uint8_t rule              # PGO_ADAPT_RULE_*
    uint32_t src_slab         # slot sizes when src / dst is the slab
    uint32_t dst_slab


ctypedef struct pgo_adaptive_t:
    size_t window
    size_t max_bytes          # 0: no limit
    int fixed                 # PGO_ADAPT_AUTO, or the one backend it keeps
    uint64_t cookie
    # The choice.
    int backend
    size_t slab_k             # the slab serves slots of 16 * slab_k bytes (0: none yet)
    int pending               # the choice the last window voted for, when it differs
    size_t pending_k
    uint64_t switches
    uint64_t windows          # windows completed
    uint64_t by_backend[PGO_ADAPT_NBACKENDS]   # allocations each backend served
    pgo_adapt_window_t history[PGO_ADAPT_HISTORY]
    uint64_t nhistory         # switches recorded in all (the ring keeps the last 32)
    pgo_adapt_window_t last   # the last completed window
    # This window's counters.
    uint64_t w_allocs, w_frees, w_young, w_together, w_large, w_fallback, w_run
    uint64_t hist[PGO_ADAPT_SLAB_CLASSES]
    # Segments: one reservation, committed a segment at a time.
    char* base
    size_t max_segs
    size_t nsegs              # committed so far
    void* raw
    size_t raw_len
    uint8_t* seg_kind         # 0: free, else PGO_ADAPT_SLAB / PGO_ADAPT_ARENA
    uint16_t* seg_class       # slab: the slot class k
    uint32_t* seg_top         # bytes carved (slab) / bumped (arena)
    uint32_t* seg_live        # arena: live blocks
    uint32_t* free_segs       # committed, unused segments
    size_t nfree_segs
    # Slab: per class, free slots (linked through their headers) and the
    # segment being carved (+1; 0: none).
    void* slab_free[PGO_ADAPT_SLAB_CLASSES]
    uint32_t slab_carve[PGO_ADAPT_SLAB_CLASSES]
    # Arena: the region being bumped (+1; 0: none).
    size_t arena_seg
    # Cache: per class, free blocks (linked through their headers).
    void* cache_free[PGO_ADAPT_CACHE_CLASSES]
    size_t cached_bytes
    size_t cached_blocks
    size_t max_cached
    uint64_t cache_hits, cache_misses
    # Every malloc'd block (cache, live or cached; system, live), by address.
    size_t* reg
    size_t reg_mask
    size_t reg_shift
    size_t reg_count
    size_t malloced           # bytes of those blocks
    size_t live_count         # blocks alive (C and Python)
    size_t lo, hi             # all its memory lies in [lo, hi): read without the lock
    pgo_stats_t stats
    pgo_lock_t lock


# A new allocator: `window` allocations (>= 64) per decision, at most
# max_bytes from the system (0: no limit), `fixed` a backend to keep
# (PGO_ADAPT_AUTO: choose).  MemoryError / ValueError when it cannot be made.
cdef pgo_adaptive_t* adaptive_create(size_t window, size_t max_bytes, int fixed,
                                     bint threadsafe) except NULL nogil
# Frees everything, live blocks included; takes NULL.
cdef void adaptive_destroy(pgo_adaptive_t* a) noexcept nogil
# n bytes (any n up to 2**40 - 1), 16-byte aligned: NULL with MemoryError
# (max_bytes reached, the system refused, or too big).
cdef void* adaptive_alloc(pgo_adaptive_t* a, size_t n) except NULL nogil
# count * size bytes, zeroed; MemoryError when the product overflows.
cdef void* adaptive_calloc(pgo_adaptive_t* a, size_t count, size_t size) except NULL nogil
# NULL is a no-op; a double free, a foreign or interior pointer, or a block
# a Python Block or numpy array owns raise AllocatorError (nothing changes).
cdef int adaptive_free(pgo_adaptive_t* a, void* p) except -1 nogil
# Releases every block (C-level ones included: their pointers dangle after
# it); refused (AllocatorError) while Python Blocks or arrays are alive.
cdef int adaptive_reset(pgo_adaptive_t* a) except -1 nogil
# The size asked for of the live block that starts at p; 0 when there is none.
cdef size_t adaptive_size(pgo_adaptive_t* a, void* p) noexcept nogil
# The backend new requests go to now (PGO_ADAPT_*).
cdef int adaptive_backend(pgo_adaptive_t* a) noexcept nogil
cdef const char* adaptive_backend_name(int backend) noexcept nogil


cdef class AdaptiveAllocator(Allocator):
    cdef pgo_adaptive_t* a
