"""LinearAllocator: bump-pointer memory released all at once.

Design: an allocation is an aligned bump of ``top`` (inline in
``linear.pxd``); there is no header and no individual free.  ``reset()``
moves ``top`` back to 0, and refuses while any Python Block or array from
the allocator is alive, so no view can outlive its memory.

# NOTE: ownership.  The ``pgo_linear_t`` and its buffer belong to the
# LinearAllocator object (created in ``__cinit__``, freed by
# ``Allocator.__dealloc__`` when it dies), or to the C caller of
# ``linear_create``, who frees it with ``linear_destroy``.  A Python Block holds its allocator, so the
# buffer outlives every Block and array made from it.
# NOTE: threads and the GIL.  Nothing here needs the GIL: every C path is
# nogil.  Without threadsafe=True the struct relies on its single user (or
# the GIL) for exclusion; with it, every entry point in linear.pxd and
# every backend call (numpy's handler) takes the mutex.  ``base`` and
# ``size`` never change, so range tests need no lock.
"""

from libc.stdint cimport uintptr_t
from libc.string cimport memset

from pgo._core._base cimport (
    Allocator, Block, pgo_buffer_create, pgo_buffer_destroy, pgo_buffer_place,
    pgo_locked_reset, pgo_locked_alloc,
)
from pgo._core._typedefs cimport (
    PGO_DEBUG_FILL, PGO_ERR_DOUBLE_FREE, PGO_ERR_LIVE, PGO_FILL_ALLOC, PGO_FILL_FREE,
    PGO_OK, pgo_lock_gil_held, pgo_unlock, pgo_vg_alloc, pgo_vg_trim, pgo_within,
)


cdef pgo_linear_t* linear_create(size_t capacity, bint threadsafe) except NULL nogil:
    return <pgo_linear_t*>pgo_buffer_create(sizeof(pgo_linear_t), capacity, threadsafe,
                                          "LinearAllocator")


cdef int _linear_alloc_unlocked(void* state, size_t n, size_t align, void** out) noexcept nogil:
    cdef pgo_linear_t* s = <pgo_linear_t*>state
    cdef size_t off
    # A zero-byte block still takes a byte, so that it has an address of its own.
    cdef size_t take = n + (n == 0)
    cdef int err = pgo_buffer_place(s.b.base, s.b.size, s.b.top, n, take, align, 1, &s.b.stats,
                                    &off)
    if err != PGO_OK:
        return err
    pgo_vg_alloc(s, s.b.base + s.b.top, off + take - s.b.top)    # padding included
    s.b.top = off + take
    s.b.stats.allocs += 1
    s.b.stats.requested += n
    if PGO_DEBUG_FILL:
        memset(s.b.base + off, PGO_FILL_ALLOC, n)
    out[0] = s.b.base + off
    return PGO_OK


cdef void* _linear_alloc_slow(pgo_linear_t* s, size_t n, size_t align) noexcept nogil:
    return pgo_locked_alloc(&s.b.lock, &s.b.stats, _linear_alloc_unlocked, s, n, align,
                            "LinearAllocator")


cdef int _linear_reset_unlocked(void* state) noexcept nogil:
    cdef pgo_linear_t* s = <pgo_linear_t*>state
    _linear_rewind(s)
    s.b.stats.resets += 1
    return PGO_OK


cdef void _linear_rewind(pgo_linear_t* s) noexcept nogil:
    # The reset itself; the caller made sure nothing is alive.
    s.handler_used = False
    s.owned_allocs = 0
    if PGO_DEBUG_FILL:
        memset(s.b.base, PGO_FILL_FREE, s.b.top)
    pgo_vg_trim(s, s.b.base, 0)          # every block goes
    linear_sync_stats(s)
    s.b.top = 0
    s.b.stats.in_use = 0
    s.b.stats.requested = 0
    s.b.stats.lost = 0
    s.allocs_at_rewind = s.b.stats.allocs


cdef void _linear_maybe_rewind(pgo_linear_t* s) noexcept nogil:
    # After the handler's last array (or the last Block after it) is gone:
    # rewind, unless C code allocated here since the last rewind.
    if s.handler_used and s.b.stats.allocs - s.allocs_at_rewind == s.owned_allocs:
        _linear_rewind(s)
        s.rewinds += 1


# -- numpy's handler (see pgo_backend_t) ----------------------------------
# There is no individual free: the handler counts the arrays it placed here,
# and once the last of them, and every Python Block, is gone (whichever goes
# last) the buffer rewinds, as reset() would, unless C code allocated from it
# since the last rewind (its blocks are not counted, so they might still be
# in use).  So a loop of temporaries reuses one buffer.

cdef int _linear_take_unlocked(void* state, size_t n, size_t align, void** out) noexcept nogil:
    cdef pgo_linear_t* s = <pgo_linear_t*>state
    cdef int err = _linear_alloc_unlocked(s, n, align, out)
    if err == PGO_OK:
        s.handler_live += 1
        s.handler_used = True
        s.owned_allocs += 1
    return err


cdef bint _linear_holds(void* state, void* p) noexcept nogil:
    # base and size never change: no lock needed.
    cdef pgo_linear_t* s = <pgo_linear_t*>state
    return pgo_within(p, s.b.base, s.b.size)


cdef int _linear_give_unlocked(void* state, void* p) noexcept nogil:
    cdef pgo_linear_t* s = <pgo_linear_t*>state
    if <uintptr_t>p - <uintptr_t>s.b.base >= s.b.top or s.handler_live == 0:
        return PGO_ERR_DOUBLE_FREE      # past the top: the buffer rewound since
    s.handler_live -= 1
    s.b.stats.frees += 1
    if s.b.stats.live_blocks == 1:        # this array was the last
        _linear_maybe_rewind(s)
    return PGO_OK


cdef size_t _linear_span_unlocked(void* state, void* p) noexcept nogil:
    # No block sizes are kept: the bytes from p up to the top, which hold
    # the block (realloc copies at most what the new block holds).
    cdef pgo_linear_t* s = <pgo_linear_t*>state
    cdef size_t off = <uintptr_t>p - <uintptr_t>s.b.base
    return s.b.top - off if off < s.b.top else 0


cdef int linear_reset(pgo_linear_t* s) except -1 nogil:
    return pgo_locked_reset(&s.b.lock, &s.b.stats, _linear_reset_unlocked, s, "LinearAllocator")


cdef void linear_destroy(pgo_linear_t* s) noexcept nogil:
    pgo_buffer_destroy(s)


cdef class LinearAllocator(Allocator):
    """Bump-pointer memory for temporaries that all die together.

    Args:
        capacity: bytes in the buffer; fixed for the allocator's life.
        threadsafe: take a mutex on every operation (see StackAllocator).

    Allocation is a pointer bump with no header.  There is no individual
    free: drop the Blocks and arrays, then ``reset()`` (which raises
    AllocatorError, changing nothing, while any of them is alive).
    """

    def __cinit__(self, size_t capacity=1048576, *, bint threadsafe=False):
        self.s = linear_create(capacity, threadsafe)
        self._bind_buffer(&self.s.b, _linear_take_unlocked, _linear_holds, _linear_give_unlocked,
                          _linear_span_unlocked, 1)

    cdef int _c_alloc(self, size_t nbytes, size_t align, void** out, size_t* token) noexcept:
        cdef int err = _linear_alloc_unlocked(self.s, nbytes, align, out)
        if err == PGO_OK:
            self.s.owned_allocs += 1
        return err

    cdef void _c_dead(self, Block b) noexcept:
        self.s.b.stats.frees += 1
        if self.s.b.stats.live_blocks == 1:
            _linear_maybe_rewind(self.s)    # the last Block after the handler's arrays

    cdef void _sync(self) noexcept:
        linear_sync_stats(self.s)

    cdef int _c_reset(self) noexcept:
        return _linear_reset_unlocked(self.s)

    def _describe_nomem(self, size_t nbytes):
        return (f"{self!r}: cannot allocate {nbytes:,} bytes: {self.s.b.size - self.s.b.top:,} "
                f"of {self.s.b.size:,} bytes left before reset()")

    def _extra_stats(self):
        cdef size_t top, rewinds
        pgo_lock_gil_held(self._lock, self._st)
        top, rewinds = self.s.b.top, self.s.rewinds
        pgo_unlock(self._lock)
        return {"top": top, "rewinds": rewinds}

    def free(self, block):
        """Not supported: a linear allocator frees everything at ``reset()``.

        Raises:
            AllocatorError: always (naming the real owner of a foreign block); drop the block and call ``reset()``.
        """
        self._refuse_free(block, "drop the block and call reset() once nothing from it is alive")

    def __repr__(self):
        return (f"<LinearAllocator capacity={self.s.b.size} top={self.s.b.top} "
                f"threadsafe={bool(self.s.b.lock.enabled)}>")
