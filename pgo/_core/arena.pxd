# ArenaAllocator: chunked bump allocation for objects that share a lifetime.
# Grows chunk by chunk up to max_bytes; each chunk counts its live blocks and
# is reused (its bump pointer back to 0) only once nothing in it is alive.
#
#   cdef pgo_arena_t* a = arena_create(1 << 20, 0, False)   # 0: no limit
#   cdef void* p = arena_alloc(a, 512, 16)
#   arena_release(a, p)        # optional: lets p's chunk be reused early
#   arena_reset(a)             # everything, chunks kept for reuse
#   arena_destroy(a)
#
# Each chunk records where its blocks start (in allocation order, so the
# list is sorted) and keeps two bitmaps indexed by block number: released,
# and owned by a Python Block.  That is what lets arena_release refuse a
# foreign or interior pointer, a second release, or a block Python still
# owns, instead of recycling a chunk under a live block; and recycling or
# resetting a chunk costs what its blocks were, not its size.  The inline
# path covers the common case (no lock, the normal build, room in the
# current chunk and in its block list).  stats.in_use, peak and lost are
# derived (in_use only grows between chunk recycles, so its peak is taken
# just before each recycle): call arena_sync_stats(a) before reading
# a.stats.

from libc.stdint cimport uint32_t, uint64_t

from pgo._core._base cimport Allocator
from pgo._core._typedefs cimport pgo_bad_align, pgo_fit, pgo_lock_t, pgo_stats_t, pgo_unlikely

cdef enum:
    PGO_ARENA_MIN_ALIGN = 8   # block starts are stored as offset / 8


ctypedef struct pgo_arena_chunk_t:
    char* base
    size_t size
    size_t top
    size_t nreleased          # of its nblocks; the chunk is idle when they are equal
    uint32_t* starts          # block i starts at starts[i] * 8
    size_t nblocks
    size_t cap_blocks
    uint64_t* released        # bit i: block i was released
    uint64_t* pybits          # bit i: block i is owned by a Python Block


ctypedef struct pgo_arena_t:
    pgo_arena_chunk_t* chunks
    size_t nchunks
    size_t cap_chunks
    size_t current            # chunk allocations bump in
    size_t chunk_size
    size_t max_bytes          # 0: no limit
    size_t recycled           # bytes of chunks recycled since the last reset
    size_t lo, hi             # every chunk lies in [lo, hi): read without the lock
    # Chunk address ranges for readers without the lock (numpy's handler
    # deciding whose a pointer is): ranges[1 + 2i], ranges[2 + 2i] are chunk
    # i's [start, end); ranges[0] links the array it replaced, kept until
    # arena_destroy because a reader may still be scanning it.
    size_t* ranges
    size_t nranges            # published with a release store, after the entry
    size_t cap_ranges
    bint fast                 # no lock, normal build: the inline path applies
    pgo_stats_t stats
    pgo_lock_t lock


cdef pgo_arena_t* arena_create(size_t chunk_size, size_t max_bytes, bint threadsafe) except NULL nogil
cdef void arena_destroy(pgo_arena_t* a) noexcept nogil
cdef int arena_release(pgo_arena_t* a, void* p) except -1 nogil
cdef int arena_reset(pgo_arena_t* a) except -1 nogil
# Out of line: NULL with the exception set.
cdef void* _arena_alloc_slow(pgo_arena_t* a, size_t n, size_t align) noexcept nogil


cdef inline void arena_sync_stats(pgo_arena_t* a) noexcept nogil:
    cdef size_t i, used = 0
    for i in range(a.nchunks):
        used += a.chunks[i].top
    a.stats.in_use = used
    if used > a.stats.peak:
        a.stats.peak = used
    a.stats.lost = a.recycled + used - a.stats.requested


cdef inline void* arena_alloc(pgo_arena_t* a, size_t n, size_t align) except NULL nogil:
    """Allocate n bytes aligned to align (>= 8); raises MemoryError/ValueError."""
    cdef pgo_arena_chunk_t* c = &a.chunks[a.current]
    cdef char* p
    cdef size_t off
    if pgo_unlikely(not a.fast or pgo_bad_align(align) or n == 0):
        return _arena_alloc_slow(a, n, align)
    if align < PGO_ARENA_MIN_ALIGN:
        align = PGO_ARENA_MIN_ALIGN
    p = pgo_fit(c.base, c.size, c.top, align, n, &off)
    if pgo_unlikely(p == NULL or c.nblocks == c.cap_blocks):
        return _arena_alloc_slow(a, n, align)
    c.starts[c.nblocks] = <uint32_t>(off >> 3)
    c.nblocks += 1
    a.stats.allocs += 1
    a.stats.requested += n
    c.top = off + n
    return p


cdef class ArenaAllocator(Allocator):
    cdef pgo_arena_t* a
