"""CacheAllocator: large blocks kept by size class for reuse.

Design: a request is rounded up to its size class (4 KiB, the small-block
limit of _c/pgo_memory.h: smaller requests are the numpy handler's small
blocks; then eight classes per power of two, so at most 12.5% is rounded
away) and served from
the most recently freed block of that class (of blocks freed together, the
one made first: see _burst_pick), or else from a cached block of one of
the next sixteen classes (a block at most 4x the request's class: pages
already resident rather than fresh ones), or else from a fresh block
mapped from the system (``pgo_sys_map``: zero pages, so ``np.zeros`` needs
no memset; huge-page aligned and advised from 4 MiB).  A block of 64 KiB
or more is mapped a page longer, and numpy's arrays start at its colour,
one of eight offsets in that page given out in turn as blocks are made,
so that an array and the temporaries made from it do not fall on the same
cache sets (see _fresh_block).
A freed block goes to the front of its class list and to the new end of a
cache-wide recency list; while the cached bytes exceed ``max_cached_bytes``
the oldest cached block goes back to the system.  With a headroom, the
cached bytes are also bounded by the cache's own peak: live + cached stay
within (100 + headroom)% of the most bytes ever live in it.  With a reuse
window, a cached block that none of the next ``reuse_window`` allocations
took goes back (the recency list is in free order, so the check is at its
old end).  A free moves
bytes from live to cached and never crosses that line; a fresh block that
would (the program moved on to other sizes) first pushes out the oldest
cached ones.  So the peak footprint of what the cache serves grows by at
most the headroom, at any input size, and a steady loop keeps every block
it reuses.  If the system refuses a
fresh block, everything cached is given back and the request tried again,
so the cache never makes an allocation fail that would succeed without it.

# NOTE: ownership.  The ``pgo_cache_t``, its tables and every block (live
# or cached) belong to the CacheAllocator object (or the C caller of
# ``cache_create``); block records are malloc'd one per block.
# NOTE: threads and the GIL.  A cache is always thread-safe: every
# operation takes the mutex, and nothing here needs the GIL.  Only the
# address bounds ``lo``/``hi`` are read without the lock (atomics).
"""

cimport cython
from libc.stdint cimport SIZE_MAX, uint64_t, uintptr_t
from libc.string cimport memset
from posix.mman cimport madvise

from pgo._core._base cimport Allocator, Block, pgo_locked_alloc, pgo_locked_free, pgo_raise
from pgo._core._c.pgo_memory cimport (
    MADV_NOHUGEPAGE, MADV_POPULATE_WRITE, PGO_HUGEPAGE_MIN_BYTES, PGO_PAGE_BYTES,
    PGO_SMALL_BLOCK_BYTES, PGO_SMALL_BLOCK_SHIFT,
)
from pgo._core._memory cimport pgo_sys_calloc, pgo_sys_free, pgo_sys_map, pgo_sys_unmap
from pgo._core._typedefs cimport (
    PGO_DEBUG_FILL, PGO_ERR_DOUBLE_FREE, PGO_ERR_FOREIGN, PGO_ERR_NOMEM, PGO_ERR_PY_OWNED,
    PGO_ERR_TOO_BIG, PGO_FILL_ALLOC, PGO_FILL_FREE, PGO_OK, pgo_atomic_load, pgo_atomic_store,
    pgo_backend_init, pgo_destroy_fn, pgo_lock,
    pgo_lock_destroy, pgo_lock_gil_held, pgo_lock_init, pgo_unlock, pgo_vg_alloc, pgo_vg_create,
    pgo_vg_destroy, pgo_vg_free,
)


cdef enum:
    NCLASSES = 300              # classes up to 2**48 bytes
    FIRST_TABLE = 64
    DEF_MAX_CACHED = 536870912  # 512 MiB
    # Colouring: a block of COLOUR_MIN_BYTES or more is mapped a page longer
    # and numpy's arrays start COLOUR_STEP * k bytes into it, k cycling
    # over NCOLOURS as blocks are made (7 * 576 = 4032: within the page).
    COLOUR_MIN_BYTES = 65536
    COLOUR_STEP = 576           # nine cache lines
    NCOLOURS = 8
    BURST_SCAN = 8              # blocks of a burst of frees looked at for the next allocation
    # A request its class cannot serve takes a cached block of the nearest
    # of the next BORROW_CLASSES classes: two powers of two, so a block at
    # most 4x the request's class (the rest of it serves nothing while the
    # request lives).
    BORROW_CLASSES = 16

cdef size_t MAX_REQUEST = (<size_t>1) << 48

# For pgo.analysis.cachesim's model of the cache and the tests (pinned equal).
BURST_SCAN_BLOCKS = BURST_SCAN
BORROW_CLASSES_UP = BORROW_CLASSES
COLOUR_STEP_BYTES = COLOUR_STEP
COLOURS = NCOLOURS

cdef extern from *:
    int __builtin_clzll(unsigned long long) nogil


cdef size_t cache_class_size(size_t n) noexcept nogil:
    cdef size_t m, shift, q
    cdef int e
    if n <= PGO_SMALL_BLOCK_BYTES:
        return PGO_SMALL_BLOCK_BYTES
    if n > MAX_REQUEST:
        return 0
    m = n - 1
    e = 63 - __builtin_clzll(m)
    shift = e - 3
    q = m >> shift              # 8..15
    return (q + 1) << shift


cdef inline unsigned int _class_index(size_t n) noexcept nogil:
    # n > 0 and <= MAX_REQUEST.
    cdef size_t m
    cdef int e
    if n <= PGO_SMALL_BLOCK_BYTES:
        return 0
    m = n - 1
    e = 63 - __builtin_clzll(m)
    return <unsigned int>(1 + (e - PGO_SMALL_BLOCK_SHIFT) * 8 + ((m >> (e - 3)) - 8))


@cython.overflowcheck(False)
cdef inline size_t _hash(const void* p, size_t mask) noexcept nogil:
    # Blocks are page aligned: the low 12 bits carry nothing.  The multiply
    # wraps on purpose (Fibonacci hashing), hence no overflow check here.
    cdef uint64_t x = (<uint64_t><uintptr_t>p) >> 12
    return <size_t>((x * 0x9E3779B97F4A7C15ULL) >> 20) & mask


cdef pgo_cache_t* cache_create(size_t max_cached_bytes, size_t headroom, bint hugepages,
                               bint prefault, uint64_t reuse_window=0) except NULL nogil:
    cdef pgo_cache_t* c = <pgo_cache_t*>pgo_sys_calloc(1, sizeof(pgo_cache_t))
    if c == NULL:
        pgo_raise(PGO_ERR_NOMEM, "CacheAllocator", sizeof(pgo_cache_t), 0)
        return NULL
    c.table = <pgo_cblock_t**>pgo_sys_calloc(FIRST_TABLE, sizeof(pgo_cblock_t*))
    c.heads = <pgo_cblock_t**>pgo_sys_calloc(NCLASSES, sizeof(pgo_cblock_t*))
    if c.table == NULL or c.heads == NULL:
        pgo_sys_free(c.table)
        pgo_sys_free(c.heads)
        pgo_sys_free(c)
        pgo_raise(PGO_ERR_NOMEM, "CacheAllocator", NCLASSES * sizeof(void*), 0)
        return NULL
    c.table_mask = FIRST_TABLE - 1
    c.max_cached_bytes = max_cached_bytes
    c.headroom = headroom if headroom <= PGO_CACHE_MAX_HEADROOM else PGO_CACHE_NO_HEADROOM
    c.reuse_window = reuse_window
    c.hugepages = hugepages
    c.prefault = prefault
    pgo_lock_init(&c.lock, True)
    pgo_vg_create(c)
    return c


cdef void _release_block(pgo_cache_t* c, pgo_cblock_t* b) noexcept nogil:
    pgo_sys_unmap(b.map, b.mapped)
    pgo_sys_free(b)


cdef void cache_destroy(pgo_cache_t* c) noexcept nogil:
    cdef size_t i
    cdef pgo_cblock_t* b
    cdef pgo_cblock_t* nxt
    if c == NULL:
        return
    # Every block, cached or live: whoever still points into a live one was
    # told (the Python object outlives every Block and array made from it;
    # a C caller owns the lifetime it chose).
    for i in range(c.table_mask + 1):
        b = c.table[i]
        while b != NULL:
            nxt = b.hnext
            _release_block(c, b)
            b = nxt
    pgo_vg_destroy(c)
    pgo_lock_destroy(&c.lock)
    pgo_sys_free(c.table)
    pgo_sys_free(c.heads)
    pgo_sys_free(c)


# -- the live table ---------------------------------------------------------

cdef int _table_grow(pgo_cache_t* c) noexcept nogil:
    cdef size_t n = (c.table_mask + 1) * 2, i, h
    cdef pgo_cblock_t** t = <pgo_cblock_t**>pgo_sys_calloc(n, sizeof(pgo_cblock_t*))
    cdef pgo_cblock_t* b
    cdef pgo_cblock_t* nxt
    if t == NULL:
        return PGO_ERR_NOMEM
    for i in range(c.table_mask + 1):
        b = c.table[i]
        while b != NULL:
            nxt = b.hnext
            h = _hash(b.ptr, n - 1)
            b.hnext = t[h]
            t[h] = b
            b = nxt
    pgo_sys_free(c.table)
    c.table = t
    c.table_mask = n - 1
    return PGO_OK


cdef inline void _table_add(pgo_cache_t* c, pgo_cblock_t* b) noexcept nogil:
    cdef size_t h = _hash(b.ptr, c.table_mask)
    b.hnext = c.table[h]
    c.table[h] = b
    c.nblocks += 1


cdef pgo_cblock_t* _table_take(pgo_cache_t* c, const void* p, bint remove) noexcept nogil:
    cdef size_t h = _hash(p, c.table_mask)
    cdef pgo_cblock_t** link = &c.table[h]
    cdef pgo_cblock_t* b = link[0]
    while b != NULL:
        if b.ptr == p:
            if remove:
                link[0] = b.hnext
                b.hnext = NULL
                c.nblocks -= 1
            return b
        link = &b.hnext
        b = link[0]
    return NULL


# -- the free lists -----------------------------------------------------------

cdef void _unlink_free(pgo_cache_t* c, pgo_cblock_t* b) noexcept nogil:
    if b.prev != NULL:
        b.prev.next = b.next
    else:
        c.heads[b.cls] = b.next
    if b.next != NULL:
        b.next.prev = b.prev
    if b.older != NULL:
        b.older.newer = b.newer
    else:
        c.oldest = b.newer
    if b.newer != NULL:
        b.newer.older = b.older
    else:
        c.newest = b.older
    b.prev = b.next = b.older = b.newer = NULL
    c.cached_bytes -= b.size
    c.cached_blocks -= 1


cdef void _push_free(pgo_cache_t* c, pgo_cblock_t* b) noexcept nogil:
    b.prev = NULL
    b.next = c.heads[b.cls]
    if b.next != NULL:
        b.next.prev = b
    c.heads[b.cls] = b
    b.newer = NULL
    b.older = c.newest
    if c.newest != NULL:
        c.newest.newer = b
    else:
        c.oldest = b
    c.newest = b
    c.cached_bytes += b.size
    c.cached_blocks += 1


cdef size_t _give_back(pgo_cache_t* c, pgo_cblock_t* b, bint evicted) noexcept nogil:
    # A cached block back to the system; `evicted`: count it as an eviction
    # (pushed out, not trimmed).  Returns its size.
    cdef size_t size = b.size
    _unlink_free(c, b)
    _table_take(c, b.ptr, True)
    c.stats.capacity -= size
    c.evictions += evicted
    _release_block(c, b)
    return size


cdef inline void _evict_one(pgo_cache_t* c, pgo_cblock_t* b) noexcept nogil:
    _give_back(c, b, True)


cdef size_t _evict_to(pgo_cache_t* c, size_t limit, bint evicted) noexcept nogil:
    # Gives the oldest cached blocks back until at most `limit` bytes are
    # cached.
    cdef size_t freed = 0
    while c.cached_bytes > limit and c.oldest != NULL:
        freed += _give_back(c, c.oldest, evicted)
    return freed


cdef size_t _cached_limit(pgo_cache_t* c) noexcept nogil:
    # The most bytes that may wait in the cache now (the lock is held).
    # peak <= 2**48 and headroom <= 10**6: the product cannot overflow.
    cdef size_t allowed
    if c.headroom == PGO_CACHE_NO_HEADROOM:
        return c.max_cached_bytes
    allowed = c.stats.peak + c.stats.peak / 100 * c.headroom
    if allowed <= c.stats.in_use:
        return 0
    return min(allowed - c.stats.in_use, c.max_cached_bytes)


# -- allocation -----------------------------------------------------------------

cdef void _prefault(char* p, size_t n) noexcept nogil:
    cdef size_t i
    # One call where the kernel has it (Linux 5.14+); else a write per page.
    if madvise(p, n, MADV_POPULATE_WRITE) == 0:
        return
    i = 0
    while i < n:
        (<volatile char*>p)[i] = 0
        i += PGO_PAGE_BYTES


cdef pgo_cblock_t* _fresh_block(size_t size, bint huge, uint64_t nth) noexcept nogil:
    # The nth block made: `size` bytes mapped fresh (zero pages, so a calloc
    # of it needs no memset), with its record; NULL if refused.
    cdef pgo_cblock_t* b = <pgo_cblock_t*>pgo_sys_calloc(1, sizeof(pgo_cblock_t))
    cdef bint coloured = size >= COLOUR_MIN_BYTES
    if b == NULL:
        return NULL
    # Blocks come page (from 4 MiB, huge page) aligned, so without colours
    # every array would start at the same offset in its pages: an array and
    # the temporaries made from it would compete for the same sets of the
    # CPU's caches all through an elementwise loop (measured: 3.5% slower
    # on plain numpy arrays aligned alike than on ones 320 bytes apart).
    b.mapped = size + PGO_PAGE_BYTES * coloured
    b.map = <char*>pgo_sys_map(b.mapped, huge)
    if b.map == NULL:
        pgo_sys_free(b)
        return NULL
    b.ptr = b.map
    b.colour = (nth % NCOLOURS) * COLOUR_STEP * coloured
    return b


cdef pgo_cblock_t* _burst_pick(pgo_cblock_t* head) noexcept nogil:
    # The cached block of a class the next allocation takes: the most
    # recently freed, except that blocks freed in one burst (no allocation
    # between their frees: the same freed_at, together at the head) go back
    # in the order they were allocated.  A function's temporaries, freed
    # together when it returns, then get back the block each had in the
    # last call, as glibc's heap gives them (it hands out its lowest free
    # address first) and a plain LIFO does not (the last one freed would
    # serve the first one made): measured on plain numpy arrays, 8-48 MiB,
    # two or three temporaries, rotating the blocks costs 4-10%.
    cdef pgo_cblock_t* best = head
    cdef pgo_cblock_t* b
    cdef int k = 0
    if head == NULL:
        return NULL
    b = head.next
    while b != NULL and b.freed_at == head.freed_at and k < BURST_SCAN:
        if b.born_at < best.born_at:
            best = b
        b = b.next
        k += 1
    return best


cdef int _cache_alloc_unlocked(pgo_cache_t* c, size_t n, bint python_owned, bint zero,
                               bint coloured, void** out) noexcept nogil:
    # `coloured`: numpy's handler, which promises 16-byte alignment only;
    # the C API and Python Blocks get the block's start (page aligned).
    cdef size_t size
    cdef unsigned int cls
    cdef pgo_cblock_t* b
    cdef bint fresh = False
    cdef unsigned int k
    if n == 0:
        n = 1
    size = cache_class_size(n)
    if size == 0:
        c.stats.failed += 1
        return PGO_ERR_TOO_BIG
    c.ops += 1
    if c.reuse_window:
        # The least recently freed first: those no allocation took within
        # the window go back (their size did not come again).
        while c.oldest != NULL and c.ops - c.oldest.freed_at > c.reuse_window:
            _evict_one(c, c.oldest)
    # Whenever the system refuses (the live table, a block's record, the
    # block), what the cache holds goes back to it and the request is tried
    # once more.
    if c.nblocks >= c.table_mask + 1 and _table_grow(c) != PGO_OK:
        if c.cached_blocks:
            _evict_to(c, 0, True)
        if _table_grow(c) != PGO_OK:
            c.stats.failed += 1
            return PGO_ERR_NOMEM
    cls = _class_index(n)
    # The request's class, else a cached block up to BORROW_CLASSES larger
    # rather than a fresh one: its pages are resident already, where a fresh
    # block's would be faulted in and add to RSS (a program whose arrays
    # change size between phases, as a tile pipeline alternating 2 and 8 MiB
    # tiles, otherwise keeps a set of blocks per size).
    b = NULL
    k = cls
    while b == NULL and k <= cls + BORROW_CLASSES and k < NCLASSES:
        b = _burst_pick(c.heads[k])
        k += 1
    if b != NULL:
        size = b.size
        _unlink_free(c, b)
        c.hits += 1
    else:
        c.misses += 1
        b = _fresh_block(size, c.hugepages, c.misses)
        if b == NULL and c.cached_blocks:
            _evict_to(c, 0, True)
            b = _fresh_block(size, c.hugepages, c.misses)
        if b == NULL:
            c.stats.failed += 1
            return PGO_ERR_NOMEM
        fresh = True
        b.size = size
        b.cls = cls
        if not c.hugepages and size >= PGO_HUGEPAGE_MIN_BYTES:
            madvise(b.map, b.mapped, MADV_NOHUGEPAGE)   # even where THP is "always"
        if c.prefault:
            _prefault(b.map, b.mapped)
        if c.lo == 0 or <size_t>b.map < c.lo:
            pgo_atomic_store(&c.lo, <size_t>b.map)
        if <size_t>b.map + b.mapped > c.hi:
            pgo_atomic_store(&c.hi, <size_t>b.map + b.mapped)
        c.stats.capacity += size
        _table_add(c, b)
    # Within the block's first page either way, so its place in the address
    # table (hashed by page) does not move.
    b.ptr = b.map + b.colour * coloured
    b.born_at = c.ops
    b.requested = n
    b.python_owned = python_owned
    b.live = True
    pgo_vg_alloc(c, b.ptr, n)
    if PGO_DEBUG_FILL:
        memset(b.ptr, PGO_FILL_ALLOC, n)
    if zero and (not fresh or PGO_DEBUG_FILL or c.prefault):
        memset(b.ptr, 0, n)         # fresh pages are zero already, and untouched
    c.stats.allocs += 1
    c.stats.requested += n
    c.stats.lost += size - n
    c.stats.in_use += size
    if c.stats.in_use > c.stats.peak:
        c.stats.peak = c.stats.in_use
    if fresh and c.cached_bytes:
        _evict_to(c, _cached_limit(c), True)
    out[0] = b.ptr
    return PGO_OK


cdef int _cache_free_unlocked(pgo_cache_t* c, void* p, bint from_python) noexcept nogil:
    cdef pgo_cblock_t* b
    cdef size_t limit
    if p == NULL:
        return PGO_OK
    b = _table_take(c, p, False)
    if b == NULL:
        return PGO_ERR_FOREIGN
    if not b.live:
        return PGO_ERR_DOUBLE_FREE          # waiting in the cache already
    if b.python_owned != from_python:
        # A C-level free of an array's block, or the reverse: the wrong
        # owner.  Either way the block is ours, and stays as it is.
        return PGO_ERR_PY_OWNED
    b.live = False
    if PGO_DEBUG_FILL:
        memset(b.ptr, PGO_FILL_FREE, b.requested)
    pgo_vg_free(c, b.ptr)
    c.stats.frees += 1
    c.stats.in_use -= b.size
    c.stats.requested -= b.requested
    c.stats.lost -= b.size - b.requested
    limit = _cached_limit(c)
    if b.size > limit:
        _table_take(c, p, True)
        c.stats.capacity -= b.size
        c.evictions += 1
        _release_block(c, b)
        return PGO_OK
    b.freed_at = c.ops
    _push_free(c, b)
    _evict_to(c, limit, True)
    return PGO_OK


# The C API's blocks (not owned by Python): n bytes, or a free of one.
cdef int _cache_alloc_c(void* state, size_t n, size_t align, void** out) noexcept nogil:
    return _cache_alloc_unlocked(<pgo_cache_t*>state, n, False, False, False, out)


cdef int _cache_free_c(void* state, void* p) noexcept nogil:
    return _cache_free_unlocked(<pgo_cache_t*>state, p, False)


cdef void* cache_alloc(pgo_cache_t* c, size_t n) except NULL nogil:
    return pgo_locked_alloc(&c.lock, &c.stats, _cache_alloc_c, c, n, PGO_PAGE_BYTES,
                            "CacheAllocator")


cdef int cache_free(pgo_cache_t* c, void* p) except -1 nogil:
    return pgo_locked_free(&c.lock, &c.stats, _cache_free_c, c, p, "CacheAllocator")


cdef size_t cache_trim(pgo_cache_t* c) noexcept nogil:
    cdef size_t freed
    pgo_lock(&c.lock, &c.stats)
    freed = _evict_to(c, 0, False)
    c.trims += 1
    pgo_unlock(&c.lock)
    return freed


# -- numpy's handler (see pgo_backend_t) -------------------------------------

cdef int _cache_take_unlocked(void* state, size_t n, size_t align, void** out) noexcept nogil:
    return _cache_alloc_unlocked(<pgo_cache_t*>state, n, True, False, True, out)


cdef int _cache_take_zeroed(void* state, size_t n, size_t align, void** out) noexcept nogil:
    # Zeroed by the cache, which knows when a block already is (fresh pages are).
    return _cache_alloc_unlocked(<pgo_cache_t*>state, n, True, True, True, out)


cdef int _cache_give_unlocked(void* state, void* p) noexcept nogil:
    return _cache_free_unlocked(<pgo_cache_t*>state, p, True)


cdef bint _cache_holds(void* state, void* p) noexcept nogil:
    # Every pointer handed out is a block's start or one of its colours, so
    # a pointer at any other offset in its page is not one of ours (nor
    # inside one), decided without the lock: malloc's large blocks start 16
    # bytes into a page, and 1 in 32 of its 16-byte aligned small ones
    # passes.  The address bounds alone decide little: other mappings lie
    # between the blocks.  A pointer that passes both is ours exactly when
    # the address table has it.
    cdef pgo_cache_t* c = <pgo_cache_t*>state
    cdef size_t off = <size_t>p & (PGO_PAGE_BYTES - 1)
    return (off % COLOUR_STEP == 0 and off < NCOLOURS * COLOUR_STEP
            and pgo_atomic_load(&c.lo) <= <size_t>p < pgo_atomic_load(&c.hi))


cdef size_t _cache_span_unlocked(void* state, void* p) noexcept nogil:
    # The bytes requested (at least 1), not the block's size: what a realloc
    # copies out, and a block taken from a larger class may be 4x that.
    cdef pgo_cblock_t* b = _table_take(<pgo_cache_t*>state, p, False)
    return b.requested if b != NULL and b.live else 0


cdef class CacheAllocator(Allocator):
    """Large blocks kept by size class for reuse: numpy temporaries and
    buffers of sizes that come back again and again.

    Args:
        max_cached_bytes: most bytes of freed blocks kept for reuse (the
            least recently freed go back to the system first); blocks in use
            are not limited.  0 keeps nothing (every free goes back).
        headroom_percent: also keep live + cached bytes within
            (100 + headroom_percent)% of the most bytes ever live in this
            cache, so it raises the peak footprint of what it serves by at
            most that share, at any input size (``pgo analyze`` writes 10).
            None (the default): only ``max_cached_bytes`` bounds the cache.
        reuse_window: a freed block that no allocation of the cache took
            within this many allocations goes back to the system (a size
            that does not come again is not kept while the rest of the
            process grows); 0 (the default): kept until evicted by a bound.
        hugepages: ask for transparent huge pages on blocks of 4 MiB and
            more, as numpy's default handler does (True by default).
        prefault: populate a fresh block's pages when it is made, so the
            first use of it takes no page faults.

    Always thread-safe.  A request is rounded up to its size class (at most
    12.5% more; see ``class_size``) and served by a block of that class, or,
    when none is cached, by a cached block of up to 4x its class rather
    than a fresh one.  ``trim()`` gives every cached block
    back to the system.  ``stats()`` adds ``hits``, ``misses``,
    ``hit_rate``, ``cached_bytes``, ``cached_blocks``, ``evictions`` and
    ``trims``.
    """

    def __cinit__(self, size_t max_cached_bytes=DEF_MAX_CACHED, *, bint hugepages=True,
                  bint prefault=False, object headroom_percent=None, uint64_t reuse_window=0):
        cdef size_t headroom = PGO_CACHE_NO_HEADROOM
        if headroom_percent is not None:
            if not 0 <= headroom_percent <= PGO_CACHE_MAX_HEADROOM:
                raise ValueError(f"headroom_percent must be None or 0 to {PGO_CACHE_MAX_HEADROOM:,}"
                                 f" (percent of the cache's peak); got {headroom_percent!r}")
            headroom = headroom_percent
        self.c = cache_create(max_cached_bytes, headroom, hugepages, prefault, reuse_window)
        pgo_backend_init(&self._be, self.c, &self.c.lock, &self.c.stats,
                         _cache_take_unlocked, _cache_take_zeroed, SIZE_MAX,
                         _cache_holds, _cache_give_unlocked, _cache_span_unlocked,
                         &self.c.lo, &self.c.hi)
        self._bind(<pgo_destroy_fn>cache_destroy, 1, PGO_PAGE_BYTES)

    @property
    def max_cached_bytes(self):
        return self.c.max_cached_bytes

    @property
    def headroom_percent(self):
        return None if self.c.headroom == PGO_CACHE_NO_HEADROOM else self.c.headroom

    @property
    def reuse_window(self):
        return self.c.reuse_window

    cdef int _c_alloc(self, size_t nbytes, size_t align, void** out, size_t* token) noexcept:
        return _cache_alloc_unlocked(self.c, nbytes, True, False, False, out)

    cdef int _c_free(self, Block b) noexcept:
        return _cache_free_unlocked(self.c, b.ptr, True)

    cdef void _c_dead(self, Block b) noexcept:
        _cache_free_unlocked(self.c, b.ptr, True)

    cdef int _c_reset(self) noexcept:
        # Nothing is live (reset() checked): a reset is a trim.
        _evict_to(self.c, 0, False)
        self.c.stats.resets += 1
        return PGO_OK

    def trim(self):
        """Give every cached (free) block back to the system.

        Returns:
            The number of bytes released.
        """
        cdef size_t freed
        with nogil:
            freed = cache_trim(self.c)
        return freed

    @staticmethod
    def class_size(size_t nbytes):
        """The size class of a request of ``nbytes``: the size of a fresh
        block made for it (a cached block of a larger class may serve it)."""
        cdef size_t n = cache_class_size(nbytes if nbytes else 1)
        if n == 0:
            raise MemoryError(f"CacheAllocator serves at most 2**48 bytes; {nbytes:,} requested")
        return n

    def _raise_alloc(self, int code, size_t nbytes, size_t align):
        if code == PGO_ERR_TOO_BIG:
            raise MemoryError(f"{self!r}: {nbytes:,} bytes is more than it serves (2**48)")
        Allocator._raise_alloc(self, code, nbytes, align)

    def _describe_nomem(self, size_t nbytes):
        return (f"{self!r}: the system refused {self.class_size(nbytes):,} bytes for a "
                f"{nbytes:,}-byte request (nothing cached was left to give back)")

    def _extra_stats(self):
        # Copied out under the mutex and turned into Python objects after:
        # making objects can run the GC, whose finalizers may free arrays
        # into this very cache (and take the mutex).
        cdef uint64_t hits, misses, evictions, trims
        cdef size_t cached_bytes, cached_blocks
        pgo_lock_gil_held(self._lock, self._st)
        hits, misses, evictions, trims = self.c.hits, self.c.misses, self.c.evictions, self.c.trims
        cached_bytes, cached_blocks = self.c.cached_bytes, self.c.cached_blocks
        pgo_unlock(self._lock)
        return {"hits": hits, "misses": misses,
                "hit_rate": <double>hits / (hits + misses) if hits + misses else 0.0,
                "cached_bytes": cached_bytes, "cached_blocks": cached_blocks,
                "evictions": evictions, "trims": trims,
                "max_cached_bytes": self.c.max_cached_bytes,
                "headroom_percent": self.headroom_percent,
                "reuse_window": self.c.reuse_window}

    def __repr__(self):
        return (f"<CacheAllocator max_cached_bytes={self.c.max_cached_bytes} "
                f"headroom_percent={self.headroom_percent} "
                f"cached={self.c.cached_bytes} hugepages={bool(self.c.hugepages)}>")
