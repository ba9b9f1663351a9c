# Shared C-level types of every pgo allocator: the statistics block, the
# optional lock, alignment and overflow helpers, and the debug-fill switch.
# It exists so that each allocator family's .pxd speaks the same vocabulary
# and so that Cython code cimporting two allocators sees one definition.
# The C definitions (the fill switch, valgrind hooks, overflow checks,
# atomics) live in _c/pgo_defs.h and are re-exported from here.

from libc.stdint cimport uint64_t, uintptr_t
from libc.string cimport memset

from pgo._core._c.pgo_defs cimport (
    PGO_CANARY, PGO_DEBUG_FILL, PGO_FILL_ALLOC, PGO_FILL_FREE, PGO_MAX_ALIGN, PGO_VALGRIND,
    pgo_add_overflow, pgo_atomic_inc, pgo_atomic_load, pgo_atomic_store, pgo_likely,
    pgo_mul_overflow, pgo_unlikely, pgo_vg_alloc, pgo_vg_create, pgo_vg_destroy, pgo_vg_free,
    pgo_vg_noaccess, pgo_vg_trim,
)


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_init(pthread_mutex_t* m, const void* attr)
    int pthread_mutex_destroy(pthread_mutex_t* m)
    int pthread_mutex_lock(pthread_mutex_t* m)
    int pthread_mutex_trylock(pthread_mutex_t* m)
    int pthread_mutex_unlock(pthread_mutex_t* m)


# Error codes returned by the noexcept C paths; pgo._core._base.pgo_raise
# turns them into Python exceptions when a caller wants one.
cpdef enum:
    PGO_OK = 0
    PGO_ERR_NOMEM = 1          # exhausted, or the system refused memory
    PGO_ERR_OVERFLOW = 2       # size arithmetic overflowed
    PGO_ERR_ALIGN = 3          # alignment not a power of two <= 4096
    PGO_ERR_FOREIGN = 4        # pointer not from this allocator
    PGO_ERR_INTERIOR = 5       # pointer inside a block, not its start
    PGO_ERR_DOUBLE_FREE = 6
    PGO_ERR_ORDER = 7          # stack free out of LIFO order
    PGO_ERR_LIVE = 8           # reset while Python blocks are alive
    PGO_ERR_TOO_BIG = 9        # larger than the allocator can ever serve
    PGO_ERR_PY_OWNED = 10      # C-level free of a block a Python Block owns
    PGO_ERR_OVERRUN = 11       # test build: the canary after a block was overwritten


ctypedef struct pgo_stats_t:
    size_t in_use          # bytes consumed now, padding and headers included
    size_t peak            # largest in_use seen
    size_t capacity        # bytes reserved from the system
    uint64_t allocs
    uint64_t frees
    uint64_t resets
    uint64_t failed        # allocations that returned NULL
    uint64_t requested     # bytes asked for since the last reset
    uint64_t lost          # bytes lost to alignment/headers/rounding since the last reset
    uint64_t contention    # lock acquisitions that had to wait
    Py_ssize_t live_blocks # Python-level Block objects not yet dead


cdef inline void pgo_stats_reset(pgo_stats_t* st) noexcept nogil:
    # What every reset does to the counters: counts itself, and what was
    # requested and lost since the last one starts over.
    st.resets += 1
    st.requested = 0
    st.lost = 0


ctypedef struct pgo_lock_t:
    bint enabled
    pthread_mutex_t mutex


# Steps on an allocator's state for the locked entry points of its C API
# (pgo._core._base's pgo_locked_reset, pgo_locked_alloc, pgo_locked_free take the
# lock around them): each returns a PGO_ERR_* code.
ctypedef int (*pgo_locked_fn)(void* state) noexcept nogil
ctypedef int (*pgo_alloc_fn)(void* state, size_t n, size_t align, void** out) noexcept nogil
ctypedef int (*pgo_free_fn)(void* state, void* p) noexcept nogil


cdef inline bint pgo_bad_align(size_t align) noexcept nogil:
    return align == 0 or (align & (align - 1)) != 0 or align > PGO_MAX_ALIGN


cdef inline uintptr_t pgo_align_up(uintptr_t x, size_t align) noexcept nogil:
    return (x + align - 1) & ~(<uintptr_t>align - 1)


cdef inline char* pgo_fit(char* base, size_t size, size_t start, size_t align, size_t n,
                          size_t* off) noexcept nogil:
    # The bump of the stack, linear and arena allocators: the first address
    # aligned to `align` at or after base + start (its offset left in *off),
    # or NULL if n bytes from there do not fit in [base, base + size).
    cdef uintptr_t p = pgo_align_up(<uintptr_t>base + start, align)
    off[0] = p - <uintptr_t>base
    if off[0] > size or n > size - off[0]:
        return NULL
    return <char*>p


cdef inline bint pgo_within(const void* p, const char* base, size_t size) noexcept nogil:
    # Whether p lies in [base, base + size): can it be one of a buffer's blocks.
    return <uintptr_t>p >= <uintptr_t>base and <uintptr_t>p - <uintptr_t>base < size


cdef inline void pgo_lock_init(pgo_lock_t* l, bint enabled) noexcept nogil:
    l.enabled = enabled
    if enabled:
        pthread_mutex_init(&l.mutex, NULL)


cdef inline void pgo_lock_destroy(pgo_lock_t* l) noexcept nogil:
    if l.enabled:
        pthread_mutex_destroy(&l.mutex)


cdef inline void pgo_lock(pgo_lock_t* l, pgo_stats_t* st) noexcept nogil:
    # NOTE: a no-op unless the allocator was made with threadsafe=True.
    # Contention is counted after the lock is held, so the counter itself
    # needs no atomics.
    if l.enabled:
        if pthread_mutex_trylock(&l.mutex) != 0:
            pthread_mutex_lock(&l.mutex)
            st.contention += 1


cdef inline void pgo_lock_gil_held(pgo_lock_t* l, pgo_stats_t* st) noexcept:
    # NOTE: for callers that hold the GIL.  The mutex is only ever taken
    # here with a trylock while the GIL is held, and a contended mutex is
    # waited for with the GIL released *without* keeping it: a thread that
    # held the mutex while waiting for the GIL would deadlock with C code
    # that calls the .pxd API (which may block on the mutex) with the GIL
    # held.  Holders of the mutex from this side therefore always hold the
    # GIL, and nogil holders never need it, so nobody waits in a circle.
    if l.enabled:
        if pthread_mutex_trylock(&l.mutex) != 0:
            while True:
                with nogil:
                    pthread_mutex_lock(&l.mutex)
                    pthread_mutex_unlock(&l.mutex)
                if pthread_mutex_trylock(&l.mutex) == 0:
                    break
            st.contention += 1


cdef inline void pgo_unlock(pgo_lock_t* l) noexcept nogil:
    if l.enabled:
        pthread_mutex_unlock(&l.mutex)


cdef inline bint pgo_canary_ok(const char* p, size_t n) noexcept nogil:
    cdef size_t i
    for i in range(n):
        if <unsigned char>p[i] != PGO_FILL_ALLOC:
            return False
    return True


# How numpy's handler (pgo._core.numpy_bridge) and the containers drive an
# allocator without the GIL and without raising: each allocator family fills
# one of these in with its own steps (Allocator._backend), and
# pgo_backend_take / give / span below run them under the allocator's lock,
# written once for every family.  They keep stats.live_blocks.
#   take_fn: with the lock held, n bytes (aligned to 16), owned as an
#         array's data: reset() refuses while it is alive, as for a Python
#         Block.  take_zeroed_fn does the same and zeroes the block (a cache
#         knows when its memory already is); NULL: take_fn, then memset
#         outside the lock.  Requests over max_take are refused
#         (PGO_ERR_TOO_BIG) without the lock.
#   holds: without the lock, whether p can be the allocator's (blocks never
#         move, so the answer never changes); when it cannot, give answers
#         PGO_ERR_FOREIGN, with nothing changed, and span 0.
#   give_fn: with the lock held, gives back a block from take.
#   span_fn: with the lock held, the size of the live block that starts at
#         p (0 when there is none): what realloc copies, and how
#         pgo.owner() finds the owner.  (A linear allocator keeps no sizes:
#         there it is the bytes up to its top.)
#   lo, hi: point at the allocator's address bounds: all its memory lies in
#         [*lo, *hi), read with pgo_atomic_load (they grow as it does), so
#         the router passes a pointer by without calling give.
ctypedef bint (*pgo_holds_fn)(void* state, void* p) noexcept nogil
ctypedef size_t (*pgo_span_fn)(void* state, void* p) noexcept nogil
# Frees an allocator's C struct (its *_destroy, which takes NULL).
ctypedef void (*pgo_destroy_fn)(void* state) noexcept nogil

ctypedef struct pgo_backend_t:
    void* state
    pgo_lock_t* lock
    pgo_stats_t* stats
    pgo_alloc_fn take_fn
    pgo_alloc_fn take_zeroed_fn
    size_t max_take
    pgo_holds_fn holds
    pgo_free_fn give_fn
    pgo_span_fn span_fn
    size_t* lo
    size_t* hi


cdef inline void pgo_backend_init(pgo_backend_t* be, void* state, pgo_lock_t* lock,
                                  pgo_stats_t* stats, pgo_alloc_fn take_fn,
                                  pgo_alloc_fn take_zeroed_fn, size_t max_take,
                                  pgo_holds_fn holds, pgo_free_fn give_fn, pgo_span_fn span_fn,
                                  size_t* lo, size_t* hi) noexcept nogil:
    be.state = state
    be.lock = lock
    be.stats = stats
    be.take_fn = take_fn
    be.take_zeroed_fn = take_zeroed_fn
    be.max_take = max_take
    be.holds = holds
    be.give_fn = give_fn
    be.span_fn = span_fn
    be.lo = lo
    be.hi = hi


cdef inline int pgo_backend_take(pgo_backend_t* be, size_t n, bint zero,
                                 void** out) noexcept nogil:
    cdef int err
    cdef bint zeroed = zero and be.take_zeroed_fn != NULL
    if n > be.max_take:
        return PGO_ERR_TOO_BIG
    pgo_lock(be.lock, be.stats)
    err = (be.take_zeroed_fn if zeroed else be.take_fn)(be.state, n, 16, out)
    if err == PGO_OK:
        be.stats.live_blocks += 1
    pgo_unlock(be.lock)
    if zero and not zeroed and err == PGO_OK:
        memset(out[0], 0, n)
    return err


cdef inline int pgo_backend_give(pgo_backend_t* be, void* p) noexcept nogil:
    cdef int err
    if not be.holds(be.state, p):
        return PGO_ERR_FOREIGN
    pgo_lock(be.lock, be.stats)
    err = be.give_fn(be.state, p)
    if err == PGO_OK:
        be.stats.live_blocks -= 1
    pgo_unlock(be.lock)
    return err


cdef inline size_t pgo_backend_span(pgo_backend_t* be, void* p) noexcept nogil:
    cdef size_t n
    if not be.holds(be.state, p):
        return 0
    pgo_lock(be.lock, be.stats)
    n = be.span_fn(be.state, p)
    pgo_unlock(be.lock)
    return n


