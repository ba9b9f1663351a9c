# StackAllocator: LIFO scratch memory.  C-level API: a struct, inline
# nogil alloc/free (the hot path, inlined into callers), frames as marks.
#
#   cdef pgo_stack_t* s = stack_create(1 << 20, False)
#   cdef pgo_stack_mark_t m = stack_mark(s)
#   cdef double* x = <double*>stack_alloc(s, 100 * sizeof(double), 64)
#   ...
#   stack_release(s, m)          # everything since the mark, at once
#   stack_destroy(s)
#
# Every block is preceded by a header holding the stack top and the previous
# block from before it, so a free is checked against the LIFO order and a
# block given up out of order (a dropped Python Block) is released as soon as
# everything above it is gone.

from libc.stdint cimport uint32_t, uintptr_t
from libc.string cimport memset

from pgo._core._base cimport Allocator, pgo_fail, pgo_fail_null
from pgo._core._typedefs cimport (
    PGO_DEBUG_FILL, PGO_ERR_ALIGN, PGO_ERR_DOUBLE_FREE, PGO_ERR_FOREIGN,
    PGO_ERR_INTERIOR, PGO_ERR_LIVE, PGO_ERR_NOMEM, PGO_ERR_ORDER,
    PGO_ERR_TOO_BIG, PGO_FILL_ALLOC, PGO_FILL_FREE, PGO_OK, pgo_align_up,
    pgo_bad_align, pgo_lock, pgo_lock_t, pgo_stats_alloc, pgo_stats_t,
    pgo_unlikely, pgo_unlock,
)

cdef enum:
    PGO_STACK_MAGIC = 0x5354434B
    PGO_STACK_DEAD = 1        # given up, waiting for the blocks above it
    PGO_STACK_PY = 2          # owned by a Python Block
    PGO_STACK_MIN_ALIGN = 8   # headers are 8-byte words


ctypedef struct pgo_stack_hdr_t:
    size_t prev_top           # stack top before this block
    size_t prev_last          # data offset of the block below (0: none)
    uint32_t magic
    uint32_t flags


ctypedef struct pgo_stack_mark_t:
    size_t top
    size_t last


ctypedef struct pgo_stack_t:
    char* base
    size_t size               # bytes in the buffer
    size_t top                # offset of the first free byte
    size_t last               # data offset of the most recent block (0: none)
    pgo_stats_t stats
    pgo_lock_t lock


cdef pgo_stack_t* stack_create(size_t capacity, bint threadsafe) except NULL nogil
cdef void stack_destroy(pgo_stack_t* s) noexcept nogil
# Releases every block above the mark; fails (PGO_ERR_LIVE) if a Python
# Block above it is still alive, and (PGO_ERR_ORDER) if the mark is above
# the top.  Nothing changes when it fails.
cdef int stack_release(pgo_stack_t* s, pgo_stack_mark_t m) except -1 nogil
cdef int stack_reset(pgo_stack_t* s) except -1 nogil


cdef inline pgo_stack_hdr_t* _stack_hdr(pgo_stack_t* s, size_t off) noexcept nogil:
    return <pgo_stack_hdr_t*>(s.base + off - sizeof(pgo_stack_hdr_t))


cdef inline void _stack_pop_dead(pgo_stack_t* s) noexcept nogil:
    cdef pgo_stack_hdr_t* h
    cdef size_t old_top = s.top
    while s.last:
        h = _stack_hdr(s, s.last)
        if not (h.flags & PGO_STACK_DEAD):
            break
        s.top = h.prev_top
        s.last = h.prev_last
    if PGO_DEBUG_FILL and s.top < old_top:
        memset(s.base + s.top, PGO_FILL_FREE, old_top - s.top)
    s.stats.in_use = s.top


cdef inline int _stack_alloc_unlocked(pgo_stack_t* s, size_t n, size_t align, void** out) noexcept nogil:
    cdef uintptr_t p
    cdef size_t off
    cdef pgo_stack_hdr_t* h
    if pgo_unlikely(pgo_bad_align(align)):
        s.stats.failed += 1
        return PGO_ERR_ALIGN
    if align < PGO_STACK_MIN_ALIGN:
        align = PGO_STACK_MIN_ALIGN
    p = pgo_align_up(<uintptr_t>s.base + s.top + sizeof(pgo_stack_hdr_t), align)
    off = p - <uintptr_t>s.base
    if pgo_unlikely(off > s.size or n > s.size - off):
        s.stats.failed += 1
        return PGO_ERR_TOO_BIG if n > s.size else PGO_ERR_NOMEM
    h = <pgo_stack_hdr_t*>(p - sizeof(pgo_stack_hdr_t))
    h.prev_top = s.top
    h.prev_last = s.last
    h.magic = PGO_STACK_MAGIC
    h.flags = 0
    s.top = off + n
    s.last = off
    pgo_stats_alloc(&s.stats, s.top, n, off - h.prev_top)
    if PGO_DEBUG_FILL:
        memset(<void*>p, PGO_FILL_ALLOC, n)
    out[0] = <void*>p
    return PGO_OK


cdef inline int _stack_classify(pgo_stack_t* s, size_t off) noexcept nogil:
    # Error path only: walks the chain of blocks to say what `off` is.
    cdef size_t k = s.last
    while k:
        if k == off:
            if _stack_hdr(s, k).flags & PGO_STACK_DEAD:
                return PGO_ERR_DOUBLE_FREE
            return PGO_ERR_ORDER
        k = _stack_hdr(s, k).prev_last
    return PGO_ERR_INTERIOR if off < s.top else PGO_ERR_FOREIGN


cdef inline int _stack_free_unlocked(pgo_stack_t* s, void* p) noexcept nogil:
    cdef uintptr_t a = <uintptr_t>p
    cdef size_t off
    cdef pgo_stack_hdr_t* h
    if p == NULL:
        return PGO_OK
    if a < <uintptr_t>s.base or a - <uintptr_t>s.base > s.top:
        return PGO_ERR_FOREIGN
    off = a - <uintptr_t>s.base
    if pgo_unlikely(off != s.last or off == 0):
        return _stack_classify(s, off)
    h = _stack_hdr(s, off)
    h.flags |= PGO_STACK_DEAD
    s.stats.frees += 1
    _stack_pop_dead(s)
    return PGO_OK


cdef inline void _stack_kill_unlocked(pgo_stack_t* s, void* p) noexcept nogil:
    # A Python Block died: its block is released now if it is on top, else
    # as soon as every block above it is gone.
    cdef size_t off = <uintptr_t>p - <uintptr_t>s.base
    _stack_hdr(s, off).flags |= PGO_STACK_DEAD
    s.stats.frees += 1
    if off == s.last:
        _stack_pop_dead(s)


cdef inline void* stack_alloc(pgo_stack_t* s, size_t n, size_t align) except NULL nogil:
    """Allocate n bytes aligned to align (>= 8); raises MemoryError/ValueError."""
    cdef void* p = NULL
    cdef int code
    pgo_lock(&s.lock, &s.stats)
    code = _stack_alloc_unlocked(s, n, align, &p)
    pgo_unlock(&s.lock)
    if pgo_unlikely(code != PGO_OK):
        return pgo_fail_null(code, "StackAllocator", n, align)
    return p


cdef inline int stack_free(pgo_stack_t* s, void* p) except -1 nogil:
    """Free the most recent block; NULL is a no-op.  Raises AllocatorError."""
    cdef int code
    pgo_lock(&s.lock, &s.stats)
    code = _stack_free_unlocked(s, p)
    pgo_unlock(&s.lock)
    if pgo_unlikely(code != PGO_OK):
        return pgo_fail(code, "StackAllocator", 0, 0)
    return 0


cdef inline pgo_stack_mark_t stack_mark(pgo_stack_t* s) noexcept nogil:
    cdef pgo_stack_mark_t m
    pgo_lock(&s.lock, &s.stats)
    m.top = s.top
    m.last = s.last
    pgo_unlock(&s.lock)
    return m


cdef class StackAllocator(Allocator):
    cdef pgo_stack_t* s
