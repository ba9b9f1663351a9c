# LinearAllocator: a bump pointer over one malloc'd buffer.  No per-block
# header and no individual free: everything goes at once with linear_reset.
#
#   cdef pgo_linear_t* s = linear_create(1 << 20, False)
#   cdef char* p = <char*>linear_alloc(s, 256, 16)
#   linear_reset(s)
#   linear_destroy(s)

from libc.stdint cimport uintptr_t
from libc.string cimport memset

from pgo._core._base cimport Allocator, pgo_fail, pgo_fail_null
from pgo._core._typedefs cimport (
    PGO_DEBUG_FILL, PGO_ERR_ALIGN, PGO_ERR_NOMEM, PGO_ERR_TOO_BIG,
    PGO_FILL_ALLOC, PGO_OK, pgo_align_up, pgo_bad_align, pgo_lock,
    pgo_lock_t, pgo_stats_alloc, pgo_stats_t, pgo_unlikely, pgo_unlock,
)


ctypedef struct pgo_linear_t:
    char* base
    size_t size
    size_t top
    pgo_stats_t stats
    pgo_lock_t lock


cdef pgo_linear_t* linear_create(size_t capacity, bint threadsafe) except NULL nogil
cdef void linear_destroy(pgo_linear_t* s) noexcept nogil
# Fails with AllocatorError (nothing changed) while Python Blocks are alive.
cdef int linear_reset(pgo_linear_t* s) except -1 nogil


cdef inline int _linear_alloc_unlocked(pgo_linear_t* s, size_t n, size_t align, void** out) noexcept nogil:
    cdef uintptr_t p
    cdef size_t off
    if pgo_unlikely(pgo_bad_align(align)):
        s.stats.failed += 1
        return PGO_ERR_ALIGN
    p = pgo_align_up(<uintptr_t>s.base + s.top, align)
    off = p - <uintptr_t>s.base
    # A zero-byte block still takes a byte, so that it has an address of its own.
    cdef size_t take = n + (n == 0)
    if pgo_unlikely(off > s.size or take > s.size - off):
        s.stats.failed += 1
        return PGO_ERR_TOO_BIG if n > s.size else PGO_ERR_NOMEM
    pgo_stats_alloc(&s.stats, off + take, n, off - s.top + (take - n))
    s.top = off + take
    if PGO_DEBUG_FILL:
        memset(<void*>p, PGO_FILL_ALLOC, n)
    out[0] = <void*>p
    return PGO_OK


cdef inline void* linear_alloc(pgo_linear_t* s, size_t n, size_t align) except NULL nogil:
    """Allocate n bytes aligned to align; raises MemoryError/ValueError."""
    cdef void* p = NULL
    cdef int code
    pgo_lock(&s.lock, &s.stats)
    code = _linear_alloc_unlocked(s, n, align, &p)
    pgo_unlock(&s.lock)
    if pgo_unlikely(code != PGO_OK):
        return pgo_fail_null(code, "LinearAllocator", n, align)
    return p


cdef class LinearAllocator(Allocator):
    cdef pgo_linear_t* s
