"""StackAllocator: LIFO scratch memory over one malloc'd buffer.

Design: the hot path (alloc, free of the top block) is inline in
``stack.pxd``; the complete versions, with locking, errors, the test
build's fill and canary and deferred releases, are here.  Each block carries a 24-byte header (the previous top and the
previous block), which is what lets ``free`` check LIFO order and lets a
Python Block that dies out of order be released later, once every block
above it is gone, instead of corrupting the stack.

# NOTE: ownership.  The ``pgo_stack_t`` and its buffer belong to the
# StackAllocator object (created in ``__cinit__``, freed by
# ``Allocator.__dealloc__`` when it dies); C callers of ``stack_create``
# own what it returns and free it with ``stack_destroy``.  A Python Block holds its allocator, so
# the buffer outlives every Block and array made from it.
# NOTE: threads and the GIL.  Nothing here needs the GIL: every C path is
# nogil.  Without threadsafe=True the struct relies on its single user (or
# the GIL) for exclusion; with it, every entry point in stack.pxd and every
# backend call (numpy's handler) takes the mutex.
"""

cimport cython
from libc.stdint cimport SIZE_MAX, uintptr_t
from libc.string cimport memset

from pgo._core._base cimport (
    Allocator, Block, pgo_buffer_create, pgo_buffer_destroy, pgo_buffer_place,
    pgo_locked_reset, pgo_locked_alloc, pgo_locked_free, pgo_raise, pgo_raise_at,
)
from pgo._core._typedefs cimport (
    PGO_CANARY, PGO_DEBUG_FILL, PGO_ERR_DOUBLE_FREE, PGO_ERR_FOREIGN, PGO_ERR_INTERIOR,
    PGO_ERR_LIVE, PGO_ERR_ORDER, PGO_ERR_OVERRUN, PGO_ERR_PY_OWNED, PGO_FILL_ALLOC, PGO_FILL_FREE,
    PGO_OK, pgo_add_overflow, pgo_canary_ok, pgo_lock, pgo_lock_gil_held, pgo_stats_reset,
    pgo_unlock, pgo_vg_alloc, pgo_vg_free, pgo_within,
)

import warnings


cdef pgo_stack_t* stack_create(size_t capacity, bint threadsafe) except NULL nogil:
    return <pgo_stack_t*>pgo_buffer_create(sizeof(pgo_stack_t), capacity, threadsafe,
                                          "StackAllocator")


cdef void stack_destroy(pgo_stack_t* s) noexcept nogil:
    pgo_buffer_destroy(s)


cdef int _stack_alloc_unlocked(void* state, size_t n, size_t align, void** out) noexcept nogil:
    # The complete allocation: what stack_alloc inlines, plus the test
    # build's fill and canary, and the failure codes.
    cdef pgo_stack_t* s = <pgo_stack_t*>state
    cdef size_t off, take
    cdef int err
    if pgo_add_overflow(n, PGO_CANARY, &take):
        take = SIZE_MAX                 # fails below, as too big
    err = pgo_buffer_place(s.b.base, s.b.size, s.b.top + sizeof(pgo_stack_hdr_t), n, take, align,
                           PGO_STACK_MIN_ALIGN, &s.b.stats, &off)
    if err != PGO_OK:
        return err
    # For valgrind a block runs from the old top (padding and header
    # included) to the end of its canary.
    pgo_vg_alloc(s, s.b.base + s.b.top, off + take - s.b.top)
    _stack_push(s, off, n, take)
    if PGO_DEBUG_FILL:
        memset(s.b.base + off, PGO_FILL_ALLOC, take)
    out[0] = s.b.base + off
    return PGO_OK


cdef void _stack_drop_top(pgo_stack_t* s) noexcept nogil:
    # Releases the top block: its padding, header, data and canary.
    cdef pgo_stack_hdr_t* h = _stack_hdr(s, s.last)
    cdef size_t new_top = h.prev_top
    cdef size_t new_last = h.prev_last
    if PGO_DEBUG_FILL:
        memset(s.b.base + new_top, PGO_FILL_FREE, s.b.top - new_top)
    pgo_vg_free(s, s.b.base + new_top)
    s.b.top = new_top
    s.last = new_last


cdef void _stack_pop_dead(pgo_stack_t* s) noexcept nogil:
    while s.last and _stack_hdr(s, s.last).flags & PGO_STACK_DEAD:
        s.ndead -= 1
        _stack_drop_top(s)


cdef int _stack_classify(pgo_stack_t* s, size_t off) noexcept nogil:
    # Error path only: walks the chain of blocks to say what `off` is.
    cdef size_t k = s.last
    while k:
        if k == off:
            if _stack_hdr(s, k).flags & PGO_STACK_DEAD:
                return PGO_ERR_DOUBLE_FREE
            return PGO_ERR_ORDER
        k = _stack_hdr(s, k).prev_last
    return PGO_ERR_INTERIOR if off < s.b.top else PGO_ERR_FOREIGN


cdef int _stack_free_unlocked(pgo_stack_t* s, void* p, bint from_python) noexcept nogil:
    # The complete free of the top block; nothing changes when it fails.
    cdef uintptr_t a = <uintptr_t>p
    cdef size_t off
    cdef pgo_stack_hdr_t* h
    if p == NULL:
        return PGO_OK
    if a < <uintptr_t>s.b.base or a - <uintptr_t>s.b.base > s.b.top:
        return PGO_ERR_FOREIGN
    off = a - <uintptr_t>s.b.base
    if off != s.last or off == 0:
        return _stack_classify(s, off)
    h = _stack_hdr(s, off)
    if h.flags & PGO_STACK_DEAD:
        return PGO_ERR_DOUBLE_FREE
    if h.flags & PGO_STACK_PY and not from_python:
        return PGO_ERR_PY_OWNED
    if PGO_CANARY and not pgo_canary_ok(s.b.base + s.b.top - PGO_CANARY, PGO_CANARY):
        return PGO_ERR_OVERRUN
    h.flags |= PGO_STACK_DEAD
    s.ndead += 1
    s.b.stats.frees += 1
    _stack_pop_dead(s)
    return PGO_OK


cdef int _stack_free_c(void* state, void* p) noexcept nogil:
    return _stack_free_unlocked(<pgo_stack_t*>state, p, False)


cdef void* _stack_alloc_slow(pgo_stack_t* s, size_t n, size_t align) noexcept nogil:
    return pgo_locked_alloc(&s.b.lock, &s.b.stats, _stack_alloc_unlocked, s, n, align,
                            "StackAllocator")


cdef int _stack_free_slow(pgo_stack_t* s, void* p) noexcept nogil:
    return pgo_locked_free(&s.b.lock, &s.b.stats, _stack_free_c, s, p, "StackAllocator")


cdef void _stack_kill_unlocked(pgo_stack_t* s, void* p) noexcept nogil:
    # A Python Block died: its block is released now if it is on top, else
    # as soon as every block above it is gone.
    cdef size_t off = <uintptr_t>p - <uintptr_t>s.b.base
    _stack_hdr(s, off).flags |= PGO_STACK_DEAD
    s.ndead += 1
    s.b.stats.frees += 1
    if off == s.last:
        _stack_pop_dead(s)


# -- numpy's handler (see pgo_backend_t) ----------------------------------
# Arrays die in any order: a block given back below the top is marked dead
# and released with the blocks above it, as a dropped Block's is.

cdef int _stack_alloc_py(void* state, size_t n, size_t align, void** out) noexcept nogil:
    # A block Python owns (an array's or a Block's): C code cannot free it.
    cdef pgo_stack_t* s = <pgo_stack_t*>state
    cdef int err = _stack_alloc_unlocked(s, n, align, out)
    if err == PGO_OK:
        _stack_hdr(s, <uintptr_t>out[0] - <uintptr_t>s.b.base).flags |= PGO_STACK_PY
    return err


cdef bint _stack_holds(void* state, void* p) noexcept nogil:
    # base and size never change: no lock needed.
    cdef pgo_stack_t* s = <pgo_stack_t*>state
    return p != s.b.base and pgo_within(p, s.b.base, s.b.size)    # offset 0 is never a block


cdef inline bint _stack_looks_like_block(pgo_stack_t* s, size_t off) noexcept nogil:
    # O(1): a block's header, in place, consistent with a block below the
    # top.  Arrays freed oldest first (a list of them dropped) would make a
    # walk from the top quadratic.  Only pointers the handler handed out get
    # here (numpy gives back nothing else), so a header is not forged.
    cdef pgo_stack_hdr_t* h
    if off < sizeof(pgo_stack_hdr_t) or off >= s.b.top or off & 7:
        return False
    h = _stack_hdr(s, off)
    return (h.magic == PGO_STACK_MAGIC and h.prev_top <= off - sizeof(pgo_stack_hdr_t)
            and h.prev_last < off)


cdef int _stack_give_unlocked(void* state, void* p) noexcept nogil:
    cdef pgo_stack_t* s = <pgo_stack_t*>state
    cdef size_t off = <uintptr_t>p - <uintptr_t>s.b.base
    cdef int err = PGO_OK
    if off != s.last and not _stack_looks_like_block(s, off):
        # Not the top, and no header of a block under it: say what it is
        # (the walk is as deep as the stack, but only misuse gets here).
        err = _stack_classify(s, off)
        if err == PGO_ERR_FOREIGN or err == PGO_ERR_ORDER:
            err = PGO_ERR_DOUBLE_FREE   # above the top: gone already
    if err == PGO_OK and _stack_hdr(s, off).flags != PGO_STACK_PY:
        err = PGO_ERR_DOUBLE_FREE if _stack_hdr(s, off).flags & PGO_STACK_DEAD else PGO_ERR_PY_OWNED
    if err == PGO_OK:
        _stack_kill_unlocked(s, p)
    return err


cdef size_t _stack_span_unlocked(void* state, void* p) noexcept nogil:
    # Walks down from the top: a block ends where the one above it began
    # (its header's prev_top), the top block at the top.
    cdef pgo_stack_t* s = <pgo_stack_t*>state
    cdef size_t off = <uintptr_t>p - <uintptr_t>s.b.base
    cdef size_t k = s.last, end = s.b.top
    while k > off:
        end = _stack_hdr(s, k).prev_top
        k = _stack_hdr(s, k).prev_last
    if k == off and off != 0 and not (_stack_hdr(s, k).flags & PGO_STACK_DEAD):
        return end - off - PGO_CANARY
    return 0


cdef pgo_stack_mark_t stack_mark(pgo_stack_t* s) noexcept nogil:
    cdef pgo_stack_mark_t m
    pgo_lock(&s.b.lock, &s.b.stats)
    m.top = s.b.top
    m.last = s.last
    pgo_unlock(&s.b.lock)
    return m


cdef int _stack_release_unlocked(pgo_stack_t* s, pgo_stack_mark_t m) noexcept nogil:
    cdef size_t k = s.last
    cdef size_t released = 0, dead = 0
    cdef pgo_stack_hdr_t* h
    if m.top > s.b.top:
        return PGO_ERR_ORDER
    while k > m.top:
        h = _stack_hdr(s, k)
        if h.flags & PGO_STACK_PY and not (h.flags & PGO_STACK_DEAD):
            return PGO_ERR_LIVE
        if not (h.flags & PGO_STACK_DEAD):
            released += 1
        else:
            dead += 1
        k = h.prev_last
    if k != m.last:
        # A stale mark: the block it remembers was released and its space
        # reused, so the chain never reaches it.
        return PGO_ERR_ORDER
    s.b.stats.frees += released
    s.ndead -= dead
    while s.last != m.last:
        _stack_drop_top(s)
    s.b.top = m.top
    return PGO_OK


cdef int stack_release(pgo_stack_t* s, pgo_stack_mark_t m) except -1 nogil:
    cdef int code
    pgo_lock(&s.b.lock, &s.b.stats)
    code = _stack_release_unlocked(s, m)
    pgo_unlock(&s.b.lock)
    if code != PGO_OK:
        return pgo_raise(code, "StackAllocator", 0, 0)
    return 0


cdef int _stack_reset_unlocked(void* state) noexcept nogil:
    cdef pgo_stack_t* s = <pgo_stack_t*>state
    cdef pgo_stack_mark_t zero
    zero.top = 0
    zero.last = 0
    _stack_release_unlocked(s, zero)
    pgo_stats_reset(&s.b.stats)
    return PGO_OK


cdef int stack_reset(pgo_stack_t* s) except -1 nogil:
    return pgo_locked_reset(&s.b.lock, &s.b.stats, _stack_reset_unlocked, s, "StackAllocator")


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
        self._bind_buffer(&self.s.b, _stack_alloc_py, _stack_holds, _stack_give_unlocked,
                          _stack_span_unlocked, PGO_STACK_MIN_ALIGN)

    cdef int _c_alloc(self, size_t nbytes, size_t align, void** out, size_t* token) noexcept:
        return _stack_alloc_py(self.s, nbytes, align, out)

    cdef int _c_free(self, Block b) noexcept:
        return _stack_free_unlocked(self.s, b.ptr, True)

    cdef void _c_dead(self, Block b) noexcept:
        _stack_kill_unlocked(self.s, b.ptr)

    cdef int _c_reset(self) noexcept:
        return _stack_reset_unlocked(self.s)

    def _describe_nomem(self, size_t nbytes):
        return (f"{self!r}: cannot allocate {nbytes:,} bytes: {self.s.b.size - self.s.b.top:,} "
                f"of {self.s.b.size:,} bytes free (each block also takes a "
                f"{sizeof(pgo_stack_hdr_t)}-byte header and alignment padding)")

    cdef void _sync(self) noexcept:
        stack_sync_stats(self.s)

    cdef size_t _canary_len(self, Block b) noexcept:
        return PGO_CANARY

    def _extra_stats(self):
        return {"top": self.s.b.top, "header_bytes": sizeof(pgo_stack_hdr_t),
                "canary_bytes": PGO_CANARY}

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
        code = _stack_free_unlocked(self.s, <void*>address, False)
        pgo_unlock(self._lock)
        if code != PGO_OK:
            pgo_raise_at(code, "StackAllocator", <void*>address)

    def __repr__(self):
        return (f"<StackAllocator capacity={self.s.b.size} top={self.s.b.top} "
                f"threadsafe={bool(self.s.b.lock.enabled)}>")


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
        pgo_lock_gil_held(&s.b.lock, &s.b.stats)
        self.mark.top = s.b.top
        self.mark.last = s.last
        pgo_unlock(&s.b.lock)
        self.live = 0
        return self

    def __exit__(self, exc_type, exc, tb):
        # Dropped blocks were already released (the top block is never
        # dead); what is left above the mark is still referenced.
        cdef pgo_stack_t* s = self.stack.s
        cdef size_t k
        cdef Py_ssize_t live = 0
        pgo_lock_gil_held(&s.b.lock, &s.b.stats)
        k = s.last
        while k > self.mark.top:
            if not (_stack_hdr(s, k).flags & PGO_STACK_DEAD):
                live += 1
            k = _stack_hdr(s, k).prev_last
        pgo_unlock(&s.b.lock)
        self.live = live
        if live:
            warnings.warn(
                f"{live} block(s) allocated in a frame of {self.stack!r} are still "
                f"referenced; their memory stays reserved until they are dropped",
                ResourceWarning, stacklevel=2)
        return False
