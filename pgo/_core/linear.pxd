# LinearAllocator: a bump pointer over one malloc'd buffer.  No per-block
# header and no individual free: everything goes at once with linear_reset.
# stats.in_use, peak and lost are derived: call linear_sync_stats(s) before
# reading s.b.stats.
#
#   cdef pgo_linear_t* s = linear_create(1 << 20, False)
#   cdef char* p = <char*>linear_alloc(s, 256, 16)
#   linear_reset(s)
#   linear_destroy(s)

from pgo._core._base cimport Allocator, pgo_buffer_t
from pgo._core._typedefs cimport pgo_bad_align, pgo_fit, pgo_unlikely


ctypedef struct pgo_linear_t:
    pgo_buffer_t b            # first: what linear_alloc reads, together
    # numpy's handler, and when the buffer may rewind by itself:
    size_t handler_live       # blocks numpy's handler took and has not given back
    bint handler_used         # the handler took blocks since the last rewind
    # Rewinding by itself is safe only while every block since the last
    # rewind is counted (arrays and Python Blocks): a C-level linear_alloc
    # since then, which nothing counts, rules it out until reset().
    size_t owned_allocs       # arrays and Blocks allocated since the last rewind
    size_t allocs_at_rewind   # stats.allocs at the last rewind or reset
    size_t rewinds            # rewinds the handler made (reset() counts in stats.resets)


cdef pgo_linear_t* linear_create(size_t capacity, bint threadsafe) except NULL nogil
cdef void linear_destroy(pgo_linear_t* s) noexcept nogil
# Fails with AllocatorError (nothing changed) while Python Blocks are alive.
cdef int linear_reset(pgo_linear_t* s) except -1 nogil


# Out of line: locked, test-build and failing allocations; NULL with the
# exception set.
cdef void* _linear_alloc_slow(pgo_linear_t* s, size_t n, size_t align) noexcept nogil


cdef inline void linear_sync_stats(pgo_linear_t* s) noexcept nogil:
    # in_use, peak and lost follow from top (which only grows between
    # resets), so the hot path does not maintain them.
    s.b.stats.in_use = s.b.top
    if s.b.top > s.b.stats.peak:
        s.b.stats.peak = s.b.top
    s.b.stats.lost = s.b.top - s.b.stats.requested


cdef inline void* linear_alloc(pgo_linear_t* s, size_t n, size_t align) except NULL nogil:
    """Allocate n bytes aligned to align; raises MemoryError/ValueError."""
    cdef char* p
    cdef size_t off
    if pgo_unlikely(not s.b.fast or pgo_bad_align(align) or n == 0):
        return _linear_alloc_slow(s, n, align)
    p = pgo_fit(s.b.base, s.b.size, s.b.top, align, n, &off)
    if pgo_unlikely(p == NULL):
        return _linear_alloc_slow(s, n, align)
    s.b.top = off + n
    s.b.stats.allocs += 1
    s.b.stats.requested += n
    return p


cdef class LinearAllocator(Allocator):
    cdef pgo_linear_t* s
