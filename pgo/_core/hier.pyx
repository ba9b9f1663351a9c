"""HierarchicalAllocator: per-thread caches, central lists, spans (tcmalloc's shape).

Design: three tiers.  (1) Each thread has, per allocator, a cache: one
intrusive free list per size class, used without any lock.  (2) Each class
has a central free list under its own mutex; a thread whose list is empty
takes a batch from it (``clamp(64 KiB / size, 2, 32)`` blocks), and a thread
whose list passes twice that gives a batch back.  (3) The central list
carves new blocks from 1 MiB spans, each span serving one class, committed
one after another from an address-space reservation made up front (64 GiB,
or ``max_bytes``; memory only as pages are touched), so a pointer's span is
a subtraction and a shift and its class a table lookup.  A free goes into
the freeing thread's cache whoever allocated the block: frees from another
thread cost what any free costs, and the bound on each list sends surplus
back to the central lists.  A thread's caches go back to the central lists
when it exits (a pthread key's destructor).

Misuse is caught without a lock on the fast path: a pointer outside the
spans, or past what its span has carved, is foreign; one not at a block
boundary of its class is interior; a freed block carries a per-allocator
random cookie xor its address in its second word, so freeing it again is a
double free (glibc's tcache uses the same mark); a block a Python Block or
array owns has a bit in its span's bitmap, which the C API refuses to free.

# NOTE: ownership.  The ``pgo_hier_t``, its reservation, span tables and
# bitmaps belong to the HierarchicalAllocator.  A thread's caches belong to
# the thread: they are freed when it exits, or, once their allocator is
# gone, the next time the thread makes a cache.  Blocks in a cache belong to
# the allocator; when it is destroyed the caches are only detached (their
# owner id set to 0 under the registry mutex), never touched again.
# NOTE: threads and the GIL.  Nothing here needs the GIL.  The fast path
# touches only the calling thread's cache.  Locks, always taken in this
# order: the allocator's Python-path mutex (``lock``: Python Blocks and
# numpy's handler, which keep ``stats.live_blocks``), the process-wide
# registry mutex (caches being made, stats, thread exit, destruction,
# fork), a class's central mutex, the span mutex.  fork() keeps that order:
# the fork registry (_base) takes every allocator's Python-path mutex, then
# this family's inner hook takes the registry, central and span mutexes of
# every live allocator; all are let go after, in parent and child, so the
# child never inherits a mutex held mid-operation.  The child retires the
# other threads' caches (they do not exist there; their blocks are lost to
# the child).
# An allocator is destroyed only when no thread can use it any more (it is
# a Python object: every user holds a reference).
"""

import os

from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset

from pgo._core._base cimport (
    Allocator, Block, pgo_fail_at, pgo_fail_null, pgo_fork_inner, pgo_raise_at,
)
from pgo._core._c.pgo_defs cimport pgo_vg_defined
from pgo._core._c.pgo_memory cimport PGO_PAGE_BYTES
from pgo._core._memory cimport (
    pgo_sys_calloc, pgo_sys_commit, pgo_sys_free, pgo_sys_reserve, pgo_sys_unreserve,
)
from pgo._core._typedefs cimport (
    PGO_CANARY, PGO_DEBUG_FILL, PGO_ERR_ALIGN, PGO_ERR_DOUBLE_FREE, PGO_ERR_FOREIGN,
    PGO_ERR_INTERIOR, PGO_ERR_NOMEM, PGO_ERR_PY_OWNED, PGO_ERR_TOO_BIG, PGO_FILL_ALLOC,
    PGO_FILL_FREE, PGO_OK, pgo_atomic_inc, pgo_atomic_load, pgo_atomic_store, pgo_backend_init,
    pgo_bad_align, pgo_destroy_fn, pgo_lock_destroy, pgo_lock_init, pgo_vg_alloc, pgo_vg_create,
    pgo_vg_destroy, pgo_vg_free, pgo_vg_noaccess, pgo_within, pthread_mutex_destroy,
    pthread_mutex_init, pthread_mutex_lock, pthread_mutex_t, pthread_mutex_trylock,
    pthread_mutex_unlock,
)

from pgo._errors import AllocatorError

cdef extern from *:
    """
    #include <pthread.h>
    /* The calling thread's cache used last (any allocator): the fast path's
       one TLS read.  Never left pointing at freed memory. */
    static __thread void* pgo_hier_last = NULL;
    /* The registry: every live allocator's caches, thread exits, fork. */
    static pthread_mutex_t pgo_hier_registry = PTHREAD_MUTEX_INITIALIZER;
    static inline void pgo_hier_store32(uint32_t* p, uint32_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    static inline uint32_t pgo_hier_load32(const uint32_t* p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    /* A cache's owner id: written under the registry mutex when the
       allocator goes, read by the cache's thread without it. */
    static inline uint64_t pgo_hier_owner(const uint64_t* p) {
        return __atomic_load_n(p, __ATOMIC_RELAXED);
    }
    static inline void pgo_hier_set_owner(uint64_t* p, uint64_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELAXED);
    }
    /* A span's Python-ownership bitmap: published once, zeroed before. */
    static inline uint64_t* pgo_hier_bits(uint64_t** p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline void pgo_hier_set_bits(uint64_t** p, uint64_t* v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    static inline uint64_t pgo_hier_load64(const uint64_t* p) {
        return __atomic_load_n(p, __ATOMIC_RELAXED);
    }
    """
    void* pgo_hier_last
    pthread_mutex_t pgo_hier_registry
    void _store32 "pgo_hier_store32"(uint32_t* p, uint32_t v) noexcept nogil
    uint32_t _load32 "pgo_hier_load32"(const uint32_t* p) noexcept nogil
    uint64_t _owner "pgo_hier_owner"(const uint64_t* p) noexcept nogil
    void _set_owner "pgo_hier_set_owner"(uint64_t* p, uint64_t v) noexcept nogil
    uint64_t* _bits "pgo_hier_bits"(uint64_t** p) noexcept nogil
    void _set_bits "pgo_hier_set_bits"(uint64_t** p, uint64_t* v) noexcept nogil
    uint64_t pgo_atomic_load_u64 "pgo_hier_load64"(const uint64_t* p) noexcept nogil

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned int pthread_key_t
    int pthread_key_create(pthread_key_t* key, void (*destructor)(void*) noexcept nogil)
    void* pthread_getspecific(pthread_key_t key)
    int pthread_setspecific(pthread_key_t key, const void* value)

cdef enum:
    SPAN = 1048576
    INV_SHIFT = 40

# Address space reserved when no max_bytes is given: 64 GiB, untouched
# until a span is committed.
cdef size_t DEFAULT_RESERVE = (<size_t>64) << 30

cdef size_t _size_of[HIER_NCLASSES]
cdef uint64_t _inv_of[HIER_NCLASSES]     # ceil(2**40 / size): offset -> slot by a multiply
cdef uint32_t _batch_of[HIER_NCLASSES]
cdef uint64_t _next_id = 1
cdef pthread_key_t _key                  # value: the thread's first cache (a list)
cdef pgo_hier_t* _allocators = NULL      # every live allocator (under the registry)

BATCH = {}
CLASS_SIZES = ()


# -- size classes -------------------------------------------------------------------------------

cdef size_t hier_class_of(size_t n) noexcept nogil:
    # 16-byte steps to 256, then four classes per power of two.
    cdef size_t k
    if n <= 256:
        return (n + 15) // 16 - 1 if n else 0
    k = 63 - __builtin_clzll(n - 1)
    return 16 + (k - 8) * 4 + ((n - 1 - (<size_t>1 << k)) >> (k - 2))


cdef size_t hier_class_size(size_t c) noexcept nogil:
    return _size_of[c]


cdef extern from *:
    int __builtin_clzll(unsigned long long) nogil


cdef size_t _class_for(size_t n, size_t align) noexcept nogil:
    # The class for n bytes aligned to `align`: blocks sit at multiples of
    # their size in a 1 MiB-aligned span, so a class whose size is a power
    # of two >= align gives that alignment.
    cdef size_t want = n if n > align else align
    cdef size_t p2 = 16
    if align <= 16:
        return hier_class_of(n)
    if want > HIER_MAX_SMALL:
        return HIER_NCLASSES
    while p2 < want:
        p2 <<= 1
    return hier_class_of(p2)


def _init_classes():
    global CLASS_SIZES
    cdef size_t c, k, size
    sizes = []
    for c in range(HIER_NCLASSES):
        if c < 16:
            size = 16 * (c + 1)
        else:
            k = 8 + (c - 16) // 4
            size = (<size_t>1 << k) + (<size_t>1 << (k - 2)) * ((c - 16) % 4 + 1)
        _size_of[c] = size
        _inv_of[c] = ((<uint64_t>1 << INV_SHIFT) + size - 1) // size
        _batch_of[c] = <uint32_t>min(32, max(2, 65536 // size))
        BATCH[size] = _batch_of[c]
        sizes.append(size)
    CLASS_SIZES = tuple(sizes)


_init_classes()


# -- links inside free blocks -----------------------------------------------------------------
# A free block's first word is the next block of its list, its second the
# double-free mark.  Under valgrind the block is a freed mempool block:
# these are the allocator's own accesses, made defined for the moment.

cdef inline void* _next(void* p) noexcept nogil:
    cdef void* q
    pgo_vg_defined(p, 8)
    q = (<void**>p)[0]
    pgo_vg_noaccess(p, 8)
    return q


cdef inline void _link(void* p, void* nxt, uint64_t mark) noexcept nogil:
    pgo_vg_defined(p, 16)
    (<void**>p)[0] = nxt
    (<uint64_t*>p)[1] = mark
    pgo_vg_noaccess(p, 16)


cdef inline void _central_lock(pgo_hier_central_t* ce) noexcept nogil:
    if pthread_mutex_trylock(&ce.mutex) != 0:
        pthread_mutex_lock(&ce.mutex)
        ce.waits += 1


# -- the thread's caches ----------------------------------------------------------------------

cdef void _give_list(pgo_hier_t* h, size_t c, void* head, size_t n) noexcept nogil:
    # A chain of n blocks (linked through their first word) onto the
    # central list of class c.
    cdef pgo_hier_central_t* ce = &h.central[c]
    cdef void* tail = head
    cdef size_t i
    if n == 0:
        return
    for i in range(n - 1):
        tail = _next(tail)
    _central_lock(ce)
    pgo_vg_defined(tail, 8)
    (<void**>tail)[0] = ce.head
    pgo_vg_noaccess(tail, 8)
    ce.head = head
    ce.count += n
    pthread_mutex_unlock(&ce.mutex)


cdef void _drain(pgo_hier_t* h, pgo_hier_cache_t* tc) noexcept nogil:
    # Every list of the cache back to the central lists.
    cdef size_t c
    for c in range(HIER_NCLASSES):
        _give_list(h, c, tc.lists[c].head, tc.lists[c].count)
        tc.lists[c].head = NULL
        tc.lists[c].count = 0


cdef void _retire(pgo_hier_cache_t* tc) noexcept nogil:
    # Registry mutex held: the cache's counts to its allocator, the cache
    # out of its allocator's list.  Its blocks must be drained first.
    cdef pgo_hier_t* h = <pgo_hier_t*>tc.owner
    h.gone_allocs += tc.allocs
    h.gone_frees += tc.frees
    h.gone_requested += tc.requested
    h.gone_bytes += tc.bytes
    if tc.prev_of_owner != NULL:
        tc.prev_of_owner.next_of_owner = tc.next_of_owner
    else:
        h.caches = tc.next_of_owner
    if tc.next_of_owner != NULL:
        tc.next_of_owner.prev_of_owner = tc.prev_of_owner
    _set_owner(&tc.owner_id, 0)
    tc.owner = NULL


cdef void _thread_exit(void* first) noexcept nogil:
    # The pthread key's destructor: the exiting thread's caches.
    global pgo_hier_last
    cdef pgo_hier_cache_t* tc = <pgo_hier_cache_t*>first
    cdef pgo_hier_cache_t* nxt
    pthread_mutex_lock(&pgo_hier_registry)
    while tc != NULL:
        nxt = tc.next_of_thread
        if _owner(&tc.owner_id) != 0:
            _drain(<pgo_hier_t*>tc.owner, tc)
            _retire(tc)
        if pgo_hier_last == <void*>tc:
            pgo_hier_last = NULL
        free(tc)
        tc = nxt
    pthread_mutex_unlock(&pgo_hier_registry)


cdef pgo_hier_cache_t* _cache_slow(pgo_hier_t* h) noexcept nogil:
    # The calling thread's cache of h, made if it has none; NULL when out
    # of memory.  Caches of allocators that are gone are freed on the way.
    global pgo_hier_last
    cdef pgo_hier_cache_t* first = <pgo_hier_cache_t*>pthread_getspecific(_key)
    cdef pgo_hier_cache_t* tc = first
    cdef pgo_hier_cache_t* prev = NULL
    cdef pgo_hier_cache_t* nxt
    cdef size_t c
    while tc != NULL:
        if _owner(&tc.owner_id) == h.id:
            pgo_hier_last = tc
            return tc
        tc = tc.next_of_thread
    pthread_mutex_lock(&pgo_hier_registry)
    tc = first
    while tc != NULL:
        nxt = tc.next_of_thread
        if _owner(&tc.owner_id) == 0:
            if prev != NULL:
                prev.next_of_thread = nxt
            else:
                first = nxt
            if pgo_hier_last == <void*>tc:
                pgo_hier_last = NULL
            free(tc)
        else:
            prev = tc
        tc = nxt
    tc = <pgo_hier_cache_t*>calloc(1, sizeof(pgo_hier_cache_t))
    if tc != NULL:
        tc.owner_id = h.id
        tc.owner = h
        for c in range(HIER_NCLASSES):
            tc.lists[c].max = 2 * _batch_of[c]
        tc.next_of_owner = h.caches
        if h.caches != NULL:
            h.caches.prev_of_owner = tc
        h.caches = tc
        tc.next_of_thread = first
        first = tc
    pthread_setspecific(_key, first)
    pthread_mutex_unlock(&pgo_hier_registry)
    pgo_hier_last = tc
    return tc


cdef inline pgo_hier_cache_t* _cache(pgo_hier_t* h) noexcept nogil:
    cdef pgo_hier_cache_t* tc = <pgo_hier_cache_t*>pgo_hier_last
    if tc != NULL and _owner(&tc.owner_id) == h.id:
        return tc
    return _cache_slow(h)


# -- spans and the central lists ----------------------------------------------------------------

cdef int _new_span(pgo_hier_t* h, size_t c) noexcept nogil:
    # The central mutex of class c held: a fresh span for it.
    cdef pgo_hier_central_t* ce = &h.central[c]
    cdef size_t i, size = _size_of[c]
    cdef int err = PGO_OK
    pthread_mutex_lock(&h.span_mutex)
    i = h.nspans
    if i >= h.max_spans or (h.max_bytes and (i + 1) * <size_t>SPAN > h.max_bytes):
        err = PGO_ERR_NOMEM
    elif pgo_sys_commit(h.base + i * <size_t>SPAN, SPAN) != 0:
        err = PGO_ERR_NOMEM
    else:
        h.span_class[i] = <uint16_t>(c + 1)
        h.span_carved[i] = 0
        if PGO_DEBUG_FILL:
            memset(h.base + i * <size_t>SPAN, PGO_FILL_FREE, SPAN)
        pgo_vg_noaccess(h.base + i * <size_t>SPAN, SPAN)
        pgo_atomic_store(&h.nspans, i + 1)
        ce.bump = h.base + i * <size_t>SPAN
        ce.bump_end = ce.bump + (SPAN // size) * size
        ce.spans += 1
    pthread_mutex_unlock(&h.span_mutex)
    return err


cdef int _refill(pgo_hier_t* h, pgo_hier_cache_t* tc, size_t c) noexcept nogil:
    # The thread's list of class c is empty: a batch from the central list,
    # carving new blocks (and spans) when it has too few.
    cdef pgo_hier_central_t* ce = &h.central[c]
    cdef pgo_hier_list_t* l = &tc.lists[c]
    cdef size_t want = _batch_of[c], got = 0, size = _size_of[c], span
    cdef void* p
    cdef int err = PGO_OK
    _central_lock(ce)
    while got < want and ce.head != NULL:
        p = ce.head
        ce.head = _next(p)
        ce.count -= 1
        _link(p, l.head, h.cookie ^ <uintptr_t>p)
        l.head = p
        got += 1
    while got < want:
        if ce.bump + size > ce.bump_end or ce.bump == NULL:
            err = _new_span(h, c)
            if err != PGO_OK:
                break
        p = ce.bump
        ce.bump += size
        span = (<char*>p - h.base) >> HIER_SPAN_SHIFT
        _store32(&h.span_carved[span], <uint32_t>(ce.bump - (h.base + (span << HIER_SPAN_SHIFT))))
        _link(p, l.head, h.cookie ^ <uintptr_t>p)
        l.head = p
        got += 1
    pthread_mutex_unlock(&ce.mutex)
    l.count += <uint32_t>got
    return PGO_OK if got else (err if err != PGO_OK else PGO_ERR_NOMEM)


# -- allocation and free ------------------------------------------------------------------------

cdef inline int _take(pgo_hier_t* h, size_t n, size_t align, void** out,
                      size_t* cls) noexcept nogil:
    # n bytes aligned to `align` from the calling thread's cache.
    cdef size_t c, need
    cdef pgo_hier_cache_t* tc
    cdef pgo_hier_list_t* l
    cdef void* p
    cdef int err
    if pgo_bad_align(align):
        return PGO_ERR_ALIGN
    if n > HIER_MAX_SMALL - PGO_CANARY or align > HIER_MAX_SMALL:
        return PGO_ERR_TOO_BIG
    need = n + PGO_CANARY
    c = _class_for(need if need else 1, align)
    if c >= HIER_NCLASSES:
        return PGO_ERR_TOO_BIG
    tc = _cache(h)
    if tc == NULL:
        return PGO_ERR_NOMEM
    l = &tc.lists[c]
    if l.head == NULL:
        err = _refill(h, tc, c)
        if err != PGO_OK:
            return err
    p = l.head
    l.head = _next(p)
    l.count -= 1
    pgo_vg_alloc(h, p, _size_of[c])
    (<uint64_t*>p)[1] = 0                  # no longer marked free
    if PGO_DEBUG_FILL:
        memset(p, PGO_FILL_ALLOC, _size_of[c])
    tc.allocs += 1
    tc.requested += n
    tc.bytes += <int64_t>_size_of[c]
    out[0] = p
    cls[0] = c
    return PGO_OK


cdef inline int _locate(pgo_hier_t* h, void* p, size_t* cls, size_t* span_out,
                        size_t* slot_out) noexcept nogil:
    # The block that starts at p: its class, span and slot, or why not.
    cdef size_t off, span, within, slot, c
    cdef uint16_t tag
    if <uintptr_t>p < <uintptr_t>h.base:
        return PGO_ERR_FOREIGN
    off = <uintptr_t>p - <uintptr_t>h.base
    span = off >> HIER_SPAN_SHIFT
    if span >= pgo_atomic_load(&h.nspans):
        return PGO_ERR_FOREIGN
    tag = h.span_class[span]
    if tag == 0:
        return PGO_ERR_FOREIGN
    c = tag - 1
    within = off & (SPAN - 1)
    if within >= _load32(&h.span_carved[span]):
        return PGO_ERR_FOREIGN              # never handed out
    slot = <size_t>((<uint64_t>within * _inv_of[c]) >> INV_SHIFT)
    if slot * _size_of[c] != within:
        return PGO_ERR_INTERIOR
    cls[0] = c
    span_out[0] = span
    slot_out[0] = slot
    return PGO_OK


cdef inline bint _py_owned(pgo_hier_t* h, size_t span, size_t slot) noexcept nogil:
    cdef uint64_t* bits = _bits(&h.span_py[span])
    return bits != NULL and (bits[slot >> 6] >> (slot & 63)) & 1


cdef inline int _give(pgo_hier_t* h, void* p, size_t c) noexcept nogil:
    # A checked block back into the calling thread's cache (or, when the
    # thread cannot get one, straight to the central list).
    cdef pgo_hier_cache_t* tc
    cdef pgo_hier_list_t* l
    cdef void* chain
    cdef void* tail
    cdef uint32_t k, n
    if (<uint64_t*>p)[1] == h.cookie ^ <uintptr_t>p:
        return PGO_ERR_DOUBLE_FREE
    if PGO_DEBUG_FILL:
        memset(p, PGO_FILL_FREE, _size_of[c])
    pgo_vg_free(h, p)
    tc = _cache(h)
    if tc == NULL:
        # No cache to be had (out of memory): straight to the central
        # list, counted as an exited thread's frees are.
        _link(p, NULL, h.cookie ^ <uintptr_t>p)
        _give_list(h, c, p, 1)
        pthread_mutex_lock(&pgo_hier_registry)
        h.gone_frees += 1
        h.gone_bytes -= <int64_t>_size_of[c]
        pthread_mutex_unlock(&pgo_hier_registry)
        return PGO_OK
    l = &tc.lists[c]
    _link(p, l.head, h.cookie ^ <uintptr_t>p)
    l.head = p
    l.count += 1
    tc.frees += 1
    tc.bytes -= <int64_t>_size_of[c]
    if l.count > l.max:
        # A batch back to the central list: the list stays bounded however
        # many blocks other threads allocated and this one frees.
        n = _batch_of[c]
        chain = l.head
        tail = chain
        for k in range(n - 1):
            tail = _next(tail)
        l.head = _next(tail)
        l.count -= n
        _give_list(h, c, chain, n)
    return PGO_OK


cdef inline int _free_c(pgo_hier_t* h, void* p) noexcept nogil:
    cdef size_t c, span, slot
    cdef int err
    if p == NULL:
        return PGO_OK
    err = _locate(h, p, &c, &span, &slot)
    if err != PGO_OK:
        return err
    if _py_owned(h, span, slot):
        return PGO_ERR_PY_OWNED
    return _give(h, p, c)


cdef void* hier_alloc(pgo_hier_t* h, size_t n) except NULL nogil:
    cdef void* p
    cdef size_t c
    cdef int err = _take(h, n, 16, &p, &c)
    if err != PGO_OK:
        pgo_atomic_inc(&h.c_failed)
        return pgo_fail_null(err, "HierarchicalAllocator", n, 16)
    return p


cdef int hier_free(pgo_hier_t* h, void* p) except -1 nogil:
    cdef int err = _free_c(h, p)
    if err != PGO_OK:
        return pgo_fail_at(err, "HierarchicalAllocator", p)
    return 0


cdef void hier_flush_thread(pgo_hier_t* h) noexcept nogil:
    cdef pgo_hier_cache_t* tc = _cache(h)
    if tc != NULL:
        _drain(h, tc)


# -- Python-owned blocks (Blocks, arrays): the Python-path mutex is held ---------------------

cdef int _take_py(pgo_hier_t* h, size_t n, size_t align, void** out) noexcept nogil:
    # The Python-path mutex held: also counts what stats() reports as
    # requested and lost (the C API's allocations count only in allocations).
    cdef size_t c, span, slot, words
    cdef uint64_t* bits
    cdef int err = _take(h, n, align, out, &c)
    if err != PGO_OK:
        h.py_failed += 1
        return err
    _locate(h, out[0], &c, &span, &slot)
    bits = h.span_py[span]              # only this path (under its mutex) writes it
    if bits == NULL:
        words = ((SPAN // _size_of[c]) + 63) // 64
        bits = <uint64_t*>pgo_sys_calloc(words, sizeof(uint64_t))
        if bits == NULL:
            _give(h, out[0], c)
            h.py_failed += 1
            return PGO_ERR_NOMEM
        _set_bits(&h.span_py[span], bits)
    bits[slot >> 6] |= (<uint64_t>1) << (slot & 63)
    h.stats.requested += n
    h.stats.lost += _size_of[c] - n
    return PGO_OK


cdef int _give_py(pgo_hier_t* h, void* p) noexcept nogil:
    cdef size_t c, span, slot
    cdef int err = _locate(h, p, &c, &span, &slot)
    if err != PGO_OK:
        return err
    if not _py_owned(h, span, slot):
        return PGO_ERR_DOUBLE_FREE
    h.span_py[span][slot >> 6] &= ~((<uint64_t>1) << (slot & 63))
    return _give(h, p, c)


cdef int _be_take(void* state, size_t n, size_t align, void** out) noexcept nogil:
    return _take_py(<pgo_hier_t*>state, n, align, out)


cdef bint _be_holds(void* state, void* p) noexcept nogil:
    cdef pgo_hier_t* h = <pgo_hier_t*>state
    return pgo_within(p, h.base, h.max_spans * <size_t>SPAN)


cdef int _be_give(void* state, void* p) noexcept nogil:
    return _give_py(<pgo_hier_t*>state, p)


cdef size_t _be_span(void* state, void* p) noexcept nogil:
    cdef pgo_hier_t* h = <pgo_hier_t*>state
    cdef size_t c, span, slot
    if _locate(h, p, &c, &span, &slot) != PGO_OK or not _py_owned(h, span, slot):
        return 0
    return _size_of[c] - PGO_CANARY


# -- making and destroying ----------------------------------------------------------------------

cdef void _fork_prepare() noexcept nogil:
    cdef pgo_hier_t* h
    cdef size_t c
    pthread_mutex_lock(&pgo_hier_registry)
    h = _allocators
    while h != NULL:
        for c in range(HIER_NCLASSES):
            pthread_mutex_lock(&h.central[c].mutex)
        pthread_mutex_lock(&h.span_mutex)
        h = <pgo_hier_t*>h.next_allocator


cdef void _fork_release() noexcept nogil:
    cdef pgo_hier_t* h = _allocators
    cdef size_t c
    while h != NULL:
        pthread_mutex_unlock(&h.span_mutex)
        for c in range(HIER_NCLASSES):
            pthread_mutex_unlock(&h.central[c].mutex)
        h = <pgo_hier_t*>h.next_allocator
    pthread_mutex_unlock(&pgo_hier_registry)


cdef void _fork_child() noexcept nogil:
    # Only the forking thread lives on in the child: the other threads'
    # caches are retired (their counts kept; their blocks, possibly
    # mid-update when fork() came, are left where they are: lost to the
    # child, never reused).  Every mutex is still held here.
    cdef pgo_hier_cache_t* mine = <pgo_hier_cache_t*>pthread_getspecific(_key)
    cdef pgo_hier_cache_t* tc
    cdef pgo_hier_cache_t* nxt
    cdef pgo_hier_cache_t* m
    cdef pgo_hier_t* h = _allocators
    cdef bint own
    while h != NULL:
        tc = h.caches
        while tc != NULL:
            nxt = tc.next_of_owner
            own = False
            m = mine
            while m != NULL and not own:
                own = m == tc
                m = m.next_of_thread
            if not own:
                _retire(tc)
                free(tc)
            tc = nxt
        h = <pgo_hier_t*>h.next_allocator
    _fork_release()


if pthread_key_create(&_key, _thread_exit) != 0:
    raise MemoryError("pgo: cannot make the HierarchicalAllocator's thread key")
# Inside the fork registry's handlers: after every allocator's Python-path
# mutex (held by callers that then take the registry and central mutexes).
if pgo_fork_inner(_fork_prepare, _fork_release, _fork_child) != 0:
    raise MemoryError("pgo: cannot install the HierarchicalAllocator's fork handlers")


cdef void _hier_destroy(pgo_hier_t* h) noexcept nogil:
    cdef pgo_hier_cache_t* tc
    cdef pgo_hier_t** link
    cdef size_t i, c
    if h == NULL:
        return
    pthread_mutex_lock(&pgo_hier_registry)
    # Detach every thread's cache: the threads free them (at exit, or when
    # they next make a cache); nothing touches them once owner_id is 0.
    tc = h.caches
    while tc != NULL:
        _set_owner(&tc.owner_id, 0)
        tc.owner = NULL
        tc = tc.next_of_owner
    h.caches = NULL
    link = &_allocators
    while link[0] != NULL and link[0] != h:
        link = <pgo_hier_t**>&link[0].next_allocator
    if link[0] == h:
        link[0] = <pgo_hier_t*>h.next_allocator
    pthread_mutex_unlock(&pgo_hier_registry)
    pgo_vg_destroy(h)
    for c in range(HIER_NCLASSES):
        pthread_mutex_destroy(&h.central[c].mutex)
    pthread_mutex_destroy(&h.span_mutex)
    pgo_lock_destroy(&h.lock)
    if h.span_py != NULL:
        for i in range(h.nspans):
            pgo_sys_free(h.span_py[i])
    pgo_sys_free(h.span_py)
    pgo_sys_free(h.span_class)
    pgo_sys_free(h.span_carved)
    pgo_sys_unreserve(h.raw, h.raw_len)
    pgo_sys_free(h)


cdef pgo_hier_t* _hier_create(size_t max_bytes) except NULL:
    global _next_id, _allocators
    cdef pgo_hier_t* h = <pgo_hier_t*>pgo_sys_calloc(1, sizeof(pgo_hier_t))
    cdef size_t reserve, got = 0, c
    if max_bytes:
        max_bytes = (max_bytes + SPAN - 1) & ~(<size_t>SPAN - 1)     # whole spans
    reserve = max_bytes if max_bytes else DEFAULT_RESERVE
    if h == NULL:
        raise MemoryError(f"HierarchicalAllocator: cannot allocate its {sizeof(pgo_hier_t):,} "
                          f"bytes of state")
    try:
        reserve = (reserve + SPAN - 1) & ~(<size_t>SPAN - 1)
        h.base = pgo_sys_reserve(reserve, SPAN, SPAN, &got, &h.raw, &h.raw_len)
        if h.base == NULL:
            raise MemoryError(f"HierarchicalAllocator: cannot reserve {SPAN:,} bytes of "
                              f"address space (pass max_bytes to reserve less)")
        h.max_spans = got // SPAN
        h.max_bytes = max_bytes
        h.span_class = <uint16_t*>pgo_sys_calloc(h.max_spans, sizeof(uint16_t))
        h.span_carved = <uint32_t*>pgo_sys_calloc(h.max_spans, sizeof(uint32_t))
        h.span_py = <uint64_t**>pgo_sys_calloc(h.max_spans, sizeof(uint64_t*))
        if h.span_class == NULL or h.span_carved == NULL or h.span_py == NULL:
            raise MemoryError(f"HierarchicalAllocator: cannot allocate its span tables "
                              f"({h.max_spans * 14:,} bytes)")
    except BaseException:
        pgo_sys_free(h.span_class)
        pgo_sys_free(h.span_carved)
        pgo_sys_free(h.span_py)
        pgo_sys_unreserve(h.raw, h.raw_len)
        pgo_sys_free(h)
        raise
    for c in range(HIER_NCLASSES):
        pthread_mutex_init(&h.central[c].mutex, NULL)
    pthread_mutex_init(&h.span_mutex, NULL)
    h.cookie = int.from_bytes(os.urandom(8), "little") | 1
    h.lo = <size_t>h.base
    h.hi = <size_t>h.base + h.max_spans * <size_t>SPAN
    pthread_mutex_lock(&pgo_hier_registry)
    h.id = _next_id
    _next_id += 1
    h.next_allocator = _allocators
    _allocators = h
    pthread_mutex_unlock(&pgo_hier_registry)
    pgo_vg_create(h)
    return h


cdef class HierarchicalAllocator(Allocator):
    """Blocks of 1 B to 256 KiB for many threads at once: each thread
    allocates from and frees into its own cache, without a lock.

    Args:
        max_bytes: most bytes of spans (1 MiB each; rounded up to whole
            spans), 0 for no limit but the 64 GiB of address space reserved
            up front (address space only: memory is committed span by span,
            and pages as they are touched).  Each size class in use takes
            at least one span.

    tcmalloc's shape: per-thread caches, a central free list per size class
    (56 classes) refilled and drained a batch at a time under its own
    mutex, and spans from one reservation.  Any thread may free any block.
    Memory is never given back to the system: freed blocks stay in the
    caches and central lists for reuse.  ``reset()`` only starts the
    statistics over; ``stats()["peak"]`` is the largest ``in_use`` seen
    when statistics were read (threads count without a shared counter).
    ``flush_thread()`` gives the calling thread's cached blocks back to the
    central lists (a thread's caches go back by themselves when it exits).
    """

    def __cinit__(self, size_t max_bytes=0, *, bint threadsafe=True):
        # threadsafe is accepted for symmetry: the C API never needs a
        # lock, and the Python path always takes one.
        self.s = _hier_create(max_bytes)
        pgo_lock_init(&self.s.lock, True)
        pgo_backend_init(&self._be, self.s, &self.s.lock, &self.s.stats, _be_take, NULL,
                         HIER_MAX_SMALL - PGO_CANARY, _be_holds, _be_give, _be_span,
                         &self.s.lo, &self.s.hi)
        self._bind(<pgo_destroy_fn>_hier_destroy, 16, PGO_PAGE_BYTES)

    def flush_thread(self):
        """Give the calling thread's cached blocks back to the central lists."""
        with nogil:
            hier_flush_thread(self.s)

    @staticmethod
    def class_size(size_t nbytes, size_t align=16):
        """The block size a request of `nbytes` aligned to `align` takes
        (ValueError when no class holds it)."""
        cdef size_t c = HIER_NCLASSES
        if pgo_bad_align(align):
            raise ValueError(f"alignment must be a power of two from 1 to 4096, got {align}")
        if nbytes <= HIER_MAX_SMALL - PGO_CANARY:
            c = _class_for(nbytes + PGO_CANARY if nbytes + PGO_CANARY else 1, align)
        if c >= HIER_NCLASSES:
            raise ValueError(f"HierarchicalAllocator serves at most "
                             f"{HIER_MAX_SMALL - PGO_CANARY:,} bytes")
        return _size_of[c]

    # -- the Allocator hooks -------------------------------------------------------------
    cdef int _c_alloc(self, size_t nbytes, size_t align, void** out, size_t* token) noexcept:
        return _take_py(self.s, nbytes, align, out)

    cdef int _c_free(self, Block b) noexcept:
        return _give_py(self.s, b.ptr)

    cdef void _c_dead(self, Block b) noexcept:
        _give_py(self.s, b.ptr)

    cdef int _c_reset(self) noexcept:
        # Nothing to give back: every block is in a cache or a central list
        # already.  The statistics since the last reset start over.
        self.s.stats.resets += 1
        self.s.stats.requested = 0
        self.s.stats.lost = 0
        return PGO_OK

    cdef void _sync(self) noexcept:
        # Every thread's counts (C API and Python alike), read under the
        # registry mutex; a thread's own counters are plain, so one read
        # while it runs may be an operation stale.
        cdef pgo_hier_cache_t* tc
        cdef int64_t in_use
        cdef uint64_t allocs, frees
        pthread_mutex_lock(&pgo_hier_registry)
        in_use = self.s.gone_bytes
        allocs = self.s.gone_allocs
        frees = self.s.gone_frees
        tc = self.s.caches
        while tc != NULL:
            in_use += tc.bytes
            allocs += tc.allocs
            frees += tc.frees
            tc = tc.next_of_owner
        pthread_mutex_unlock(&pgo_hier_registry)
        self.s.stats.allocs = allocs
        self.s.stats.frees = frees
        self.s.stats.failed = self.s.py_failed + pgo_atomic_load_u64(&self.s.c_failed)
        self.s.stats.in_use = <size_t>in_use if in_use > 0 else 0
        if self.s.stats.in_use > self.s.stats.peak:
            self.s.stats.peak = self.s.stats.in_use
        self.s.stats.capacity = pgo_atomic_load(&self.s.nspans) * <size_t>SPAN

    cdef size_t _canary_len(self, Block b) noexcept:
        cdef size_t c, span, slot
        if not PGO_CANARY or _locate(self.s, b.ptr, &c, &span, &slot) != PGO_OK:
            return 0
        return _size_of[c] - b.nbytes

    cdef object _where(self, char* p):
        cdef size_t c, span, slot
        if _locate(self.s, p, &c, &span, &slot) != PGO_OK:
            return f"address {<uintptr_t>p:#x}"
        return f"span {span} slot {slot}, {_size_of[c]}-byte class"

    def _describe_nomem(self, size_t nbytes):
        limit = (f"max_bytes={self.s.max_bytes:,} reached" if self.s.max_bytes
                 else "the reservation is full or the system refused more")
        return (f"{self!r}: cannot allocate {nbytes:,} bytes: {self.s.nspans} span(s) of "
                f"1 MiB in use, {limit}")

    def _raise_alloc(self, int code, size_t nbytes, size_t align):
        if code == PGO_ERR_TOO_BIG:
            raise ValueError(f"{self!r} serves blocks of at most {HIER_MAX_SMALL:,} bytes; "
                             f"{nbytes:,} requested (alignment {align}): route larger arrays "
                             f"to a cache allocator")
        Allocator._raise_alloc(self, code, nbytes, align)

    def _extra_stats(self):
        cdef pgo_hier_cache_t* tc
        cdef size_t c, threads = 0, cached = 0, central = 0
        pthread_mutex_lock(&pgo_hier_registry)
        tc = self.s.caches
        while tc != NULL:
            threads += 1
            for c in range(HIER_NCLASSES):
                cached += tc.lists[c].count * _size_of[c]
            tc = tc.next_of_owner
        pthread_mutex_unlock(&pgo_hier_registry)
        cdef uint64_t waits = 0
        for c in range(HIER_NCLASSES):
            central += self.s.central[c].count * _size_of[c]
            waits += self.s.central[c].waits
        return {"spans": self.s.nspans, "thread_caches": threads,
                "thread_cached_bytes": cached, "central_bytes": central,
                "central_waits": waits, "max_bytes": self.s.max_bytes}

    def _free_address(self, size_t address):
        """Test-only: run the C-level free on a raw address."""
        cdef int code = _free_c(self.s, <void*>address)
        if code != PGO_OK:
            pgo_raise_at(code, "HierarchicalAllocator", <void*>address)

    def __repr__(self):
        return f"<HierarchicalAllocator spans={self.s.nspans} max_bytes={self.s.max_bytes:,}>"
