"""LinearAllocator: bump-pointer memory released all at once.

Design: an allocation is an aligned bump of ``top`` (inline in
``linear.pxd``); there is no header and no individual free.  ``reset()``
moves ``top`` back to 0, and refuses while any Python Block or array from
the allocator is alive, so no view can outlive its memory.

Ownership: the ``pgo_linear_t`` and its buffer belong to the
LinearAllocator object, or to the C caller of ``linear_create``.
"""

from libc.stdint cimport uintptr_t
from libc.string cimport memset

from pgo._core._base cimport Allocator, Block, pgo_fail_null, pgo_raise
from pgo._core._memory cimport pgo_sys_alloc, pgo_sys_calloc, pgo_sys_free
from pgo._core._typedefs cimport (
    PGO_DEBUG_FILL, PGO_ERR_ALIGN, PGO_ERR_DOUBLE_FREE, PGO_ERR_FOREIGN,
    PGO_ERR_LIVE, PGO_ERR_NOMEM, PGO_ERR_TOO_BIG, PGO_FILL_ALLOC, PGO_FILL_FREE,
    PGO_OK, pgo_align_up, pgo_backend_t, pgo_bad_align, pgo_lock,
    pgo_lock_destroy, pgo_lock_gil_held, pgo_lock_init, pgo_unlock,
    pgo_vg_alloc, pgo_vg_create, pgo_vg_destroy, pgo_vg_noaccess, pgo_vg_trim,
)

from pgo._errors import AllocatorError


cdef pgo_linear_t* linear_create(size_t capacity, bint threadsafe) except NULL nogil:
    cdef pgo_linear_t* s = <pgo_linear_t*>pgo_sys_calloc(1, sizeof(pgo_linear_t))
    if s == NULL:
        pgo_raise(PGO_ERR_NOMEM, "LinearAllocator", sizeof(pgo_linear_t), 0)
        return NULL
    s.base = <char*>pgo_sys_alloc(capacity, 64)
    if s.base == NULL:
        pgo_sys_free(s)
        pgo_raise(PGO_ERR_NOMEM, "LinearAllocator", capacity, 64)
        return NULL
    s.size = capacity
    s.lo = <size_t>s.base
    s.hi = <size_t>s.base + capacity
    s.stats.capacity = capacity
    pgo_lock_init(&s.lock, threadsafe)
    s.fast = not threadsafe and not PGO_DEBUG_FILL
    if PGO_DEBUG_FILL:
        memset(s.base, PGO_FILL_FREE, capacity)
    pgo_vg_create(s)
    pgo_vg_noaccess(s.base, capacity)
    return s


cdef void linear_destroy(pgo_linear_t* s) noexcept nogil:
    if s != NULL:
        pgo_vg_destroy(s)
        pgo_lock_destroy(&s.lock)
        pgo_sys_free(s.base)
        pgo_sys_free(s)


cdef int _linear_alloc_unlocked(pgo_linear_t* s, size_t n, size_t align, void** out) noexcept nogil:
    cdef uintptr_t p
    cdef size_t off
    # A zero-byte block still takes a byte, so that it has an address of its own.
    cdef size_t take = n + (n == 0)
    if pgo_bad_align(align):
        s.stats.failed += 1
        return PGO_ERR_ALIGN
    p = pgo_align_up(<uintptr_t>s.base + s.top, align)
    off = p - <uintptr_t>s.base
    if off > s.size or take > s.size - off:
        s.stats.failed += 1
        return PGO_ERR_TOO_BIG if n > s.size else PGO_ERR_NOMEM
    pgo_vg_alloc(s, s.base + s.top, off + take - s.top)    # padding included
    s.top = off + take
    s.stats.allocs += 1
    s.stats.requested += n
    if PGO_DEBUG_FILL:
        memset(<void*>p, PGO_FILL_ALLOC, n)
    out[0] = <void*>p
    return PGO_OK


cdef void* _linear_alloc_slow(pgo_linear_t* s, size_t n, size_t align) noexcept nogil:
    cdef void* p = NULL
    cdef int code
    pgo_lock(&s.lock, &s.stats)
    code = _linear_alloc_unlocked(s, n, align, &p)
    pgo_unlock(&s.lock)
    if code != PGO_OK:
        return pgo_fail_null(code, "LinearAllocator", n, align)
    return p


cdef int _linear_reset_unlocked(pgo_linear_t* s) noexcept nogil:
    if s.stats.live_blocks:
        return PGO_ERR_LIVE
    _linear_rewind(s)
    s.stats.resets += 1
    return PGO_OK


cdef void _linear_rewind(pgo_linear_t* s) noexcept nogil:
    # The reset itself; the caller made sure nothing is alive.
    s.handler_used = False
    s.owned_allocs = 0
    if PGO_DEBUG_FILL:
        memset(s.base, PGO_FILL_FREE, s.top)
    pgo_vg_trim(s, s.base, 0)          # every block goes
    linear_sync_stats(s)
    s.top = 0
    s.stats.in_use = 0
    s.stats.requested = 0
    s.stats.lost = 0
    s.allocs_at_rewind = s.stats.allocs


cdef void _linear_maybe_rewind(pgo_linear_t* s) noexcept nogil:
    # After the handler's last array (or the last Block after it) is gone:
    # rewind, unless C code allocated here since the last rewind.
    if s.handler_used and s.stats.allocs - s.allocs_at_rewind == s.owned_allocs:
        _linear_rewind(s)
        s.rewinds += 1


# -- numpy's handler (see pgo_backend_t) ----------------------------------
# There is no individual free: the handler counts the arrays it placed here,
# and once the last of them, and every Python Block, is gone (whichever goes
# last) the buffer rewinds, as reset() would, unless C code allocated from it
# since the last rewind (its blocks are not counted, so they might still be
# in use).  So a loop of temporaries reuses one buffer.

cdef int _linear_take(void* state, size_t n, bint zero, void** out) noexcept nogil:
    cdef pgo_linear_t* s = <pgo_linear_t*>state
    cdef int err
    pgo_lock(&s.lock, &s.stats)
    err = _linear_alloc_unlocked(s, n, 16, out)
    if err == PGO_OK:
        s.handler_live += 1
        s.handler_used = True
        s.owned_allocs += 1
        s.stats.live_blocks += 1
    pgo_unlock(&s.lock)
    if zero and err == PGO_OK:
        memset(out[0], 0, n)
    return err


cdef int _linear_give(void* state, void* p) noexcept nogil:
    cdef pgo_linear_t* s = <pgo_linear_t*>state
    cdef uintptr_t a = <uintptr_t>p
    cdef int err = PGO_OK
    # base and size never change: the range test needs no lock.
    if a < <uintptr_t>s.base or a - <uintptr_t>s.base >= s.size:
        return PGO_ERR_FOREIGN
    pgo_lock(&s.lock, &s.stats)
    if a - <uintptr_t>s.base >= s.top or s.handler_live == 0:
        err = PGO_ERR_DOUBLE_FREE      # past the top: the buffer rewound since
    else:
        s.handler_live -= 1
        s.stats.live_blocks -= 1
        s.stats.frees += 1
        if s.stats.live_blocks == 0:
            _linear_maybe_rewind(s)
    pgo_unlock(&s.lock)
    return err


cdef size_t _linear_span(void* state, void* p) noexcept nogil:
    # No block sizes are kept: the bytes from p up to the top, which hold
    # the block (realloc copies at most what the new block holds).
    cdef pgo_linear_t* s = <pgo_linear_t*>state
    cdef uintptr_t a = <uintptr_t>p
    cdef size_t top
    if a < <uintptr_t>s.base or a - <uintptr_t>s.base >= s.size:
        return 0
    pgo_lock(&s.lock, &s.stats)
    top = s.top
    pgo_unlock(&s.lock)
    return top - (a - <uintptr_t>s.base) if a - <uintptr_t>s.base < top else 0


cdef int linear_reset(pgo_linear_t* s) except -1 nogil:
    cdef int code
    pgo_lock(&s.lock, &s.stats)
    code = _linear_reset_unlocked(s)
    pgo_unlock(&s.lock)
    if code != PGO_OK:
        return pgo_raise(code, "LinearAllocator", 0, 0)
    return 0


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
        self._st = &self.s.stats
        self._lock = &self.s.lock

    def __dealloc__(self):
        self._fork_forget()
        linear_destroy(self.s)

    cdef int _c_alloc(self, size_t nbytes, size_t align, void** out, size_t* token) noexcept:
        cdef int err = _linear_alloc_unlocked(self.s, nbytes, align, out)
        if err == PGO_OK:
            self.s.owned_allocs += 1
        return err

    cdef void _c_dead(self, Block b) noexcept:
        self.s.stats.frees += 1
        if self.s.stats.live_blocks == 1:
            _linear_maybe_rewind(self.s)    # the last Block after the handler's arrays

    cdef void _sync(self) noexcept:
        linear_sync_stats(self.s)

    cdef int _backend(self, pgo_backend_t* out) noexcept:
        out.state = self.s
        out.take = _linear_take
        out.give = _linear_give
        out.lo = &self.s.lo
        out.hi = &self.s.hi
        out.span = _linear_span
        return 0

    cdef int _c_reset(self) noexcept:
        return _linear_reset_unlocked(self.s)

    cdef object _where(self, char* p):
        return f"offset {p - self.s.base}"

    def _describe_nomem(self, size_t nbytes):
        return (f"{self!r}: cannot allocate {nbytes:,} bytes: {self.s.size - self.s.top:,} "
                f"of {self.s.size:,} bytes left before reset()")

    def _extra_stats(self):
        cdef size_t top, rewinds
        pgo_lock_gil_held(self._lock, self._st)
        top, rewinds = self.s.top, self.s.rewinds
        pgo_unlock(self._lock)
        return {"top": top, "rewinds": rewinds}

    def free(self, block):
        """Not supported: a linear allocator frees everything at ``reset()``.

        Raises:
            AllocatorError: always (naming the real owner of a foreign block); drop the block and call ``reset()``.
        """
        self._check_free(block)
        raise AllocatorError(f"{self!r} has no individual free; drop the block and "
                             f"call reset() once nothing from it is alive")

    def __repr__(self):
        return (f"<LinearAllocator capacity={self.s.size} top={self.s.top} "
                f"threadsafe={bool(self.s.lock.enabled)}>")
