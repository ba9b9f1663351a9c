# ArenaAllocator: chunked bump allocation for objects that share a lifetime.
# Grows chunk by chunk up to max_bytes; each chunk counts its live blocks and
# is reused (its bump pointer back to 0) only once nothing in it is alive.
#
#   cdef pgo_arena_t* a = arena_create(1 << 20, 0, False)   # 0: no limit
#   cdef void* p = arena_alloc(a, 512, 16)
#   arena_release(a, p)        # optional: lets p's chunk be reused early
#   arena_reset(a)             # everything, chunks kept for reuse
#   arena_destroy(a)

from libc.stdint cimport uintptr_t
from libc.string cimport memset

from pgo._core._base cimport Allocator, pgo_fail, pgo_fail_null
from pgo._core._typedefs cimport (
    PGO_DEBUG_FILL, PGO_ERR_ALIGN, PGO_FILL_ALLOC, PGO_OK, pgo_align_up,
    pgo_bad_align, pgo_lock, pgo_lock_t, pgo_stats_alloc, pgo_stats_t,
    pgo_unlikely, pgo_unlock,
)


ctypedef struct pgo_arena_chunk_t:
    char* base
    size_t size
    size_t top
    size_t live               # blocks handed out and not released


ctypedef struct pgo_arena_t:
    pgo_arena_chunk_t* chunks
    size_t nchunks
    size_t cap_chunks
    size_t current            # chunk allocations bump in
    size_t chunk_size
    size_t max_bytes          # 0: no limit
    pgo_stats_t stats
    pgo_lock_t lock


cdef pgo_arena_t* arena_create(size_t chunk_size, size_t max_bytes, bint threadsafe) except NULL nogil
cdef void arena_destroy(pgo_arena_t* a) noexcept nogil
# Moves to (or makes) another chunk; called when the current one is full.
cdef int _arena_alloc_slow(pgo_arena_t* a, size_t n, size_t align, void** out, size_t* chunk) noexcept nogil
# Marks one block of `chunk` released; the chunk is recycled at zero live.
cdef void _arena_release_in(pgo_arena_t* a, size_t chunk) noexcept nogil
cdef int arena_release(pgo_arena_t* a, void* p) except -1 nogil
cdef int arena_reset(pgo_arena_t* a) except -1 nogil


cdef inline int _arena_alloc_unlocked(pgo_arena_t* a, size_t n, size_t align, void** out, size_t* chunk) noexcept nogil:
    cdef pgo_arena_chunk_t* c = &a.chunks[a.current]
    cdef uintptr_t p
    cdef size_t off
    if pgo_unlikely(pgo_bad_align(align)):
        a.stats.failed += 1
        return PGO_ERR_ALIGN
    p = pgo_align_up(<uintptr_t>c.base + c.top, align)
    off = p - <uintptr_t>c.base
    # A zero-byte block still takes a byte, so that it has an address of its own.
    cdef size_t take = n + (n == 0)
    if pgo_unlikely(off > c.size or take > c.size - off):
        return _arena_alloc_slow(a, n, align, out, chunk)
    pgo_stats_alloc(&a.stats, a.stats.in_use + (off + take - c.top), n, off - c.top + (take - n))
    c.top = off + take
    c.live += 1
    if PGO_DEBUG_FILL:
        memset(<void*>p, PGO_FILL_ALLOC, n)
    out[0] = <void*>p
    chunk[0] = a.current
    return PGO_OK


cdef inline void* arena_alloc(pgo_arena_t* a, size_t n, size_t align) except NULL nogil:
    """Allocate n bytes aligned to align; raises MemoryError/ValueError."""
    cdef void* p = NULL
    cdef size_t chunk
    cdef int code
    pgo_lock(&a.lock, &a.stats)
    code = _arena_alloc_unlocked(a, n, align, &p, &chunk)
    pgo_unlock(&a.lock)
    if pgo_unlikely(code != PGO_OK):
        return pgo_fail_null(code, "ArenaAllocator", n, align)
    return p


cdef class ArenaAllocator(Allocator):
    cdef pgo_arena_t* a
