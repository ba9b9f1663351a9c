# Shared C-level types of every pgo allocator: the statistics block, the
# optional lock, alignment and overflow helpers, and the debug-fill switch.
# It exists so that each allocator family's .pxd speaks the same vocabulary
# and so that Cython code cimporting two allocators sees one definition.

from libc.stdint cimport uint64_t, uintptr_t


cdef extern from *:
    """
    #ifndef PGO_DEBUG_FILL
    #define PGO_DEBUG_FILL 0
    #endif
    #define PGO_FILL_ALLOC 0xA5
    #define PGO_FILL_FREE 0x5A
    /* Test build: bytes reserved after every stack and slab block, filled
       with PGO_FILL_ALLOC and checked when the block is freed. */
    #define PGO_CANARY (PGO_DEBUG_FILL ? 8 : 0)
    #define PGO_MAX_ALIGN 4096
    #define pgo_likely(x) __builtin_expect(!!(x), 1)
    #define pgo_unlikely(x) __builtin_expect(!!(x), 0)
    /* Test build, valgrind headers present: each allocator is a valgrind
       mempool, so memcheck sees pgo's blocks as it sees malloc's (a read of
       a freed block is an error).  Everywhere else these are no-ops. */
    #if PGO_DEBUG_FILL && defined(__has_include)
    #  if __has_include(<valgrind/memcheck.h>)
    #    include <valgrind/memcheck.h>
    #    define PGO_VALGRIND 1
    #  endif
    #endif
    #ifndef PGO_VALGRIND
    #  define PGO_VALGRIND 0
    #  define pgo_vg_create(pool) ((void)0)
    #  define pgo_vg_destroy(pool) ((void)0)
    #  define pgo_vg_alloc(pool, p, n) ((void)0)
    #  define pgo_vg_free(pool, p) ((void)0)
    #  define pgo_vg_trim(pool, p, n) ((void)0)
    #  define pgo_vg_noaccess(p, n) ((void)0)
    #else
    #  define pgo_vg_create(pool) VALGRIND_CREATE_MEMPOOL((pool), 0, 0)
    #  define pgo_vg_destroy(pool) VALGRIND_DESTROY_MEMPOOL((pool))
    #  define pgo_vg_alloc(pool, p, n) VALGRIND_MEMPOOL_ALLOC((pool), (p), (n))
    #  define pgo_vg_free(pool, p) VALGRIND_MEMPOOL_FREE((pool), (p))
    #  define pgo_vg_trim(pool, p, n) VALGRIND_MEMPOOL_TRIM((pool), (p), (n))
    #  define pgo_vg_noaccess(p, n) VALGRIND_MAKE_MEM_NOACCESS((p), (n))
    #endif
    static inline int pgo_mul_overflow(size_t a, size_t b, size_t *out) {
        return __builtin_mul_overflow(a, b, out);
    }
    static inline int pgo_add_overflow(size_t a, size_t b, size_t *out) {
        return __builtin_add_overflow(a, b, out);
    }
    """
    # 1 in the test build (PGO_TEST_BUILD=1): blocks are filled with
    # PGO_FILL_ALLOC when handed out and PGO_FILL_FREE when given back.
    const int PGO_DEBUG_FILL
    const int PGO_FILL_ALLOC
    const int PGO_FILL_FREE
    const size_t PGO_CANARY
    const size_t PGO_MAX_ALIGN
    const int PGO_VALGRIND
    void pgo_vg_create(const void* pool) noexcept nogil
    void pgo_vg_destroy(const void* pool) noexcept nogil
    void pgo_vg_alloc(const void* pool, const void* p, size_t n) noexcept nogil
    void pgo_vg_free(const void* pool, const void* p) noexcept nogil
    void pgo_vg_trim(const void* pool, const void* p, size_t n) noexcept nogil
    void pgo_vg_noaccess(const void* p, size_t n) noexcept nogil
    bint pgo_likely(bint) noexcept nogil
    bint pgo_unlikely(bint) noexcept nogil
    bint pgo_mul_overflow(size_t a, size_t b, size_t* out) noexcept nogil
    bint pgo_add_overflow(size_t a, size_t b, size_t* out) noexcept nogil


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_init(pthread_mutex_t* m, const void* attr)
    int pthread_mutex_destroy(pthread_mutex_t* m)
    int pthread_mutex_lock(pthread_mutex_t* m)
    int pthread_mutex_trylock(pthread_mutex_t* m)
    int pthread_mutex_unlock(pthread_mutex_t* m)


# Error codes returned by the noexcept C paths; pgo._core._base.raise_for
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


ctypedef struct pgo_lock_t:
    bint enabled
    pthread_mutex_t mutex


# How numpy's handler (pgo._core.numpy_bridge) drives an allocator without
# the GIL and without raising: each allocator family fills one of these in
# (Allocator._backend).  Every function takes the allocator's own lock.
#   take: n bytes (aligned to 16), owned as an array's data: reset() refuses
#         while it is alive, as for a Python Block; zeroed when `zero` (the
#         allocator knows when its memory already is).  A PGO_ERR_* code.
#   give: give back a block from take; PGO_ERR_FOREIGN, with nothing
#         changed, when p is not in this allocator's memory.
#   span: the size of the live block that starts at p (0 when there is
#         none): what realloc copies, and how pgo.owner() finds the owner.
#         (A linear allocator keeps no sizes: there it is the bytes up to
#         its top.)
#   lo, hi: point at the allocator's address bounds: all its memory lies in
#         [*lo, *hi), read with pgo_atomic_load (they grow as it does), so
#         the router passes a pointer by without calling give.
ctypedef int (*pgo_take_fn)(void* state, size_t n, bint zero, void** out) noexcept nogil
ctypedef int (*pgo_give_fn)(void* state, void* p) noexcept nogil
ctypedef size_t (*pgo_span_fn)(void* state, void* p) noexcept nogil

ctypedef struct pgo_backend_t:
    void* state
    pgo_take_fn take
    pgo_give_fn give
    pgo_span_fn span
    size_t* lo
    size_t* hi


cdef extern from *:
    """
    #define pgo_atomic_load(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
    #define pgo_atomic_store(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
    #define pgo_atomic_inc(p) ((void)__atomic_fetch_add((p), 1, __ATOMIC_RELAXED))
    """
    # For the few fields read without the allocator's lock (address bounds,
    # on/off switches) and counters bumped from any thread.
    size_t pgo_atomic_load(size_t* p) noexcept nogil
    void pgo_atomic_store(size_t* p, size_t v) noexcept nogil
    void pgo_atomic_inc(uint64_t* p) noexcept nogil


cdef inline bint pgo_bad_align(size_t align) noexcept nogil:
    return align == 0 or (align & (align - 1)) != 0 or align > PGO_MAX_ALIGN


cdef inline uintptr_t pgo_align_up(uintptr_t x, size_t align) noexcept nogil:
    return (x + align - 1) & ~(<uintptr_t>align - 1)


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
