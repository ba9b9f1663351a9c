"""AdaptiveAllocator: picks its own backend from what its requests do.

Design: four backends live side by side in one allocator, and new requests
go to the one chosen last; a block carries a 16-byte header saying which
backend made it, so a block made before a switch goes back to that backend
whenever it is freed.

a) *slab*: 1 MiB segments cut into slots of one size (16-byte steps up to
   4 KiB), a free list per slot size linked through the slots' headers.
   Serves the dominant size (and any size whose slots are waiting free).
b) *arena*: 1 MiB segments bumped in order, each counting its live blocks;
   a region whose count drops to zero is rewound (the current one) or
   given back to the segment pool: one free-for-all per region, for
   temporaries that die together.  Requests up to 256 KiB.
c) *cache*: blocks from malloc in 80 size classes (16-byte steps to 256
   bytes, then four per power of two, up to 16 MiB), freed blocks kept per
   class for the next request of that class, at most ``max_cached`` bytes
   (64 MiB, or a quarter of ``max_bytes``).
d) *system*: malloc and free, for long-lived blocks and whatever the others
   do not serve.
   Segments (a, b) come from one address-space reservation, so a pointer's
   segment is a subtraction and a shift; malloc'd blocks (c, d) are in an
   open-addressing hash set of their addresses.  A pointer is read as a
   header only once it is known to be ours: a double free of a system
   block is an AllocatorError, never a glibc abort.

Cheap counters per window of ``window`` allocations: requests per slot-size
class, frees, frees of blocks born in this window or the one before
(short lives), frees that came in runs of 4 or more with no allocation in
between (blocks freed together), requests over 256 KiB, requests the
backend in use left to malloc.  At the end of a window -- inside the
allocation that completes it, under the lock: a safe point -- the window
votes (`_vote`, thresholds there), and the allocator switches when two
windows in a row vote for the same new choice, or at once when the
evidence is clear: the backend in use left half the window's requests to
malloc, or it is the very first vote (the starting backend, the arena, is
no evidence).  Every switch is kept, with the counts that made it, for
``stats()``.

# NOTE: ownership.  The ``pgo_adaptive_t``, its reservation, segment
# tables, hash set and every malloc'd block (live or cached) belong to the
# AdaptiveAllocator object, or to the C caller of ``adaptive_create``;
# ``adaptive_destroy`` gives back all of it, live blocks included.  A Python
# Block holds its allocator, so the memory outlives every Block and array
# made from it.  Blocks a Python Block or numpy array owns carry a flag in
# their header: the C API refuses to free them.
# NOTE: threads and the GIL.  Nothing here needs the GIL: every C path is
# nogil, and a switch happens inside an allocation with the lock held.
# Without threadsafe=True the struct relies on its single user (or the GIL)
# for exclusion; with it, every entry point in adaptive.pxd and every
# backend call (numpy's handler) takes the mutex.  Only ``lo``/``hi`` are
# read without it (atomics; numpy's handler deciding whose a pointer is).
"""

cimport cython
from libc.stdint cimport SIZE_MAX, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from pgo._core._base cimport (
    Allocator, Block, pgo_locked_alloc, pgo_locked_free, pgo_locked_reset, pgo_raise,
    pgo_raise_at,
)
from pgo._core._c.pgo_defs cimport pgo_vg_defined
from pgo._core._memory cimport (
    pgo_sys_alloc, pgo_sys_calloc, pgo_sys_commit, pgo_sys_free, pgo_sys_reserve,
    pgo_sys_unreserve,
)
from pgo._core._typedefs cimport (
    PGO_CANARY, PGO_DEBUG_FILL, PGO_ERR_ALIGN, PGO_ERR_DOUBLE_FREE, PGO_ERR_FOREIGN,
    PGO_ERR_INTERIOR, PGO_ERR_NOMEM, PGO_ERR_OVERRUN, PGO_ERR_PY_OWNED,
    PGO_ERR_TOO_BIG, PGO_FILL_ALLOC, PGO_FILL_FREE, PGO_OK, pgo_atomic_load, pgo_atomic_store,
    pgo_backend_init, pgo_canary_ok, pgo_destroy_fn, pgo_lock, pgo_lock_destroy,
    pgo_lock_gil_held, pgo_lock_init, pgo_mul_overflow, pgo_stats_reset, pgo_unlock,
    pgo_vg_alloc, pgo_vg_create, pgo_vg_destroy, pgo_vg_free, pgo_vg_noaccess, pgo_vg_trim,
)

from pgo._errors import AllocatorError

cdef extern from *:
    int __builtin_clzll(unsigned long long) nogil

cdef enum:
    SEG = 1048576               # literals only: overflowcheck mis-compiles constant expressions
    FIRST_REG = 1024            # entries in the first hash set (a power of two)
    BURST_RUN = 4               # frees in a row that count as "freed together"
    F_LIVE = 1                  # header flags
    F_PY = 2
    INV_SHIFT = 40
    NO_SEG = -1

# Address space reserved when no max_bytes is given: 64 GiB, untouched
# until a segment is committed.
# _find's *seg_out for a malloc'd block: SEG_REG + its entry in the hash set.
cdef size_t SEG_REG = (<size_t>1) << 62
cdef size_t DEFAULT_RESERVE = (<size_t>64) << 30
cdef size_t DEFAULT_MAX_CACHED = (<size_t>64) << 20
# The size field of a header holds 40 bits.
cdef size_t MAX_REQUEST = ((<size_t>1) << 40) - 1
cdef size_t CACHE_MAX = (<size_t>1) << 24
# Xored into a freed arena block's mark, so a second free of it is told
# from an interior pointer.
cdef uint64_t FREED = 0x5A5A5A5A5A5A5A5AULL

cdef size_t _slab_stride[PGO_ADAPT_SLAB_CLASSES]   # header + slot (+ test-build canary room)
cdef uint64_t _slab_inv[PGO_ADAPT_SLAB_CLASSES]    # ceil(2**40 / stride): offset -> slot
cdef size_t _csize[PGO_ADAPT_CACHE_CLASSES]

BACKENDS = ("system", "slab", "arena", "cache")
#: The decision rule's thresholds (see _vote), for the tests and the docs.
THRESHOLDS = {"one_size_share": 0.80, "few_frees_per_alloc": 0.25, "short_lived_share": 0.75,
              "freed_together_share": 0.50, "freed_together_run": BURST_RUN,
              "large_share": 0.25, "large_bytes": PGO_ADAPT_ARENA_MAX,
              "windows_to_switch": 2, "fallback_share_to_switch_at_once": 0.50}
MIN_WINDOW = PGO_ADAPT_MIN_WINDOW
MAX_ALIGN = PGO_ADAPT_ALIGN
SLAB_MAX_BYTES = PGO_ADAPT_SLAB_MAX
ARENA_MAX_BYTES = PGO_ADAPT_ARENA_MAX
CACHE_MAX_BYTES = CACHE_MAX
SEGMENT_BYTES = SEG
#: What each phase of ``_run_phases`` is meant to run on, in order.
PHASES = ("slab", "arena", "system", "cache")
_RULES = {PGO_ADAPT_RULE_ONE_SIZE: "one size", PGO_ADAPT_RULE_FEW_FREES: "few frees",
          PGO_ADAPT_RULE_TOGETHER: "freed together", PGO_ADAPT_RULE_REUSED: "varied sizes reused"}


def _init_tables():
    cdef size_t k, c, e
    cdef size_t room = 16 if PGO_CANARY else 0
    for k in range(1, <size_t>PGO_ADAPT_SLAB_CLASSES):
        _slab_stride[k] = PGO_ADAPT_HEADER + 16 * k + room
        _slab_inv[k] = ((<uint64_t>1 << INV_SHIFT) + _slab_stride[k] - 1) // _slab_stride[k]
    for c in range(<size_t>PGO_ADAPT_CACHE_CLASSES):
        if c < 16:
            _csize[c] = 16 * (c + 1)
        else:
            e = 8 + (c - 16) // 4
            _csize[c] = (<size_t>1 << e) + (<size_t>1 << (e - 2)) * ((c - 16) % 4 + 1)


_init_tables()


# -- small helpers ----------------------------------------------------------------------------

cdef inline size_t _round16(size_t n) noexcept nogil:
    return (n + 15) & ~(<size_t>15)


cdef inline size_t _slab_k(size_t n) noexcept nogil:
    # The slot class of a request of n <= PGO_ADAPT_SLAB_MAX bytes: 16 * k >= n.
    return (n + 15) >> 4 if n else 1


cdef inline size_t _cclass(size_t n) noexcept nogil:
    # n <= CACHE_MAX: 16-byte steps to 256, then four classes per power of two.
    cdef size_t e
    if n <= 256:
        return (n + 15) // 16 - 1 if n else 0
    e = 63 - __builtin_clzll(n - 1)
    return 16 + (e - 8) * 4 + ((n - 1 - (<size_t>1 << e)) >> (e - 2))


cdef inline pgo_adapt_hdr_t* _hdr(const void* p) noexcept nogil:
    return <pgo_adapt_hdr_t*>(<char*>p - PGO_ADAPT_HEADER)


cdef inline size_t _h_size(uint64_t info) noexcept nogil:
    return <size_t>(info >> 24)


cdef inline int _h_backend(uint64_t info) noexcept nogil:
    return <int>(info & 15)


cdef inline bint _h_live(uint64_t info) noexcept nogil:
    return (info >> 4) & F_LIVE


cdef inline void _h_set(pgo_adaptive_t* a, void* p, size_t n, int backend, bint py) noexcept nogil:
    # The header of a block being handed out.  Under valgrind the header may
    # lie where an earlier block's (freed) data was: made addressable first.
    cdef pgo_adapt_hdr_t* h = _hdr(p)
    pgo_vg_defined(h, PGO_ADAPT_HEADER)
    h.mark = a.cookie ^ <uintptr_t>p
    h.info = ((<uint64_t>n << 24) | ((a.windows & 0xffff) << 8)
              | ((F_LIVE | (F_PY if py else 0)) << 4) | <uint64_t>backend)


cdef inline size_t _footprint(int backend, size_t n) noexcept nogil:
    # Bytes a block of n takes from its backend, header and rounding included.
    if backend == PGO_ADAPT_SLAB:
        return _slab_stride[_slab_k(n)]
    if backend == PGO_ADAPT_ARENA:
        return PGO_ADAPT_HEADER + _round16(n + PGO_CANARY)
    if backend == PGO_ADAPT_CACHE:
        return PGO_ADAPT_HEADER + _csize[_cclass(n + PGO_CANARY)]
    return PGO_ADAPT_HEADER + n + PGO_CANARY


cdef inline size_t _capacity(pgo_adaptive_t* a) noexcept nogil:
    return a.nsegs * <size_t>SEG + a.malloced


cdef inline void _sync_capacity(pgo_adaptive_t* a) noexcept nogil:
    a.stats.capacity = _capacity(a)


@cython.overflowcheck(False)
cdef inline uint64_t _mix(uint64_t x) noexcept nogil:
    # splitmix64's finalizer; the multiplies wrap on purpose.
    x ^= x >> 30
    x *= 0xBF58476D1CE4E5B9ULL
    x ^= x >> 27
    x *= 0x94D049BB133111EBULL
    return x ^ (x >> 31)


# -- the hash set of malloc'd blocks ---------------------------------------------------------
# Linear probing, at most half full, deletion by backward shift (no
# tombstones).  Keys are block addresses (never 0).  A block's page picks a
# window of 256 slots at random and its offset in the page its slot in the
# window: neighbouring blocks (made one after another, freed one after
# another) fall in neighbouring slots, so a run of allocations walks the
# table in order instead of missing the cache at every step.  malloc'd
# blocks lie at least 32 bytes apart, so one page's keys fill at most every
# other slot of its window, and windows of different pages overlap at
# random, as keys of a plain hash would.

@cython.overflowcheck(False)
cdef inline size_t _rslot(pgo_adaptive_t* a, size_t key) noexcept nogil:
    return (<size_t>(((<uint64_t>key >> 12) * 0x9E3779B97F4A7C15ULL) >> a.reg_shift)
            + ((key >> 4) & 255)) & a.reg_mask


cdef inline size_t _reg_find(pgo_adaptive_t* a, size_t key) noexcept nogil:
    # The entry holding key, or SIZE_MAX.
    cdef size_t i = _rslot(a, key)
    while a.reg[i] != 0:
        if a.reg[i] == key:
            return i
        i = (i + 1) & a.reg_mask
    return SIZE_MAX


cdef inline void _reg_put(size_t* table, size_t i, size_t mask, size_t key) noexcept nogil:
    while table[i] != 0:
        i = (i + 1) & mask
    table[i] = key


cdef int _reg_grow(pgo_adaptive_t* a) noexcept nogil:
    # Doubles the table; nothing changes on failure.
    cdef size_t cap = (a.reg_mask + 1) * 2, i, key, old_cap = a.reg_mask + 1
    cdef size_t* table = <size_t*>pgo_sys_calloc(cap, sizeof(size_t))
    cdef size_t* old = a.reg
    if table == NULL:
        return PGO_ERR_NOMEM
    a.reg = table
    a.reg_mask = cap - 1
    a.reg_shift -= 1
    for i in range(old_cap):
        key = old[i]
        if key != 0:
            _reg_put(table, _rslot(a, key), a.reg_mask, key)
    pgo_sys_free(old)
    return PGO_OK


cdef void _reg_del(pgo_adaptive_t* a, size_t i) noexcept nogil:
    cdef size_t j = i, k
    cdef bint stays
    while True:
        j = (j + 1) & a.reg_mask
        if a.reg[j] == 0:
            break
        k = _rslot(a, a.reg[j])
        # The entry at j stays when its home slot k lies cyclically in (i, j].
        stays = (i < k <= j) if i <= j else (i < k or k <= j)
        if not stays:
            a.reg[i] = a.reg[j]
            i = j
    a.reg[i] = 0
    a.reg_count -= 1


# -- malloc'd blocks (cache and system) -----------------------------------------------------

cdef int _malloc_block(pgo_adaptive_t* a, size_t total, void** out) noexcept nogil:
    # `total` bytes from the system, header included, registered; the data
    # address in *out.  Cached blocks go back first when max_bytes or the
    # system says no.
    cdef char* raw
    cdef size_t p
    if a.max_bytes and _capacity(a) + total > a.max_bytes:
        _cache_trim(a)
        if _capacity(a) + total > a.max_bytes:
            return PGO_ERR_NOMEM
    if (a.reg_count + 1) * 2 > a.reg_mask + 1 and _reg_grow(a) != PGO_OK:
        return PGO_ERR_NOMEM
    raw = <char*>pgo_sys_alloc(total, PGO_ADAPT_ALIGN)
    if raw == NULL and a.cached_blocks:
        _cache_trim(a)
        raw = <char*>pgo_sys_alloc(total, PGO_ADAPT_ALIGN)
    if raw == NULL:
        return PGO_ERR_NOMEM
    p = <size_t>raw + PGO_ADAPT_HEADER
    _reg_put(a.reg, _rslot(a, p), a.reg_mask, p)
    a.reg_count += 1
    a.malloced += total
    if <size_t>raw < a.lo:
        pgo_atomic_store(&a.lo, <size_t>raw)
    if <size_t>raw + total > a.hi:
        pgo_atomic_store(&a.hi, <size_t>raw + total)
    _sync_capacity(a)
    out[0] = <void*>p
    return PGO_OK


cdef void _malloc_release(pgo_adaptive_t* a, void* p, size_t total, size_t i) noexcept nogil:
    # i: p's entry in the hash set, when the caller has it (else SIZE_MAX).
    if i == SIZE_MAX:
        i = _reg_find(a, <size_t>p)
    if i != SIZE_MAX:
        _reg_del(a, i)
    pgo_sys_free(<char*>p - PGO_ADAPT_HEADER)
    a.malloced -= total
    _sync_capacity(a)


cdef void _cache_trim(pgo_adaptive_t* a) noexcept nogil:
    # Every cached block back to the system.
    cdef size_t c
    cdef void* p
    for c in range(<size_t>PGO_ADAPT_CACHE_CLASSES):
        while a.cache_free[c] != NULL:
            p = a.cache_free[c]
            a.cache_free[c] = <void*>_hdr(p).mark
            _malloc_release(a, p, PGO_ADAPT_HEADER + _csize[c], SIZE_MAX)
    a.cached_bytes = 0
    a.cached_blocks = 0


cdef int _cache_alloc(pgo_adaptive_t* a, size_t n, void** out) noexcept nogil:
    cdef size_t c = _cclass(n + PGO_CANARY)
    cdef void* p = a.cache_free[c]
    cdef int err
    if p != NULL:
        a.cache_free[c] = <void*>_hdr(p).mark
        a.cached_bytes -= PGO_ADAPT_HEADER + _csize[c]
        a.cached_blocks -= 1
        a.cache_hits += 1
    else:
        err = _malloc_block(a, PGO_ADAPT_HEADER + _csize[c], &p)
        if err != PGO_OK:
            return err
        a.cache_misses += 1
    out[0] = p
    return PGO_OK


cdef void _cache_free(pgo_adaptive_t* a, void* p, size_t n, size_t i) noexcept nogil:
    # Kept for the next request of its class while the cache is the backend
    # and under its bound; else back to the system.
    cdef size_t c = _cclass(n + PGO_CANARY), total = PGO_ADAPT_HEADER + _csize[c]
    cdef pgo_adapt_hdr_t* h = _hdr(p)
    if a.backend == PGO_ADAPT_CACHE and a.cached_bytes + total <= a.max_cached:
        h.mark = <uint64_t><uintptr_t>a.cache_free[c]
        h.info &= ~(<uint64_t>(F_LIVE | F_PY) << 4)
        a.cache_free[c] = p
        a.cached_bytes += total
        a.cached_blocks += 1
    else:
        _malloc_release(a, p, total, i)


# -- segments (slab and arena) --------------------------------------------------------------

cdef int _seg_take(pgo_adaptive_t* a, int kind, size_t* out) noexcept nogil:
    # A segment for `kind`: an unused one, or a fresh one committed.
    cdef size_t s
    if a.nfree_segs:
        a.nfree_segs -= 1
        s = a.free_segs[a.nfree_segs]
    else:
        if a.nsegs >= a.max_segs:
            return PGO_ERR_NOMEM
        if a.max_bytes and _capacity(a) + SEG > a.max_bytes:
            _cache_trim(a)
            if _capacity(a) + SEG > a.max_bytes:
                return PGO_ERR_NOMEM
        if pgo_sys_commit(a.base + a.nsegs * <size_t>SEG, SEG) != 0:
            return PGO_ERR_NOMEM
        s = a.nsegs
        a.nsegs += 1
        _sync_capacity(a)
    a.seg_kind[s] = <uint8_t>kind
    a.seg_class[s] = 0
    a.seg_top[s] = 0
    a.seg_live[s] = 0
    out[0] = s
    return PGO_OK


cdef inline void _seg_release(pgo_adaptive_t* a, size_t s) noexcept nogil:
    a.seg_kind[s] = 0
    a.seg_top[s] = 0
    a.free_segs[a.nfree_segs] = <uint32_t>s
    a.nfree_segs += 1


cdef int _slab_alloc(pgo_adaptive_t* a, size_t k, void** out) noexcept nogil:
    cdef void* p = a.slab_free[k]
    cdef size_t s, stride
    cdef int err
    if p != NULL:
        a.slab_free[k] = <void*>_hdr(p).mark
        out[0] = p
        return PGO_OK
    stride = _slab_stride[k]
    s = a.slab_carve[k]
    if s == 0 or a.seg_top[s - 1] + stride > SEG:
        err = _seg_take(a, PGO_ADAPT_SLAB, &s)
        if err != PGO_OK:
            return err
        a.seg_class[s] = <uint16_t>k
        a.slab_carve[k] = <uint32_t>(s + 1)
    else:
        s -= 1
    out[0] = a.base + s * <size_t>SEG + a.seg_top[s] + PGO_ADAPT_HEADER
    a.seg_top[s] += <uint32_t>stride
    return PGO_OK


cdef int _arena_alloc(pgo_adaptive_t* a, size_t n, void** out) noexcept nogil:
    # At least one byte past the header: a zero-byte block at a region's very
    # end would otherwise point at the next region and free there.
    cdef size_t need = PGO_ADAPT_HEADER + _round16(n + PGO_CANARY if n + PGO_CANARY else 1)
    cdef size_t s = a.arena_seg, t
    cdef int err
    if s == 0 or a.seg_top[s - 1] + need > SEG:
        # The region in use is full: a new one (the old one goes back to
        # the segment pool when its last block does).
        err = _seg_take(a, PGO_ADAPT_ARENA, &t)
        if err != PGO_OK:
            return err
        if s and a.seg_live[s - 1] == 0:
            _seg_release(a, s - 1)
        s = t + 1
        a.arena_seg = s
    s -= 1
    out[0] = a.base + s * <size_t>SEG + a.seg_top[s] + PGO_ADAPT_HEADER
    a.seg_top[s] += <uint32_t>need
    a.seg_live[s] += 1
    return PGO_OK


cdef void _arena_free(pgo_adaptive_t* a, void* p, size_t s) noexcept nogil:
    cdef pgo_adapt_hdr_t* h = _hdr(p)
    h.mark = a.cookie ^ <uintptr_t>p ^ FREED
    h.info &= ~(<uint64_t>(F_LIVE | F_PY) << 4)
    a.seg_live[s] -= 1
    if a.seg_live[s] == 0:
        if s + 1 == a.arena_seg and a.backend == PGO_ADAPT_ARENA:
            a.seg_top[s] = 0            # rewound: the next blocks start at its beginning
        else:
            if s + 1 == a.arena_seg:
                a.arena_seg = 0
            _seg_release(a, s)


# -- finding a block ------------------------------------------------------------------------

cdef int _find(pgo_adaptive_t* a, void* p, size_t* seg_out) noexcept nogil:
    # PGO_OK when p starts a live block (its header is then ours to read;
    # *seg_out: its segment, or for a malloc'd block SEG_REG + its entry in
    # the hash set); else why not.
    cdef uintptr_t x = <uintptr_t>p, b = <uintptr_t>a.base
    cdef size_t off, s, within, k, rel, slot
    cdef pgo_adapt_hdr_t* h
    cdef uint8_t kind
    if x >= b and x - b < a.max_segs * <size_t>SEG:
        off = x - b
        s = off >> PGO_ADAPT_SEG_SHIFT
        if s >= a.nsegs:
            return PGO_ERR_FOREIGN          # reserved, never committed
        within = off & (SEG - 1)
        kind = a.seg_kind[s]
        if kind == PGO_ADAPT_SLAB:
            if within >= a.seg_top[s]:
                return PGO_ERR_FOREIGN      # never carved
            if within < PGO_ADAPT_HEADER:
                return PGO_ERR_INTERIOR
            k = a.seg_class[s]
            rel = within - PGO_ADAPT_HEADER
            slot = <size_t>((<uint64_t>rel * _slab_inv[k]) >> INV_SHIFT)
            if slot * _slab_stride[k] != rel:
                return PGO_ERR_INTERIOR
            if not _h_live(_hdr(p).info):
                return PGO_ERR_DOUBLE_FREE
        elif kind == PGO_ADAPT_ARENA:
            # A zero-size block made last starts exactly at the bump.
            if within > a.seg_top[s]:
                return PGO_ERR_DOUBLE_FREE  # past the bump: its region was rewound since
            if within < PGO_ADAPT_HEADER or (x & 15) != 0:
                return PGO_ERR_INTERIOR
            h = _hdr(p)
            if h.mark != a.cookie ^ x or not _h_live(h.info):
                return PGO_ERR_DOUBLE_FREE if h.mark == a.cookie ^ x ^ FREED else PGO_ERR_INTERIOR
        else:
            return PGO_ERR_DOUBLE_FREE      # an unused segment: its blocks are gone
        seg_out[0] = s
        return PGO_OK
    s = _reg_find(a, x)
    if s == SIZE_MAX:
        return PGO_ERR_FOREIGN
    if not _h_live(_hdr(p).info):
        return PGO_ERR_DOUBLE_FREE          # waiting in the cache
    seg_out[0] = SEG_REG + s
    return PGO_OK


cdef bint _inside_malloced(pgo_adaptive_t* a, void* p) noexcept nogil:
    # Error path only (a full scan): whether p lies inside one of the
    # malloc'd blocks, which the hash set finds by their start alone.
    cdef size_t i, key, n, x = <size_t>p
    for i in range(a.reg_mask + 1):
        key = a.reg[i]
        if key != 0 and key <= x:
            n = _h_size(_hdr(<void*>key).info)
            if x - key < (n if n else 1):
                return True
    return False


# -- the decision -----------------------------------------------------------------------------

cdef void _vote(pgo_adapt_window_t* w) noexcept nogil:
    # The backend a window's counts ask for; the first rule that holds wins.
    # Every threshold is a share of the window's own counts, so none depends
    # on the window's length or on the workload's scale.
    if w.modal * 5 >= w.allocs * 4:
        # >= 80% of requests are one slot size (<= 4 KiB): a slot pop and
        # push each, whatever their lifetimes (slots are reused as soon as
        # they are freed; the other 20% go to malloc).
        w.dst = PGO_ADAPT_SLAB
        w.rule = PGO_ADAPT_RULE_ONE_SIZE
    elif w.frees * 4 < w.allocs:
        # Fewer than one free per four allocations: blocks outlive the
        # window.  Nothing comes back to reuse, and a region kept whole by
        # one survivor would waste the rest; malloc packs long-lived varied
        # sizes best.
        w.dst = PGO_ADAPT_SYSTEM
        w.rule = PGO_ADAPT_RULE_FEW_FREES
    elif (w.young * 4 >= w.frees * 3 and w.together * 2 >= w.frees
          and w.large * 4 < w.allocs):
        # >= 75% of frees are of blocks at most a window old, >= 50% of
        # them in runs of 4+ with no allocation between (a scope ending),
        # and < 25% of requests too big for a region: bump regions that
        # empty as a whole.
        w.dst = PGO_ADAPT_ARENA
        w.rule = PGO_ADAPT_RULE_TOGETHER
    else:
        # Blocks are freed and made again, in varied sizes and no order:
        # keep the freed ones by size class for the next request.
        w.dst = PGO_ADAPT_CACHE
        w.rule = PGO_ADAPT_RULE_REUSED
    w.dst_slab = <uint32_t>(w.modal_size if w.dst == PGO_ADAPT_SLAB else 0)


cdef void _switch(pgo_adaptive_t* a, pgo_adapt_window_t* w) noexcept nogil:
    cdef size_t s = a.arena_seg
    if a.backend == PGO_ADAPT_CACHE and w.dst != PGO_ADAPT_CACHE:
        _cache_trim(a)                  # nothing will ask for them now
    if a.backend == PGO_ADAPT_ARENA and w.dst != PGO_ADAPT_ARENA and s and a.seg_live[s - 1] == 0:
        _seg_release(a, s - 1)
        a.arena_seg = 0
    a.backend = w.dst
    if w.dst == PGO_ADAPT_SLAB:
        a.slab_k = w.modal_size // 16
    a.switches += 1
    a.history[a.nhistory % PGO_ADAPT_HISTORY] = w[0]
    a.nhistory += 1
    a.pending = -1


cdef void _window_end(pgo_adaptive_t* a) noexcept nogil:
    cdef pgo_adapt_window_t w
    cdef size_t k, best = 0
    cdef uint64_t top = 0
    cdef bint same
    for k in range(1, <size_t>PGO_ADAPT_SLAB_CLASSES):
        if a.hist[k] > top:
            top = a.hist[k]
            best = k
    a.windows += 1
    memset(&w, 0, sizeof(w))
    w.window = a.windows
    w.allocs = a.w_allocs
    w.frees = a.w_frees
    w.modal = top
    w.modal_size = best * 16
    w.young = a.w_young
    w.together = a.w_together
    w.large = a.w_large
    w.fallback = a.w_fallback
    w.src = <uint8_t>a.backend
    w.src_slab = <uint32_t>(a.slab_k * 16 if a.backend == PGO_ADAPT_SLAB else 0)
    _vote(&w)
    a.last = w
    if a.fixed != PGO_ADAPT_AUTO:
        if a.fixed == PGO_ADAPT_SLAB and best:
            a.slab_k = best             # a fixed slab follows the dominant size
    else:
        same = w.dst == a.backend and (w.dst != PGO_ADAPT_SLAB or best == a.slab_k)
        if same:
            a.pending = -1
        elif (a.windows == 1 or w.fallback * 2 >= w.allocs
              or (w.dst == a.pending and (w.dst != PGO_ADAPT_SLAB or best == a.pending_k))):
            # Two windows in a row, or clear evidence: the backend in use
            # left half the window's requests to malloc (a slab whose size
            # is gone, an arena asked for big blocks), so waiting costs.
            _switch(a, &w)
        else:
            a.pending = w.dst
            a.pending_k = best
    a.w_allocs = a.w_frees = a.w_young = a.w_together = a.w_large = a.w_fallback = 0
    memset(a.hist, 0, sizeof(a.hist))


# -- allocation and free ----------------------------------------------------------------------

cdef int _alloc_unlocked(pgo_adaptive_t* a, size_t n, bint py, void** out) noexcept nogil:
    cdef int b = a.backend, err = PGO_ERR_NOMEM
    cdef size_t k = _slab_k(n) if n <= PGO_ADAPT_SLAB_MAX else 0, fp
    cdef bint fell = False
    cdef void* p = NULL
    if n > MAX_REQUEST:
        a.stats.failed += 1
        return PGO_ERR_TOO_BIG
    if b == PGO_ADAPT_SLAB:
        if a.slab_k == 0:
            a.slab_k = k                # a fixed slab before its first window
        if k and (k == a.slab_k or a.slab_free[k] != NULL):
            err = _slab_alloc(a, k, &p)
        else:
            b = PGO_ADAPT_SYSTEM
    elif b == PGO_ADAPT_ARENA:
        if n <= PGO_ADAPT_ARENA_MAX:
            err = _arena_alloc(a, n, &p)
        else:
            b = PGO_ADAPT_SYSTEM
    elif b == PGO_ADAPT_CACHE:
        if n + PGO_CANARY <= CACHE_MAX:
            err = _cache_alloc(a, n, &p)
        else:
            b = PGO_ADAPT_SYSTEM
    if b == PGO_ADAPT_SYSTEM or (err != PGO_OK and b != PGO_ADAPT_CACHE):
        # malloc serves what the backend does not, and what no segment is
        # left for (max_bytes is counted in bytes, a segment is 1 MiB).
        fell = b != PGO_ADAPT_SYSTEM or a.backend != PGO_ADAPT_SYSTEM
        b = PGO_ADAPT_SYSTEM
        err = _malloc_block(a, PGO_ADAPT_HEADER + n + PGO_CANARY, &p)
    if err != PGO_OK:
        a.stats.failed += 1
        return err
    _h_set(a, p, n, b, py)
    pgo_vg_alloc(a, p, n + PGO_CANARY)
    if PGO_DEBUG_FILL:
        memset(p, PGO_FILL_ALLOC, n + PGO_CANARY)
    fp = _footprint(b, n)
    a.stats.allocs += 1
    a.stats.requested += n
    a.stats.lost += fp - n
    a.stats.in_use += fp
    if a.stats.in_use > a.stats.peak:
        a.stats.peak = a.stats.in_use
    a.live_count += 1
    a.by_backend[b] += 1
    # The window's counters; its end decides for the next request.
    if a.w_run:
        if a.w_run >= BURST_RUN:
            a.w_together += a.w_run
        a.w_run = 0
    a.w_allocs += 1
    a.w_fallback += fell
    if k:
        a.hist[k] += 1
    elif n > PGO_ADAPT_ARENA_MAX:
        a.w_large += 1
    if a.w_allocs >= a.window:
        _window_end(a)
    out[0] = p
    return PGO_OK


cdef int _free_unlocked(pgo_adaptive_t* a, void* p, bint from_python) noexcept nogil:
    cdef size_t s, n
    cdef uint64_t info
    cdef int b, err
    if p == NULL:
        return PGO_OK
    err = _find(a, p, &s)
    if err != PGO_OK:
        return err
    info = _hdr(p).info
    if ((info >> 4) & F_PY) != 0 and not from_python:
        return PGO_ERR_PY_OWNED
    if ((info >> 4) & F_PY) == 0 and from_python:
        return PGO_ERR_PY_OWNED         # numpy's handler giving back a C-level block
    n = _h_size(info)
    b = _h_backend(info)
    if PGO_CANARY and not from_python and not pgo_canary_ok(<char*>p + n, PGO_CANARY):
        return PGO_ERR_OVERRUN
    if PGO_DEBUG_FILL:
        memset(p, PGO_FILL_FREE, n + PGO_CANARY)
    pgo_vg_free(a, p)
    a.stats.frees += 1
    a.stats.in_use -= _footprint(b, n)
    a.live_count -= 1
    a.w_frees += 1
    a.w_run += 1
    if ((a.windows + 0x10000 - ((info >> 8) & 0xffff)) & 0xffff) <= 1:
        a.w_young += 1
    if b == PGO_ADAPT_SLAB:
        _hdr(p).mark = <uint64_t><uintptr_t>a.slab_free[_slab_k(n)]
        _hdr(p).info = info & ~(<uint64_t>(F_LIVE | F_PY) << 4)
        a.slab_free[_slab_k(n)] = p
    elif b == PGO_ADAPT_ARENA:
        _arena_free(a, p, s)
    elif b == PGO_ADAPT_CACHE:
        _cache_free(a, p, n, s - SEG_REG)
    else:
        _malloc_release(a, p, PGO_ADAPT_HEADER + n + PGO_CANARY, s - SEG_REG)
    return PGO_OK


cdef int _reset_unlocked(void* state) noexcept nogil:
    # Every block goes, live C-level ones included (counted as freed).
    cdef pgo_adaptive_t* a = <pgo_adaptive_t*>state
    cdef size_t i, key
    pgo_vg_trim(a, a.base, 0)
    for i in range(a.reg_mask + 1):
        key = a.reg[i]
        if key != 0:
            pgo_sys_free(<char*>key - PGO_ADAPT_HEADER)
    memset(a.reg, 0, (a.reg_mask + 1) * sizeof(size_t))
    a.reg_count = 0
    a.malloced = 0
    memset(a.cache_free, 0, sizeof(a.cache_free))
    a.cached_bytes = 0
    a.cached_blocks = 0
    if PGO_DEBUG_FILL:
        # Live C-level blocks included; under valgrind the segments are
        # made writable for it (freed blocks are no-access) and closed after.
        pgo_vg_defined(a.base, a.nsegs * <size_t>SEG)
        memset(a.base, PGO_FILL_FREE, a.nsegs * <size_t>SEG)
        pgo_vg_noaccess(a.base, a.nsegs * <size_t>SEG)
    a.nfree_segs = 0
    for i in range(a.nsegs):
        a.seg_kind[a.nsegs - 1 - i] = 0
        a.seg_top[a.nsegs - 1 - i] = 0
        a.seg_live[a.nsegs - 1 - i] = 0
        a.free_segs[a.nfree_segs] = <uint32_t>(a.nsegs - 1 - i)
        a.nfree_segs += 1
    memset(a.slab_free, 0, sizeof(a.slab_free))
    memset(a.slab_carve, 0, sizeof(a.slab_carve))
    a.arena_seg = 0
    a.stats.frees += a.live_count
    a.live_count = 0
    a.stats.in_use = 0
    a.w_allocs = a.w_frees = a.w_young = a.w_together = a.w_large = a.w_fallback = 0
    a.w_run = 0
    memset(a.hist, 0, sizeof(a.hist))
    pgo_stats_reset(&a.stats)
    _sync_capacity(a)
    return PGO_OK


# -- the C API ------------------------------------------------------------------------------

cdef pgo_adaptive_t* adaptive_create(size_t window, size_t max_bytes, int fixed,
                                     bint threadsafe) except NULL nogil:
    cdef pgo_adaptive_t* a
    cdef size_t reserve, got = 0
    cdef timespec ts
    if window < PGO_ADAPT_MIN_WINDOW:
        with gil:
            raise ValueError(f"AdaptiveAllocator: window must be at least "
                             f"{PGO_ADAPT_MIN_WINDOW} allocations, got {window}")
    if fixed < 0 or fixed > PGO_ADAPT_AUTO:
        with gil:
            raise ValueError(f"AdaptiveAllocator: no backend number {fixed}")
    a = <pgo_adaptive_t*>pgo_sys_calloc(1, sizeof(pgo_adaptive_t))
    if a == NULL:
        pgo_raise(PGO_ERR_NOMEM, "AdaptiveAllocator", sizeof(pgo_adaptive_t), 0)
        return NULL
    reserve = DEFAULT_RESERVE
    if max_bytes and max_bytes < DEFAULT_RESERVE:
        reserve = (max_bytes + SEG - 1) & ~(<size_t>SEG - 1)     # whole segments
    a.base = pgo_sys_reserve(reserve, SEG, SEG, &got, &a.raw, &a.raw_len)
    if a.base == NULL:
        pgo_sys_free(a)
        pgo_raise(PGO_ERR_NOMEM, "AdaptiveAllocator (reserving address space; pass max_bytes "
                  "to reserve less)", SEG, 0)
        return NULL
    a.max_segs = got // SEG
    a.seg_kind = <uint8_t*>pgo_sys_calloc(a.max_segs, sizeof(uint8_t))
    a.seg_class = <uint16_t*>pgo_sys_calloc(a.max_segs, sizeof(uint16_t))
    a.seg_top = <uint32_t*>pgo_sys_calloc(a.max_segs, sizeof(uint32_t))
    a.seg_live = <uint32_t*>pgo_sys_calloc(a.max_segs, sizeof(uint32_t))
    a.free_segs = <uint32_t*>pgo_sys_calloc(a.max_segs, sizeof(uint32_t))
    a.reg = <size_t*>pgo_sys_calloc(FIRST_REG, sizeof(size_t))
    if (a.seg_kind == NULL or a.seg_class == NULL or a.seg_top == NULL or a.seg_live == NULL
            or a.free_segs == NULL or a.reg == NULL):
        _free_tables(a)
        pgo_raise(PGO_ERR_NOMEM, "AdaptiveAllocator", a.max_segs * 15 + FIRST_REG * 8, 0)
        return NULL
    a.reg_mask = FIRST_REG - 1
    a.reg_shift = 64 - 10               # log2(FIRST_REG) bits of the page's hash
    a.window = window
    a.max_bytes = max_bytes
    a.max_cached = DEFAULT_MAX_CACHED
    if max_bytes and max_bytes // 4 < a.max_cached:
        a.max_cached = max_bytes // 4
    a.fixed = fixed
    # Where it starts: the arena (no system call while a region has room);
    # the first window's vote is taken at once.
    a.backend = PGO_ADAPT_ARENA if fixed == PGO_ADAPT_AUTO else fixed
    a.pending = -1
    clock_gettime(CLOCK_MONOTONIC, &ts)
    a.cookie = _mix(<uint64_t><uintptr_t>a ^ (<uint64_t>ts.tv_nsec << 20)
                    ^ <uint64_t>ts.tv_sec) | 1
    a.lo = <size_t>a.base
    a.hi = <size_t>a.base + a.max_segs * <size_t>SEG
    pgo_lock_init(&a.lock, threadsafe)
    pgo_vg_create(a)
    return a


cdef void _free_tables(pgo_adaptive_t* a) noexcept nogil:
    pgo_sys_free(a.seg_kind)
    pgo_sys_free(a.seg_class)
    pgo_sys_free(a.seg_top)
    pgo_sys_free(a.seg_live)
    pgo_sys_free(a.free_segs)
    pgo_sys_free(a.reg)
    pgo_sys_unreserve(a.raw, a.raw_len)
    pgo_sys_free(a)


cdef void adaptive_destroy(pgo_adaptive_t* a) noexcept nogil:
    cdef size_t i
    if a == NULL:
        return
    pgo_vg_destroy(a)
    pgo_lock_destroy(&a.lock)
    for i in range(a.reg_mask + 1):
        if a.reg[i] != 0:
            pgo_sys_free(<char*>a.reg[i] - PGO_ADAPT_HEADER)
    _free_tables(a)


cdef int _alloc_c(void* state, size_t n, size_t align, void** out) noexcept nogil:
    return _alloc_unlocked(<pgo_adaptive_t*>state, n, False, out)


cdef int _free_c(void* state, void* p) noexcept nogil:
    # A C-level free: a pointer into a malloc'd block is told from a foreign
    # one by a scan, on this (raising) path only.
    cdef pgo_adaptive_t* a = <pgo_adaptive_t*>state
    cdef int err = _free_unlocked(a, p, False)
    if err == PGO_ERR_FOREIGN and _inside_malloced(a, p):
        err = PGO_ERR_INTERIOR
    return err


cdef void* adaptive_alloc(pgo_adaptive_t* a, size_t n) except NULL nogil:
    return pgo_locked_alloc(&a.lock, &a.stats, _alloc_c, a, n, PGO_ADAPT_ALIGN,
                            "AdaptiveAllocator")


cdef void* adaptive_calloc(pgo_adaptive_t* a, size_t count, size_t size) except NULL nogil:
    cdef size_t n
    cdef void* p
    if pgo_mul_overflow(count, size, &n):
        with gil:
            raise MemoryError(f"AdaptiveAllocator: {count:,} x {size:,} bytes overflows")
    p = pgo_locked_alloc(&a.lock, &a.stats, _alloc_c, a, n, PGO_ADAPT_ALIGN, "AdaptiveAllocator")
    if p != NULL:
        memset(p, 0, n)
    return p


cdef int adaptive_free(pgo_adaptive_t* a, void* p) except -1 nogil:
    return pgo_locked_free(&a.lock, &a.stats, _free_c, a, p, "AdaptiveAllocator")


cdef int adaptive_reset(pgo_adaptive_t* a) except -1 nogil:
    return pgo_locked_reset(&a.lock, &a.stats, _reset_unlocked, a, "AdaptiveAllocator")


cdef size_t _span_unlocked(void* state, void* p) noexcept nogil:
    cdef pgo_adaptive_t* a = <pgo_adaptive_t*>state
    cdef size_t s, n
    if _find(a, p, &s) != PGO_OK:
        return 0
    n = _h_size(_hdr(p).info)
    return n if n else 1


cdef size_t adaptive_size(pgo_adaptive_t* a, void* p) noexcept nogil:
    cdef size_t s, n = 0
    pgo_lock(&a.lock, &a.stats)
    if _find(a, p, &s) == PGO_OK:
        n = _h_size(_hdr(p).info)
    pgo_unlock(&a.lock)
    return n


cdef int adaptive_backend(pgo_adaptive_t* a) noexcept nogil:
    return a.backend


cdef const char* adaptive_backend_name(int backend) noexcept nogil:
    if backend == PGO_ADAPT_SLAB:
        return "slab"
    if backend == PGO_ADAPT_ARENA:
        return "arena"
    if backend == PGO_ADAPT_CACHE:
        return "cache"
    return "system"


# -- numpy's handler (see pgo_backend_t) ------------------------------------------------------
# Arrays' blocks are Python-owned, as a Block's is: C code cannot free them
# and reset() refuses while they are alive.

cdef int _be_take(void* state, size_t n, size_t align, void** out) noexcept nogil:
    return _alloc_unlocked(<pgo_adaptive_t*>state, n, True, out)


cdef bint _be_holds(void* state, void* p) noexcept nogil:
    # The bounds only (they grow as malloc'd blocks come); give tells the
    # rest exactly, from the segment tables and the hash set, and answers
    # PGO_ERR_FOREIGN for another heap block that lies between ours.
    cdef pgo_adaptive_t* a = <pgo_adaptive_t*>state
    return pgo_atomic_load(&a.lo) <= <size_t>p < pgo_atomic_load(&a.hi)


cdef int _be_give(void* state, void* p) noexcept nogil:
    return _free_unlocked(<pgo_adaptive_t*>state, p, True)


# -- the bench / test workload ----------------------------------------------------------------
# Four phases, each meant for one backend, run through the C API (or libc's
# malloc and free, for the baseline): `ops` allocations each.  Every block
# gets a stamp in its first 8 bytes, checked when it is freed.

cdef enum:
    POOL_SLAB = 256
    POOL_CACHE = 1024
    SCOPE = 8

ctypedef struct _kernel_t:
    pgo_adaptive_t* a         # NULL: libc malloc
    uint64_t rng
    uint64_t mismatches


@cython.overflowcheck(False)
cdef inline uint64_t _rand(_kernel_t* k) noexcept nogil:
    # xorshift64*: the multiply wraps on purpose.
    k.rng ^= k.rng >> 12
    k.rng ^= k.rng << 25
    k.rng ^= k.rng >> 27
    return (k.rng * 0x2545F4914F6CDD1DULL) >> 16


cdef void* _k_alloc(_kernel_t* k, size_t n) except NULL nogil:
    cdef void* p
    if k.a != NULL:
        p = adaptive_alloc(k.a, n)
    else:
        p = malloc(n)
        if p == NULL:
            pgo_raise(PGO_ERR_NOMEM, "malloc", n, 0)
            return NULL
    (<uint64_t*>p)[0] = <uint64_t><uintptr_t>p ^ 0x0123456789ABCDEFULL
    return p


cdef int _k_free(_kernel_t* k, void* p) except -1 nogil:
    if (<uint64_t*>p)[0] != (<uint64_t><uintptr_t>p ^ 0x0123456789ABCDEFULL):
        k.mismatches += 1
    if k.a == NULL:
        free(p)
        return 0
    return adaptive_free(k.a, p)


cdef int _phase(_kernel_t* k, int which, size_t ops, void** ptrs) except -1 nogil:
    # ptrs: room for max(ops, POOL_CACHE) pointers.
    cdef size_t i, j, pool
    if which == 0:                      # churn of one 256-byte size
        pool = POOL_SLAB
        for i in range(pool):
            ptrs[i] = _k_alloc(k, 256)
        for j in range(pool, ops):
            i = _rand(k) % pool
            _k_free(k, ptrs[i])
            ptrs[i] = _k_alloc(k, 256)
        for i in range(pool):
            _k_free(k, ptrs[i])
    elif which == 1:                    # scoped temporaries, 4-64 KiB, freed together
        for j in range(ops // SCOPE):
            for i in range(<size_t>SCOPE):
                ptrs[i] = _k_alloc(k, 4096 + _rand(k) % 61441)
            for i in range(<size_t>SCOPE):
                _k_free(k, ptrs[i])
    elif which == 2:                    # long-lived, 16-512 B, freed at the end
        for i in range(ops):
            ptrs[i] = _k_alloc(k, 16 + _rand(k) % 497)
        for i in range(ops):
            _k_free(k, ptrs[i])
    else:                               # varied sizes, 64 B - 16 KiB, freed in no order
        pool = POOL_CACHE
        for i in range(pool):
            ptrs[i] = _k_alloc(k, 64 + _rand(k) % 16321)
        for j in range(pool, ops):
            i = _rand(k) % pool
            _k_free(k, ptrs[i])
            ptrs[i] = _k_alloc(k, 64 + _rand(k) % 16321)
        for i in range(pool):
            _k_free(k, ptrs[i])
    return 0


cdef inline double _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1e9 + ts.tv_nsec


def _run_phases(AdaptiveAllocator a, size_t ops=100000, uint64_t seed=1, phases=PHASES):
    """Test and bench helper: the phased workload at the C level, through
    ``a``'s C API (``a=None``: libc malloc and free).  Each phase (of
    ``PHASES``, in that order; ``phases``: a subset) makes ``ops``
    allocations (at least 1024) and frees them all.  Returns
    ``{"phases": [(name, allocations, ns), ...], "mismatches": n}``
    (``mismatches``: blocks whose stamp, written when made, had changed
    by the time they were freed)."""
    cdef _kernel_t k
    cdef int which
    cdef double t0
    cdef void** ptrs
    if ops < POOL_CACHE:
        raise ValueError(f"ops must be at least {POOL_CACHE}")
    k.a = a.a if a is not None else NULL
    k.rng = _mix(seed) | 1
    k.mismatches = 0
    ptrs = <void**>malloc(ops * sizeof(void*))
    if ptrs == NULL:
        raise MemoryError(f"cannot allocate {ops * sizeof(void*):,} bytes")
    out = []
    try:
        for which in range(4):
            if PHASES[which] not in phases:
                continue
            with nogil:
                t0 = _now_ns()
                _phase(&k, which, ops, ptrs)
                t0 = _now_ns() - t0
            out.append((PHASES[which], ops, t0))
    finally:
        free(ptrs)
    return {"phases": out, "mismatches": k.mismatches}


# -- the Python class ---------------------------------------------------------------------------

def _share(x, of):
    return f"{x / of:.0%}" if of else "0%"


def _reason(dict w):
    """What a window's counts said, in words, with the numbers."""
    allocs, frees = w["allocations"], w["frees"]
    rule = w["rule"]
    if rule == "one size":
        why = (f"{_share(w['modal'], allocs)} of {allocs} requests were {w['modal_size']}-byte "
               f"slots (>= 80%): slab")
    elif rule == "few frees":
        why = f"{frees} frees for {allocs} allocations (< 25%): long-lived blocks, to malloc"
    elif rule == "freed together":
        why = (f"{_share(w['short_lived'], frees)} of {frees} frees short-lived (>= 75%), "
               f"{_share(w['freed_together'], frees)} freed together (>= 50%), "
               f"{_share(w['large'], allocs)} of requests over 256 KiB (< 25%): arena")
    else:
        why = (f"varied sizes (the most common slot {_share(w['modal'], allocs)}), "
               f"{frees} frees for {allocs} allocations, {_share(w['short_lived'], frees)} "
               f"short-lived, {_share(w['freed_together'], frees)} freed together: cache")
    if w["fallback"] * 2 >= allocs and w["from"] != "system":
        why += (f"; {w['from']} left {_share(w['fallback'], allocs)} of requests to malloc "
                f"(>= 50%: enough to switch at once)")
    return why


cdef dict _window_dict(pgo_adapt_window_t* w):
    d = {"window": w.window, "from": BACKENDS[w.src], "to": BACKENDS[w.dst],
         "slab_size": w.dst_slab or None, "from_slab_size": w.src_slab or None,
         "rule": _RULES.get(w.rule, "?"), "allocations": w.allocs, "frees": w.frees,
         "modal": w.modal, "modal_size": w.modal_size, "short_lived": w.young,
         "freed_together": w.together, "large": w.large, "fallback": w.fallback}
    d["reason"] = _reason(d)
    return d


cdef class AdaptiveAllocator(Allocator):
    """Any size, any pattern: watches its own requests and switches its
    backend (slab, arena, cache or malloc) as the program's phases change.

    Args:
        window: allocations per decision (at least 64).  At the end of each
            window its counts vote for a backend; two windows in a row
            voting for the same new one make the switch.
        max_bytes: most bytes taken from the system (segments and malloc'd
            blocks together), 0 for no limit; over it, MemoryError.
        fixed: keep one backend ("slab", "arena", "cache" or "system")
            instead of choosing: for comparisons, or a pattern known in
            advance.  A fixed slab still follows the dominant size.
        threadsafe: take a mutex on every operation (needed behind a
            Router: numpy allocates and frees from any thread).

    Blocks are aligned to 16 bytes (ValueError for more).  A block made
    before a switch stays valid and goes back to the backend that made it.
    ``stats()`` adds ``backend``, ``switches``, ``allocations_by_backend``,
    ``decisions`` (the last 32 switches: window, from, to, rule, reason and
    the counts), ``last_window`` and the backends' own counters.
    """

    def __cinit__(self, size_t window=4096, *, size_t max_bytes=0, object fixed=None,
                  bint threadsafe=False):
        cdef int f = PGO_ADAPT_AUTO
        if fixed is not None:
            if fixed not in BACKENDS:
                raise ValueError(f"fixed must be None or one of {', '.join(BACKENDS)}; "
                                 f"got {fixed!r}")
            f = BACKENDS.index(fixed)
        self.a = adaptive_create(window, max_bytes, f, threadsafe)
        pgo_backend_init(&self._be, self.a, &self.a.lock, &self.a.stats,
                         _be_take, NULL, MAX_REQUEST, _be_holds, _be_give, _span_unlocked,
                         &self.a.lo, &self.a.hi)
        self._bind(<pgo_destroy_fn>adaptive_destroy, 1, PGO_ADAPT_ALIGN)

    @property
    def backend(self):
        """The backend new requests go to now."""
        return BACKENDS[self.a.backend]

    @property
    def window(self):
        return self.a.window

    @property
    def align(self):
        """The alignment of every block, and the most it serves (16)."""
        return PGO_ADAPT_ALIGN

    @property
    def fixed(self):
        return None if self.a.fixed == PGO_ADAPT_AUTO else BACKENDS[self.a.fixed]

    @property
    def max_bytes(self):
        return self.a.max_bytes

    # -- the Allocator hooks -------------------------------------------------------------
    cdef int _c_alloc(self, size_t nbytes, size_t align, void** out, size_t* token) noexcept:
        if align > PGO_ADAPT_ALIGN:
            self.a.stats.failed += 1
            return PGO_ERR_ALIGN
        return _alloc_unlocked(self.a, nbytes, True, out)

    cdef int _c_free(self, Block b) noexcept:
        return _free_unlocked(self.a, b.ptr, True)

    cdef void _c_dead(self, Block b) noexcept:
        _free_unlocked(self.a, b.ptr, True)

    cdef int _c_reset(self) noexcept:
        return _reset_unlocked(self.a)

    cdef size_t _canary_len(self, Block b) noexcept:
        return PGO_CANARY

    cdef object _where(self, char* p):
        # The block's place, found under the lock, put in words after it.
        cdef pgo_adaptive_t* a = self.a
        cdef uintptr_t x = <uintptr_t>p, b = <uintptr_t>a.base
        cdef size_t s = 0, within = 0, k = 0, n = 0
        cdef int kind = -1
        pgo_lock_gil_held(self._lock, self._st)
        if x >= b and x - b < a.nsegs * <size_t>SEG:
            s = (x - b) >> PGO_ADAPT_SEG_SHIFT
            within = (x - b) & (SEG - 1)
            kind = a.seg_kind[s]
            k = a.seg_class[s]
        elif _reg_find(a, x) != SIZE_MAX:
            kind = 8 + _h_backend(_hdr(p).info)
            n = _h_size(_hdr(p).info)
        pgo_unlock(self._lock)
        if kind == PGO_ADAPT_SLAB:
            slot = (within - PGO_ADAPT_HEADER) // _slab_stride[k] if within >= 16 else 0
            return f"slab segment {s} slot {slot}, {16 * k}-byte slots"
        if kind == PGO_ADAPT_ARENA:
            return f"arena region {s} offset {within}"
        if kind == 0:
            return f"segment {s} offset {within}, unused now"
        if kind == 8 + PGO_ADAPT_CACHE:
            return f"cache block {x:#x}, {_csize[_cclass(n + PGO_CANARY)]}-byte class"
        if kind == 8 + PGO_ADAPT_SYSTEM:
            return f"system block {x:#x}"
        return f"address {x:#x}"

    def _raise_alloc(self, int code, size_t nbytes, size_t align):
        if code == PGO_ERR_ALIGN:
            raise ValueError(f"{self!r} aligns blocks to {PGO_ADAPT_ALIGN} bytes; alignment "
                             f"{align} requested")
        if code == PGO_ERR_TOO_BIG:
            raise MemoryError(f"{self!r}: {nbytes:,} bytes is more than it serves "
                              f"({MAX_REQUEST:,})")
        Allocator._raise_alloc(self, code, nbytes, align)

    def _describe_nomem(self, size_t nbytes):
        limit = (f"max_bytes={self.a.max_bytes:,} reached" if self.a.max_bytes
                 else "the system refused more")
        return (f"{self!r}: cannot allocate {nbytes:,} bytes: {self.a.stats.capacity:,} bytes "
                f"from the system, {limit}")

    def _extra_stats(self):
        # Copied out under the mutex and turned into Python objects after:
        # making objects can run the GC, whose finalizers may free arrays
        # into this allocator (and take the mutex).
        cdef pgo_adaptive_t* a = self.a
        cdef pgo_adapt_window_t ring[PGO_ADAPT_HISTORY]
        cdef pgo_adapt_window_t last
        cdef uint64_t by[PGO_ADAPT_NBACKENDS]
        cdef uint64_t nhistory, switches, windows, hits, misses
        cdef size_t nsegs, nfree, cached, cblocks, malloced, nreg, slab_k
        cdef int backend, pending
        cdef Py_ssize_t i, first
        pgo_lock_gil_held(self._lock, self._st)
        memcpy(ring, a.history, sizeof(ring))
        memcpy(by, a.by_backend, sizeof(by))
        last = a.last
        nhistory, switches, windows = a.nhistory, a.switches, a.windows
        hits, misses = a.cache_hits, a.cache_misses
        nsegs, nfree, cached, cblocks = a.nsegs, a.nfree_segs, a.cached_bytes, a.cached_blocks
        malloced, nreg, slab_k = a.malloced, a.reg_count, a.slab_k
        backend, pending = a.backend, a.pending
        pgo_unlock(self._lock)
        first = nhistory - PGO_ADAPT_HISTORY if nhistory > PGO_ADAPT_HISTORY else 0
        decisions = []
        for i in range(first, <Py_ssize_t>nhistory):
            decisions.append(_window_dict(&ring[i % PGO_ADAPT_HISTORY]))
        by_backend = {}
        for i in range(PGO_ADAPT_NBACKENDS):
            by_backend[BACKENDS[i]] = by[i]
        return {"backend": BACKENDS[backend], "fixed": self.fixed, "window": a.window,
                "windows": windows, "switches": switches,
                "slab_size": 16 * slab_k if backend == PGO_ADAPT_SLAB else None,
                "pending": BACKENDS[pending] if pending >= 0 else None,
                "allocations_by_backend": by_backend,
                "decisions": decisions,
                "last_window": _window_dict(&last) if windows else None,
                "segments": nsegs, "free_segments": nfree, "segment_bytes": SEG,
                "cached_bytes": cached, "cached_blocks": cblocks,
                "max_cached_bytes": a.max_cached, "cache_hits": hits, "cache_misses": misses,
                "malloced_bytes": malloced, "malloced_blocks": nreg,
                "max_bytes": a.max_bytes, "align": PGO_ADAPT_ALIGN}

    def _free_address(self, size_t address):
        """Test-only: run the C-level free on a raw address."""
        cdef int code
        pgo_lock_gil_held(self._lock, self._st)
        code = _free_c(self.a, <void*>address)
        pgo_unlock(self._lock)
        if code == PGO_ERR_DOUBLE_FREE:
            raise AllocatorError(f"{self!r}: double free of the block at "
                                 f"{self._where(<char*>address)}")
        if code == PGO_ERR_OVERRUN:
            raise AllocatorError(f"{self!r}: something wrote past the end of the block at "
                                 f"{self._where(<char*>address)}")
        if code != PGO_OK:
            pgo_raise_at(code, "AdaptiveAllocator", <void*>address)

    def _c_alloc_address(self, size_t nbytes):
        """Test-only: a C-level allocation (not Python-owned); its address."""
        cdef void* p
        with nogil:
            p = adaptive_alloc(self.a, nbytes)
        return <uintptr_t>p

    def _c_calloc_address(self, size_t count, size_t size):
        """Test-only: a C-level zeroed allocation of count * size bytes."""
        cdef void* p
        with nogil:
            p = adaptive_calloc(self.a, count, size)
        return <uintptr_t>p

    def __repr__(self):
        fixed = f" fixed={self.fixed}" if self.a.fixed != PGO_ADAPT_AUTO else ""
        return (f"<AdaptiveAllocator backend={BACKENDS[self.a.backend]} window={self.a.window}"
                f"{fixed} switches={self.a.switches} threadsafe={bool(self.a.lock.enabled)}>")
