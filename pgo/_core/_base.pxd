# The Python face shared by every allocator: Block (a buffer object over one
# allocation) and Allocator (alloc/empty/zeros/free/reset/stats on top of the
# C hooks each allocator family fills in), plus pgo_raise, which turns the
# error codes of the noexcept C paths into Python exceptions.

from pgo._core._c.pgo_fork cimport pgo_fork_fn
from pgo._core._typedefs cimport (
    PGO_ERR_ALIGN, PGO_ERR_LIVE, PGO_ERR_NOMEM, PGO_ERR_TOO_BIG, PGO_OK, pgo_alloc_fn, pgo_backend_t,
    pgo_bad_align, pgo_destroy_fn, pgo_fit, pgo_free_fn, pgo_holds_fn, pgo_lock, pgo_lock_t,
    pgo_locked_fn, pgo_span_fn, pgo_stats_t, pgo_unlock,
)

# Raises the exception for `code` (MemoryError naming nbytes, ValueError for
# a bad alignment, pgo.AllocatorError for misuse) and returns -1.  Callable
# without the GIL: it takes it.
cdef int pgo_raise(int code, const char* who, size_t nbytes, size_t align) except -1 with gil

# The same exception, set without Cython's error machinery, returning -1 /
# NULL: the inline hot paths in the .pxd files call these on failure so that
# they carry no traceback code and stay small enough to be inlined.
cdef int pgo_fail(int code, const char* who, size_t nbytes, size_t align) noexcept nogil
cdef void* pgo_fail_null(int code, const char* who, size_t nbytes, size_t align) noexcept nogil
# An allocator family's own fork handlers, run inside the fork registry's
# (see the NOTE in _base.pyx): prepare after every registered allocator
# mutex is taken, so a thread holding one of those while it waits for the
# family's own mutexes never deadlocks a fork; parent / child before they
# are let go.  0, or -1 when the table (8 families) is full.
cdef int pgo_fork_inner(pgo_fork_fn prepare, pgo_fork_fn parent, pgo_fork_fn child) noexcept

# For misuse of a pointer (free, release): the message names the address.
cdef int pgo_raise_at(int code, const char* who, const void* p) except -1 with gil
cdef int pgo_fail_at(int code, const char* who, const void* p) noexcept nogil

# A one-buffer allocator's (stack, linear) first field: the buffer and what
# follows from it, so that one pair of functions makes and frees both.  The
# inline paths read base, size, top and fast together, so they come first.
ctypedef struct pgo_buffer_t:
    char* base
    size_t size               # bytes in the buffer
    size_t top                # offset of the first free byte
    bint fast                 # no lock, normal build: the inline paths apply
    size_t lo, hi             # the buffer's address range
    pgo_stats_t stats
    pgo_lock_t lock

# A zeroed struct of struct_size bytes that starts with a pgo_buffer_t, over
# a new buffer of `capacity` bytes (64-byte aligned; filled in the test
# build; a valgrind pool keyed by the struct).  NULL with MemoryError naming
# `who` when the system refuses.  The caller owns it until
# pgo_buffer_destroy, which takes NULL.
cdef void* pgo_buffer_create(size_t struct_size, size_t capacity, bint threadsafe,
                             const char* who) except NULL nogil
cdef void pgo_buffer_destroy(void* state) noexcept nogil


# Where a one-buffer allocator's complete (slow) path puts a block: n bytes,
# `take` with what the allocator keeps after them, at the first address
# aligned to `align` (raised to min_align) at or after base + start.  PGO_OK
# with the block's offset in *off; else the error, counted in st.failed: a
# bad alignment, more than the buffer can ever hold, or more than it has left.
cdef inline int pgo_buffer_place(char* base, size_t size, size_t start, size_t n, size_t take,
                                 size_t align, size_t min_align, pgo_stats_t* st,
                                 size_t* off) noexcept nogil:
    cdef int err = PGO_OK
    if pgo_bad_align(align):
        err = PGO_ERR_ALIGN
    elif pgo_fit(base, size, start, align if align > min_align else min_align, take, off) == NULL:
        err = PGO_ERR_TOO_BIG if n > size else PGO_ERR_NOMEM
    if err != PGO_OK:
        st.failed += 1
    return err


# The C API's locked entry points: fn run with the allocator's lock held, a
# failure raised as above, naming `who`.

# reset: 0, or -1 with the exception set.  Refused (PGO_ERR_LIVE) while
# any block is alive, for every family: fn runs only when none is.
cdef inline int pgo_locked_reset(pgo_lock_t* lock, pgo_stats_t* st, pgo_locked_fn fn,
                                 void* state, const char* who) except -1 nogil:
    cdef int code
    pgo_lock(lock, st)
    code = PGO_ERR_LIVE if st.live_blocks else fn(state)
    pgo_unlock(lock)
    if code != PGO_OK:
        return pgo_raise(code, who, 0, 0)
    return 0


# An allocation: the block, or NULL with the exception set.
cdef inline void* pgo_locked_alloc(pgo_lock_t* lock, pgo_stats_t* st, pgo_alloc_fn fn,
                                   void* state, size_t n, size_t align,
                                   const char* who) noexcept nogil:
    cdef void* p = NULL
    cdef int code
    pgo_lock(lock, st)
    code = fn(state, n, align, &p)
    pgo_unlock(lock)
    if code != PGO_OK:
        return pgo_fail_null(code, who, n, align)
    return p


# A free of p: 0, or -1 with the exception set (naming the address).
cdef inline int pgo_locked_free(pgo_lock_t* lock, pgo_stats_t* st, pgo_free_fn fn, void* state,
                                void* p, const char* who) noexcept nogil:
    cdef int code
    pgo_lock(lock, st)
    code = fn(state, p)
    pgo_unlock(lock)
    if code != PGO_OK:
        return pgo_fail_at(code, who, p)
    return 0


cdef class Block:
    cdef readonly Allocator allocator
    cdef char* ptr
    cdef size_t nbytes
    cdef size_t token          # allocator-specific: arena chunk index, ...
    cdef Py_ssize_t exports    # open buffer views (memoryview, ndarray from the buffer)
    cdef bint freed
    cdef bint backs_array      # made by empty()/zeros(): the array frees it when dropped


cdef class Allocator:
    # NOTE: _st, _lock and _be point into the subclass's C struct, which the
    # subclass owns (allocated in its __cinit__, released by _destroy).
    # Every Block holds a reference to its allocator, so the struct outlives
    # them.
    cdef pgo_stats_t* _st
    cdef pgo_lock_t* _lock
    cdef pgo_backend_t _be     # numpy's handler's entry points, filled in by __cinit__
    cdef char* _buffer         # a one-buffer allocator's buffer (else NULL): for _where
    cdef size_t _min_align
    cdef size_t _max_align     # most an allocation can be aligned to
    cdef bint _fork_registered # its mutex is in the fork registry (see _base.pyx)
    cdef pgo_destroy_fn _destroy  # frees _be.state; NULL until __cinit__ made it
    cdef object __weakref__

    # For each subclass's __cinit__, after it filled in _be: point _st and
    # _lock at the backend's (its C struct's), set the alignments it serves,
    # and hand over the struct: Allocator.__dealloc__ frees it with
    # `destroy` (the family's *_destroy, whose pointer argument has the
    # same calling convention as void*), once, after the mutex left the
    # fork registry.
    cdef void _bind(self, pgo_destroy_fn destroy, size_t min_align, size_t max_align) noexcept
    # _bind for a one-buffer allocator (stack, linear), whose struct starts
    # with `b`: no zeroed take, no size limit, pgo_buffer_destroy.
    cdef void _bind_buffer(self, pgo_buffer_t* b, pgo_alloc_fn take, pgo_holds_fn holds,
                           pgo_free_fn give, pgo_span_fn span, size_t min_align) noexcept

    # Hooks, called with the lock held (and the GIL): return a PGO_ERR_* code.
    cdef int _c_alloc(self, size_t nbytes, size_t align, void** out, size_t* token) noexcept
    cdef int _c_free(self, Block b) noexcept
    cdef void _c_dead(self, Block b) noexcept
    cdef int _c_reset(self) noexcept
    cdef object _where(self, char* p)
    # numpy's handler: fills *out with _be, or returns -1 if this allocator
    # has none (the base class).  Needs no lock.
    cdef int _backend(self, pgo_backend_t* out) noexcept
    cdef void _fork_forget(self) noexcept
    cdef void _sync(self) noexcept             # write derived stats into *_st
    cdef size_t _canary_len(self, Block b) noexcept  # test build: bytes checked after a block
    cdef Block _check_free(self, object block)
    cdef int _refuse_free(self, object block, str instead) except -1
    cdef int _check_releasable(self, Block b) except -1
    cdef bint _canary_broken(self, Block b) noexcept

    cdef pgo_stats_t _synced_stats(self) noexcept
    cdef Block _block(self, size_t nbytes, size_t align)
    cdef void _block_died(self, Block b) noexcept
    cdef object _array(self, object shape, object dtype, object order, size_t align, bint zero)
    cdef size_t _array_align(self, object align) except? 0
