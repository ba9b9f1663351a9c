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
# everything above it is gone.  The inline paths handle only the common,
# valid case; locking, the test build's fills, errors and deferred releases
# go to the out-of-line functions in stack.pyx, which keeps the inline code
# small enough for the C compiler to inline.  stats.in_use is derived:
# call stack_sync_stats(s) before reading s.b.stats.

from libc.stdint cimport uint32_t, uintptr_t

from pgo._core._base cimport Allocator, pgo_buffer_t
from pgo._core._typedefs cimport pgo_bad_align, pgo_fit, pgo_unlikely

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
    pgo_buffer_t b            # first: the buffer, its top, stats and lock
    size_t last               # data offset of the most recent block (0: none)
    size_t ndead              # blocks given up but not yet released (DEAD)


cdef pgo_stack_t* stack_create(size_t capacity, bint threadsafe) except NULL nogil
cdef void stack_destroy(pgo_stack_t* s) noexcept nogil
# Releases every block above the mark; fails (PGO_ERR_LIVE) if a Python
# Block above it is still alive, and (PGO_ERR_ORDER) if the mark is above
# the top.  Nothing changes when it fails.
cdef int stack_release(pgo_stack_t* s, pgo_stack_mark_t m) except -1 nogil
cdef int stack_reset(pgo_stack_t* s) except -1 nogil
cdef pgo_stack_mark_t stack_mark(pgo_stack_t* s) noexcept nogil

# Out of line: return NULL / -1 with the exception set.
cdef void* _stack_alloc_slow(pgo_stack_t* s, size_t n, size_t align) noexcept nogil
cdef int _stack_free_slow(pgo_stack_t* s, void* p) noexcept nogil
cdef void _stack_pop_dead(pgo_stack_t* s) noexcept nogil


cdef inline pgo_stack_hdr_t* _stack_hdr(pgo_stack_t* s, size_t off) noexcept nogil:
    return <pgo_stack_hdr_t*>(s.b.base + off - sizeof(pgo_stack_hdr_t))


cdef inline void _stack_push(pgo_stack_t* s, size_t off, size_t n, size_t take) noexcept nogil:
    # Records a block of n bytes (take with the test build's canary) whose
    # data starts at `off`, above the current top: header, top, stats.
    cdef pgo_stack_hdr_t* h = _stack_hdr(s, off)
    h.prev_top = s.b.top
    h.prev_last = s.last
    h.magic = PGO_STACK_MAGIC
    h.flags = 0
    s.b.stats.allocs += 1
    s.b.stats.requested += n
    s.b.stats.lost += off - s.b.top + (take - n)
    s.b.top = off + take
    s.last = off
    if s.b.top > s.b.stats.peak:
        s.b.stats.peak = s.b.top


cdef inline void stack_sync_stats(pgo_stack_t* s) noexcept nogil:
    s.b.stats.in_use = s.b.top


cdef inline void* stack_alloc(pgo_stack_t* s, size_t n, size_t align) except NULL nogil:
    """Allocate n bytes aligned to align (>= 8); raises MemoryError/ValueError."""
    cdef char* p
    cdef size_t off
    if pgo_unlikely(not s.b.fast or pgo_bad_align(align)):
        return _stack_alloc_slow(s, n, align)
    if align < PGO_STACK_MIN_ALIGN:
        align = PGO_STACK_MIN_ALIGN
    p = pgo_fit(s.b.base, s.b.size, s.b.top + sizeof(pgo_stack_hdr_t), align, n, &off)
    if pgo_unlikely(p == NULL):
        return _stack_alloc_slow(s, n, align)
    _stack_push(s, off, n, n)
    return p


cdef inline int stack_free(pgo_stack_t* s, void* p) except -1 nogil:
    """Free the most recent block; NULL is a no-op.  Raises AllocatorError."""
    cdef size_t off
    cdef pgo_stack_hdr_t* h
    # NULL and foreign pointers below the buffer take the slow path too.
    if pgo_unlikely(not s.b.fast or <uintptr_t>p <= <uintptr_t>s.b.base):
        return _stack_free_slow(s, p)
    off = <uintptr_t>p - <uintptr_t>s.b.base
    if pgo_unlikely(off != s.last):
        return _stack_free_slow(s, p)
    h = _stack_hdr(s, off)
    if pgo_unlikely(h.flags != 0):
        return _stack_free_slow(s, p)
    s.b.top = h.prev_top
    s.last = h.prev_last
    s.b.stats.frees += 1
    if pgo_unlikely(s.ndead != 0 and s.last != 0 and (_stack_hdr(s, s.last).flags & PGO_STACK_DEAD)):
        _stack_pop_dead(s)
    return 0


cdef class StackAllocator(Allocator):
    cdef pgo_stack_t* s
