"""SlabAllocator: fixed-size blocks with O(1) alloc and free.

Design: memory comes in slabs (the first of ``slots_per_slab`` blocks, each
next one twice as big, up to 2**24 slots) so the number of slabs stays
logarithmic in the allocator's size and a free's binary search is short.
The free list is a stack of (slab, slot) codes outside the blocks; the
bitmap of handed-out slots makes a double free an error, not a corrupted
free list.  The common paths are inline in ``slab.pxd``; the complete ones
(locking, growth, errors, the test build's fill and canary) are here.

Ownership: the ``pgo_slab_t``, its slab table, bitmaps, code stack and slabs
belong to the SlabAllocator object, or to the C caller of ``slab_create``.
"""

from libc.stdint cimport uint64_t, uintptr_t
from libc.string cimport memset

from pgo._core._base cimport Allocator, Block, pgo_fail, pgo_fail_null, pgo_raise
from pgo._core._memory cimport pgo_sys_alloc, pgo_sys_calloc, pgo_sys_free, pgo_sys_realloc
from pgo._core._typedefs cimport (
    PGO_CANARY, PGO_DEBUG_FILL, PGO_ERR_ALIGN, PGO_ERR_DOUBLE_FREE,
    PGO_ERR_FOREIGN, PGO_ERR_INTERIOR, PGO_ERR_LIVE, PGO_ERR_NOMEM,
    PGO_ERR_OVERFLOW, PGO_ERR_OVERRUN, PGO_ERR_PY_OWNED, PGO_ERR_TOO_BIG,
    PGO_FILL_ALLOC, PGO_FILL_FREE, PGO_OK, pgo_bad_align, pgo_canary_ok,
    pgo_lock, pgo_lock_destroy, pgo_lock_gil_held, pgo_lock_init,
    pgo_mul_overflow, pgo_unlock,
)

from pgo._errors import AllocatorError

cdef enum:
    MAX_SLAB_SLOTS = 16777216   # 2**24; literals only: overflowcheck mis-compiles constant expressions here
    DEFAULT_SLAB_BYTES = 262144


cdef inline size_t _round_up(size_t x, size_t align) noexcept nogil:
    return (x + align - 1) & ~(align - 1)


cdef inline void _slab_update_fast(pgo_slab_t* s) noexcept nogil:
    s.fast = (not s.lock.enabled and s.nsegs == 1 and s.stride_shift != 0
              and not PGO_DEBUG_FILL)


cdef pgo_slab_t* slab_create(size_t block_size, size_t align, size_t first_slots,
                             size_t max_bytes, bint threadsafe) except NULL nogil:
    cdef pgo_slab_t* s
    if pgo_bad_align(align):
        pgo_raise(PGO_ERR_ALIGN, "SlabAllocator", block_size, align)
        return NULL
    if block_size == 0 or block_size > (<size_t>1 << 40):
        pgo_raise(PGO_ERR_TOO_BIG, "SlabAllocator", block_size, align)
        return NULL
    s = <pgo_slab_t*>pgo_sys_calloc(1, sizeof(pgo_slab_t))
    if s == NULL:
        pgo_raise(PGO_ERR_NOMEM, "SlabAllocator", sizeof(pgo_slab_t), 0)
        return NULL
    s.block_size = block_size
    s.align = align
    s.stride = _round_up(block_size + PGO_CANARY, align)
    if s.stride & (s.stride - 1) == 0:
        while (<size_t>1 << s.stride_shift) < s.stride:
            s.stride_shift += 1
    if first_slots == 0:
        first_slots = DEFAULT_SLAB_BYTES // s.stride
    if first_slots < 1:
        first_slots = 1
    if first_slots > MAX_SLAB_SLOTS:
        first_slots = MAX_SLAB_SLOTS
    s.next_slots = first_slots
    s.max_bytes = max_bytes
    pgo_lock_init(&s.lock, threadsafe)
    _slab_update_fast(s)
    return s


cdef void slab_destroy(pgo_slab_t* s) noexcept nogil:
    cdef size_t i
    if s != NULL:
        pgo_lock_destroy(&s.lock)
        for i in range(s.nsegs):
            pgo_sys_free(s.segs[i].base)
            pgo_sys_free(s.segs[i].bitmap)
        pgo_sys_free(s.segs)
        pgo_sys_free(s.order)
        pgo_sys_free(s.free_codes)
        pgo_sys_free(s)


cdef int _slab_grow(pgo_slab_t* s) noexcept nogil:
    cdef size_t nslots = s.next_slots, nbytes, total, i, pos, words
    cdef char* base
    cdef uint64_t* bitmap
    cdef pgo_slab_seg_t* segs
    cdef size_t* order
    cdef uint64_t* codes
    if s.max_bytes:
        # Shrink the slab to what the limit still allows, down to one slot.
        if s.stats.capacity >= s.max_bytes or s.max_bytes - s.stats.capacity < s.stride:
            return PGO_ERR_NOMEM
        if nslots > (s.max_bytes - s.stats.capacity) // s.stride:
            nslots = (s.max_bytes - s.stats.capacity) // s.stride
    if pgo_mul_overflow(nslots, s.stride, &nbytes):
        return PGO_ERR_OVERFLOW
    if s.nsegs >= 0xffffffffu:
        return PGO_ERR_NOMEM
    total = s.cap_free + nslots
    # Grow every table first, so that a failure leaves the allocator as it was.
    if s.nsegs == s.cap_segs:
        segs = <pgo_slab_seg_t*>pgo_sys_realloc(s.segs, s.cap_segs * 2 + 4, sizeof(pgo_slab_seg_t))
        if segs == NULL:
            return PGO_ERR_NOMEM
        s.segs = segs
        order = <size_t*>pgo_sys_realloc(s.order, s.cap_segs * 2 + 4, sizeof(size_t))
        if order == NULL:
            return PGO_ERR_NOMEM
        s.order = order
        s.cap_segs = s.cap_segs * 2 + 4
    codes = <uint64_t*>pgo_sys_realloc(s.free_codes, total, sizeof(uint64_t))
    if codes == NULL:
        return PGO_ERR_NOMEM
    s.free_codes = codes
    # One allocation holds both bitmaps: handed out, then owned by Python.
    words = (nslots + 63) // 64
    bitmap = <uint64_t*>pgo_sys_calloc(2 * words, sizeof(uint64_t))
    if bitmap == NULL:
        return PGO_ERR_NOMEM
    base = <char*>pgo_sys_alloc(nbytes, s.align if s.align > 64 else 64)
    if base == NULL:
        pgo_sys_free(bitmap)
        return PGO_ERR_NOMEM
    if PGO_DEBUG_FILL:
        memset(base, PGO_FILL_FREE, nbytes)
    s.segs[s.nsegs].base = base
    s.segs[s.nsegs].bitmap = bitmap
    s.segs[s.nsegs].pybits = bitmap + words
    s.segs[s.nsegs].nslots = nslots
    pos = s.nsegs
    while pos > 0 and <uintptr_t>s.segs[s.order[pos - 1]].base > <uintptr_t>base:
        s.order[pos] = s.order[pos - 1]
        pos -= 1
    s.order[pos] = s.nsegs
    # Highest slot pushed first, so slot 0 is handed out first.
    for i in range(nslots):
        s.free_codes[s.nfree] = ((<uint64_t>s.nsegs) << 32) | (nslots - 1 - i)
        s.nfree += 1
    s.cap_free = total
    s.nsegs += 1
    s.stats.capacity += nbytes
    if s.next_slots < MAX_SLAB_SLOTS:
        s.next_slots *= 2
    _slab_update_fast(s)
    return PGO_OK


cdef int _slab_alloc_unlocked(pgo_slab_t* s, void** out, uint64_t* code_out) noexcept nogil:
    # The complete allocation of one slot; the caller adds to `requested`.
    cdef uint64_t code
    cdef pgo_slab_seg_t* seg
    cdef size_t slot
    cdef int err
    if s.nfree == 0:
        err = _slab_grow(s)
        if err != PGO_OK:
            s.stats.failed += 1
            return err
    s.nfree -= 1
    code = s.free_codes[s.nfree]
    seg = &s.segs[code >> 32]
    slot = <size_t>(code & 0xffffffffu)
    seg.bitmap[slot >> 6] |= (<uint64_t>1) << (slot & 63)
    out[0] = seg.base + slot * s.stride
    code_out[0] = code
    s.stats.allocs += 1
    if s.cap_free - s.nfree > s.peak_slots:
        s.peak_slots = s.cap_free - s.nfree
    if PGO_DEBUG_FILL:
        memset(out[0], PGO_FILL_ALLOC, s.stride)
    return PGO_OK


cdef int _slab_locate(pgo_slab_t* s, void* p, uint64_t* code_out) noexcept nogil:
    # Binary search for the last slab starting at or below p.
    cdef uintptr_t x = <uintptr_t>p
    cdef size_t lo = 0, hi = s.nsegs, mid, off, slot
    cdef pgo_slab_seg_t* seg
    if s.nsegs == 0:
        return PGO_ERR_FOREIGN
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if <uintptr_t>s.segs[s.order[mid]].base <= x:
            lo = mid
        else:
            hi = mid
    seg = &s.segs[s.order[lo]]
    if x < <uintptr_t>seg.base:
        return PGO_ERR_FOREIGN
    off = x - <uintptr_t>seg.base
    slot = off >> s.stride_shift if s.stride_shift else off // s.stride
    if slot >= seg.nslots:
        return PGO_ERR_FOREIGN
    if off - slot * s.stride:
        return PGO_ERR_INTERIOR
    code_out[0] = ((<uint64_t>s.order[lo]) << 32) | slot
    return PGO_OK


cdef int _slab_free_code(pgo_slab_t* s, uint64_t code, bint from_python) noexcept nogil:
    cdef pgo_slab_seg_t* seg = &s.segs[code >> 32]
    cdef size_t slot = <size_t>(code & 0xffffffffu)
    cdef uint64_t bit = (<uint64_t>1) << (slot & 63)
    if not (seg.bitmap[slot >> 6] & bit):
        return PGO_ERR_DOUBLE_FREE
    if seg.pybits[slot >> 6] & bit and not from_python:
        return PGO_ERR_PY_OWNED
    if PGO_CANARY and not from_python and not pgo_canary_ok(
            seg.base + slot * s.stride + s.block_size, s.stride - s.block_size):
        return PGO_ERR_OVERRUN
    seg.bitmap[slot >> 6] &= ~bit
    seg.pybits[slot >> 6] &= ~bit
    s.free_codes[s.nfree] = code
    s.nfree += 1
    s.stats.frees += 1
    if PGO_DEBUG_FILL:
        memset(seg.base + slot * s.stride, PGO_FILL_FREE, s.stride)
    return PGO_OK


cdef int _slab_free_unlocked(pgo_slab_t* s, void* p) noexcept nogil:
    cdef uint64_t code
    cdef int err
    if p == NULL:
        return PGO_OK
    err = _slab_locate(s, p, &code)
    if err != PGO_OK:
        return err
    return _slab_free_code(s, code, False)


cdef void* _slab_alloc_slow(pgo_slab_t* s) noexcept nogil:
    cdef void* p = NULL
    cdef uint64_t code
    cdef int err
    pgo_lock(&s.lock, &s.stats)
    err = _slab_alloc_unlocked(s, &p, &code)
    if err == PGO_OK:
        s.stats.requested += s.block_size
    pgo_unlock(&s.lock)
    if err != PGO_OK:
        return pgo_fail_null(err, "SlabAllocator", s.block_size, s.align)
    return p


cdef int _slab_free_slow(pgo_slab_t* s, void* p) noexcept nogil:
    cdef int err
    pgo_lock(&s.lock, &s.stats)
    err = _slab_free_unlocked(s, p)
    pgo_unlock(&s.lock)
    if err != PGO_OK:
        return pgo_fail(err, "SlabAllocator", 0, 0)
    return 0


cdef int _slab_reset_unlocked(pgo_slab_t* s) noexcept nogil:
    cdef size_t i, j, nslots
    if s.stats.live_blocks:
        return PGO_ERR_LIVE
    slab_sync_stats(s)
    s.stats.frees += s.cap_free - s.nfree
    s.nfree = 0
    # Rebuilt slab by slab from the last, so the first slab's slot 0 is on top.
    i = s.nsegs
    while i > 0:
        i -= 1
        nslots = s.segs[i].nslots
        memset(s.segs[i].bitmap, 0, 2 * ((nslots + 63) // 64) * sizeof(uint64_t))
        if PGO_DEBUG_FILL:
            memset(s.segs[i].base, PGO_FILL_FREE, nslots * s.stride)
        for j in range(nslots):
            s.free_codes[s.nfree] = ((<uint64_t>i) << 32) | (nslots - 1 - j)
            s.nfree += 1
    s.stats.resets += 1
    s.stats.requested = 0
    s.allocs_at_reset = s.stats.allocs
    return PGO_OK


cdef int slab_reset(pgo_slab_t* s) except -1 nogil:
    cdef int code
    pgo_lock(&s.lock, &s.stats)
    code = _slab_reset_unlocked(s)
    pgo_unlock(&s.lock)
    if code != PGO_OK:
        return pgo_raise(code, "SlabAllocator", 0, 0)
    return 0


cdef size_t _natural_align(size_t block_size) noexcept:
    cdef size_t a = 8
    while a < block_size and a < 64:
        a <<= 1
    return a


cdef class SlabAllocator(Allocator):
    """Fixed-size blocks with O(1) alloc and free: objects of one size that
    come and go all the time.

    Args:
        block_size: bytes each block holds (> 0).
        align: block alignment, a power of two up to 4096; by default the
            block size rounded up to a power of two, between 8 and 64.
        slots_per_slab: blocks in the first slab (each next slab doubles);
            by default as many as fit in 64 KiB.
        max_bytes: most bytes of slabs to reserve, 0 for no limit.
        threadsafe: take a mutex on every operation (see StackAllocator).

    ``alloc(n)`` takes any ``n <= block_size``.  ``free(block)`` gives a
    block back; a double free, or a block of another allocator, raises
    AllocatorError and leaves the free list as it was.  Dropped Blocks and
    arrays free their slot by themselves.
    """

    def __cinit__(self, size_t block_size=64, *, align=None, size_t slots_per_slab=0,
                  size_t max_bytes=0, bint threadsafe=False):
        if block_size == 0:
            raise ValueError("block_size must be at least 1")
        cdef size_t a = _natural_align(block_size) if align is None else align
        self.s = slab_create(block_size, a, slots_per_slab, max_bytes, threadsafe)
        self._st = &self.s.stats
        self._lock = &self.s.lock
        self._max_align = self.s.align

    def __dealloc__(self):
        slab_destroy(self.s)

    cdef int _c_alloc(self, size_t nbytes, size_t align, void** out, size_t* token) noexcept:
        cdef uint64_t code
        cdef int err
        if nbytes > self.s.block_size:
            self.s.stats.failed += 1
            return PGO_ERR_TOO_BIG
        if align > self.s.align:
            self.s.stats.failed += 1
            return PGO_ERR_ALIGN
        err = _slab_alloc_unlocked(self.s, out, &code)
        if err == PGO_OK:
            token[0] = code
            self.s.stats.requested += nbytes
            self.s.segs[code >> 32].pybits[(code & 0xffffffffu) >> 6] |= (<uint64_t>1) << (code & 63)
        return err

    cdef int _c_free(self, Block b) noexcept:
        return _slab_free_code(self.s, b.token, True)

    cdef void _c_dead(self, Block b) noexcept:
        _slab_free_code(self.s, b.token, True)

    cdef void _sync(self) noexcept:
        slab_sync_stats(self.s)

    cdef size_t _canary_len(self, Block b) noexcept:
        return self.s.stride - b.nbytes if PGO_CANARY else 0

    cdef int _c_reset(self) noexcept:
        return _slab_reset_unlocked(self.s)

    cdef object _where(self, char* p):
        cdef uint64_t code
        if _slab_locate(self.s, p, &code) == PGO_OK:
            return f"slab {code >> 32} slot {code & 0xffffffffu}"
        return f"address {<uintptr_t>p:#x}"

    def _raise_alloc(self, int code, size_t nbytes, size_t align):
        if code == PGO_ERR_TOO_BIG:
            raise ValueError(f"{self!r} serves blocks of at most {self.s.block_size} bytes; "
                             f"{nbytes:,} requested")
        if code == PGO_ERR_ALIGN:
            raise ValueError(f"{self!r} aligns blocks to {self.s.align} bytes; alignment "
                             f"{align} requested")
        Allocator._raise_alloc(self, code, nbytes, align)

    def _describe_nomem(self, size_t nbytes):
        limit = f"max_bytes={self.s.max_bytes:,}" if self.s.max_bytes else "the system refused"
        return (f"{self!r}: cannot allocate a {self.s.block_size}-byte block: "
                f"{self.s.stats.capacity:,} bytes in {self.s.nsegs} slab(s), {limit}")

    def _extra_stats(self):
        return {"block_size": self.s.block_size, "stride": self.s.stride,
                "align": self.s.align, "slabs": self.s.nsegs, "free_slots": self.s.nfree}

    def _free_address(self, size_t address):
        """Test-only: run the C-level free on a raw address."""
        cdef int code
        pgo_lock_gil_held(self._lock, self._st)
        code = _slab_free_unlocked(self.s, <void*>address)
        pgo_unlock(self._lock)
        if code == PGO_ERR_DOUBLE_FREE:
            raise AllocatorError(f"{self!r}: double free of the block at "
                                 f"{self._where(<char*>address)}")
        if code != PGO_OK:
            pgo_raise(code, "SlabAllocator", 0, 0)

    @property
    def block_size(self):
        return self.s.block_size

    @property
    def align(self):
        return self.s.align

    def __repr__(self):
        return (f"<SlabAllocator block_size={self.s.block_size} align={self.s.align} "
                f"slabs={self.s.nsegs} threadsafe={bool(self.s.lock.enabled)}>")
