"""StackAllocator: LIFO scratch memory over one malloc'd buffer.

Design: the hot path (alloc, free of the top block) is inline in
``stack.pxd``.  Each block carries a 24-byte header (the previous top and the
previous block), which is what lets ``free`` check LIFO order and lets a
Python Block that dies out of order be released later, once every block
above it is gone, instead of corrupting the stack.

Ownership: the ``pgo_stack_t`` and its buffer belong to the StackAllocator
object (created in ``__cinit__``, freed in ``__dealloc__``); C callers of
``stack_create`` own what it returns and free it with ``stack_destroy``.

# NOTE: without threadsafe=True the struct relies on its single user (or the
# GIL) for exclusion; with it, every entry point in stack.pxd locks.
"""

cimport cython
from libc.string cimport memset

from pgo._core._base cimport Allocator, Block, pgo_raise
from pgo._core._memory cimport pgo_sys_alloc, pgo_sys_calloc, pgo_sys_free
from pgo._core._typedefs cimport (
    PGO_DEBUG_FILL, PGO_ERR_LIVE, PGO_ERR_NOMEM, PGO_ERR_ORDER, PGO_FILL_FREE,
    PGO_OK, pgo_lock, pgo_lock_destroy, pgo_lock_gil_held, pgo_lock_init,
    pgo_unlock,
)

import warnings


cdef pgo_stack_t* stack_create(size_t capacity, bint threadsafe) except NULL nogil:
    cdef pgo_stack_t* s = <pgo_stack_t*>pgo_sys_calloc(1, sizeof(pgo_stack_t))
    if s == NULL:
        pgo_raise(PGO_ERR_NOMEM, "StackAllocator", sizeof(pgo_stack_t), 0)
        return NULL
    s.base = <char*>pgo_sys_alloc(capacity, 64)
    if s.base == NULL:
        pgo_sys_free(s)
        pgo_raise(PGO_ERR_NOMEM, "StackAllocator", capacity, 64)
        return NULL
    s.size = capacity
    s.stats.capacity = capacity
    pgo_lock_init(&s.lock, threadsafe)
    if PGO_DEBUG_FILL:
        memset(s.base, PGO_FILL_FREE, capacity)
    return s


cdef void stack_destroy(pgo_stack_t* s) noexcept nogil:
    if s != NULL:
        pgo_lock_destroy(&s.lock)
        pgo_sys_free(s.base)
        pgo_sys_free(s)


cdef inline int _stack_release_unlocked(pgo_stack_t* s, pgo_stack_mark_t m) noexcept nogil:
    cdef size_t k = s.last
    cdef size_t released = 0
    cdef pgo_stack_hdr_t* h
    if m.top > s.top:
        return PGO_ERR_ORDER
    while k > m.top:
        h = _stack_hdr(s, k)
        if h.flags & PGO_STACK_PY and not (h.flags & PGO_STACK_DEAD):
            return PGO_ERR_LIVE
        if not (h.flags & PGO_STACK_DEAD):
            released += 1
        k = h.prev_last
    s.stats.frees += released
    if PGO_DEBUG_FILL and m.top < s.top:
        memset(s.base + m.top, PGO_FILL_FREE, s.top - m.top)
    s.top = m.top
    s.last = m.last
    s.stats.in_use = s.top
    return PGO_OK


cdef int stack_release(pgo_stack_t* s, pgo_stack_mark_t m) except -1 nogil:
    cdef int code
    pgo_lock(&s.lock, &s.stats)
    code = _stack_release_unlocked(s, m)
    pgo_unlock(&s.lock)
    if code != PGO_OK:
        return pgo_raise(code, "StackAllocator", 0, 0)
    return 0


cdef int _stack_reset_unlocked(pgo_stack_t* s) noexcept nogil:
    cdef pgo_stack_mark_t zero
    if s.stats.live_blocks:
        return PGO_ERR_LIVE
    zero.top = 0
    zero.last = 0
    _stack_release_unlocked(s, zero)
    s.stats.resets += 1
    s.stats.requested = 0
    s.stats.lost = 0
    return PGO_OK


cdef int stack_reset(pgo_stack_t* s) except -1 nogil:
    cdef int code
    pgo_lock(&s.lock, &s.stats)
    code = _stack_reset_unlocked(s)
    pgo_unlock(&s.lock)
    if code != PGO_OK:
        return pgo_raise(code, "StackAllocator", 0, 0)
    return 0


cdef class StackAllocator(Allocator):
    """LIFO scratch memory: the fastest allocator when blocks die in reverse
    order of birth (temporaries of nested calls).

    Args:
        capacity: bytes in the buffer; fixed for the allocator's life.
        threadsafe: take a mutex on every operation, so that the allocator
            can be shared by threads, including C code running without the
            GIL.

    Blocks from ``alloc()`` are freed with ``free(block)``, newest first;
    freeing any other raises AllocatorError and changes nothing.  Blocks and
    arrays that are simply dropped are released as soon as every block above
    them is gone.  ``with stack.frame():`` scopes a group of allocations: on
    exit everything allocated inside is released, except what is still
    referenced, which stays reserved until it is dropped (a ResourceWarning
    says so).  Each block costs a 24-byte header and alignment is at least 8.

    Thread-safety: see `threadsafe`; without it, the GIL must be held.
    """

    def __cinit__(self, size_t capacity=1048576, *, bint threadsafe=False):
        self.s = stack_create(capacity, threadsafe)
        self._st = &self.s.stats
        self._lock = &self.s.lock
        self._min_align = PGO_STACK_MIN_ALIGN

    def __dealloc__(self):
        stack_destroy(self.s)

    cdef int _c_alloc(self, size_t nbytes, size_t align, void** out, size_t* token) noexcept:
        cdef int code = _stack_alloc_unlocked(self.s, nbytes, align, out)
        if code == PGO_OK:
            _stack_hdr(self.s, <char*>out[0] - self.s.base).flags |= PGO_STACK_PY
        return code

    cdef int _c_free(self, Block b) noexcept:
        return _stack_free_unlocked(self.s, b.ptr)

    cdef void _c_dead(self, Block b) noexcept:
        _stack_kill_unlocked(self.s, b.ptr)

    cdef int _c_reset(self) noexcept:
        return _stack_reset_unlocked(self.s)

    cdef object _where(self, char* p):
        return f"offset {p - self.s.base}"

    def _describe_nomem(self, size_t nbytes):
        return (f"{self!r}: cannot allocate {nbytes:,} bytes: {self.s.size - self.s.top:,} "
                f"of {self.s.size:,} bytes free (each block also takes a "
                f"{sizeof(pgo_stack_hdr_t)}-byte header and alignment padding)")

    def _extra_stats(self):
        return {"top": self.s.top, "header_bytes": sizeof(pgo_stack_hdr_t)}

    def frame(self):
        """``with stack.frame() as f:`` -- release what is allocated inside on exit.

        Blocks still referenced at exit stay reserved until they are dropped;
        ``f.live`` counts them.
        """
        return StackFrame(self)

    def _free_address(self, size_t address):
        """Test-only: run the C-level free on a raw address."""
        cdef int code
        pgo_lock_gil_held(self._lock, self._st)
        code = _stack_free_unlocked(self.s, <void*>address)
        pgo_unlock(self._lock)
        if code != PGO_OK:
            pgo_raise(code, "StackAllocator", 0, 0)

    def __repr__(self):
        return (f"<StackAllocator capacity={self.s.size} top={self.s.top} "
                f"threadsafe={bool(self.s.lock.enabled)}>")


@cython.final
cdef class StackFrame:
    """A scope of a StackAllocator; see ``StackAllocator.frame()``."""

    cdef StackAllocator stack
    cdef pgo_stack_mark_t mark
    cdef readonly Py_ssize_t live

    def __cinit__(self, StackAllocator stack not None):
        self.stack = stack

    def __enter__(self):
        cdef pgo_stack_t* s = self.stack.s
        pgo_lock_gil_held(&s.lock, &s.stats)
        self.mark.top = s.top
        self.mark.last = s.last
        pgo_unlock(&s.lock)
        self.live = 0
        return self

    def __exit__(self, exc_type, exc, tb):
        # Dropped blocks were already released (the top block is never
        # dead); what is left above the mark is still referenced.
        cdef pgo_stack_t* s = self.stack.s
        cdef size_t k
        cdef Py_ssize_t live = 0
        pgo_lock_gil_held(&s.lock, &s.stats)
        k = s.last
        while k > self.mark.top:
            if not (_stack_hdr(s, k).flags & PGO_STACK_DEAD):
                live += 1
            k = _stack_hdr(s, k).prev_last
        pgo_unlock(&s.lock)
        self.live = live
        if live:
            warnings.warn(
                f"{live} block(s) allocated in a frame of {self.stack!r} are still "
                f"referenced; their memory stays reserved until they are dropped",
                ResourceWarning, stacklevel=2)
        return False
