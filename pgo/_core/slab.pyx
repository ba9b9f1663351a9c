"""SlabAllocator: fixed-size blocks with O(1) alloc and free.

Design: one range of address space is reserved when the allocator is made
(``max_bytes``, or 64 GiB -- halved while the system refuses; nothing is
committed) and slabs are committed in
it one after another -- the first of ``slots_per_slab`` blocks, each next
one twice as big, up to 2**24 slots -- so slot ``i`` is always at
``base + i * stride``, growth never moves a block, and finding a pointer's
slot costs the same with one slab or a hundred.  The free list is a stack of
slot numbers outside the blocks; the bitmap of handed-out slots makes a
double free an error, not a corrupted free list.  The common paths are
inline in ``slab.pxd``; the complete ones (locking, growth, errors, the test
build's fill and canary) are here.

# NOTE: ownership.  The ``pgo_slab_t``, its reservation, bitmaps, slot
# stack and slab table belong to the SlabAllocator object, or to the C
# caller of ``slab_create``; ``slab_destroy`` unmaps the reservation.  A
# Python Block holds its allocator, so the slabs outlive every Block and
# array made from them.
# NOTE: threads and the GIL.  Nothing here needs the GIL: every C path is
# nogil.  Without threadsafe=True the struct relies on its single user (or
# the GIL) for exclusion; with it, every entry point in slab.pxd and every
# backend call (numpy's handler) takes the mutex.  ``base``, ``stride`` and
# ``max_slots`` never change, so range tests need no lock.
"""

from libc.stdint cimport uint64_t, uintptr_t
from libc.string cimport memset

from pgo._core._base cimport (
    Allocator, Block, pgo_locked_reset, pgo_locked_alloc, pgo_locked_free, pgo_raise, pgo_raise_at,
)
from pgo._core._c.pgo_memory cimport PGO_HUGE_PAGE_BYTES, PGO_PAGE_BYTES
from pgo._core._memory cimport (
    pgo_sys_calloc, pgo_sys_commit, pgo_sys_free, pgo_sys_realloc,
    pgo_sys_reserve, pgo_sys_unreserve,
)
from pgo._core._typedefs cimport (
    PGO_CANARY, PGO_DEBUG_FILL, PGO_ERR_ALIGN, PGO_ERR_DOUBLE_FREE, PGO_ERR_FOREIGN,
    PGO_ERR_INTERIOR, PGO_ERR_LIVE, PGO_ERR_NOMEM, PGO_ERR_OVERFLOW, PGO_ERR_OVERRUN,
    PGO_ERR_PY_OWNED, PGO_ERR_TOO_BIG, PGO_FILL_ALLOC, PGO_FILL_FREE, PGO_OK, pgo_backend_init,
    pgo_bad_align, pgo_canary_ok, pgo_destroy_fn, pgo_lock_destroy, pgo_lock_gil_held, pgo_lock_init, pgo_mul_overflow, pgo_unlock, pgo_vg_alloc,
    pgo_vg_create, pgo_vg_destroy, pgo_vg_free, pgo_vg_noaccess, pgo_vg_trim, pgo_within,
)

from pgo._errors import AllocatorError

cdef enum:
    MAX_SLAB_SLOTS = 16777216   # 2**24; literals only: overflowcheck mis-compiles constant expressions here
    DEFAULT_SLAB_BYTES = 262144

# Address space reserved when no max_bytes is given: 64 GiB, untouched
# until committed.  Far below the 128 TiB a process has.
cdef size_t DEFAULT_RESERVE = (<size_t>64) << 30


cdef inline size_t _round_up(size_t x, size_t align) noexcept nogil:
    return (x + align - 1) & ~(align - 1)


cdef inline void _slab_update_fast(pgo_slab_t* s) noexcept nogil:
    s.fast = not s.lock.enabled and s.stride_shift != 0 and not PGO_DEBUG_FILL


cdef pgo_slab_t* slab_create(size_t block_size, size_t align, size_t first_slots,
                             size_t max_bytes, bint threadsafe) except NULL nogil:
    cdef pgo_slab_t* s
    cdef size_t reserve, minimum
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
    # Reserve address space (not memory): max_bytes if given, else 64 GiB,
    # or less where the system allows less, down to the first slab.
    reserve = max_bytes if max_bytes else DEFAULT_RESERVE
    if reserve < s.stride:
        reserve = s.stride
    minimum = reserve if max_bytes else first_slots * s.stride
    s.base = pgo_sys_reserve(reserve, minimum,
                             PGO_HUGE_PAGE_BYTES if reserve >= PGO_HUGE_PAGE_BYTES else PGO_PAGE_BYTES,
                             &reserve, &s.raw, &s.raw_len)
    if s.base == NULL:
        pgo_sys_free(s)
        # Under a tight `ulimit -v`, max_bytes makes the reservation smaller.
        pgo_raise(PGO_ERR_NOMEM, "SlabAllocator (reserving address space; pass max_bytes "
                  "to reserve less)", minimum, align)
        return NULL
    s.max_bytes = max_bytes
    s.max_slots = (max_bytes if max_bytes else reserve) // s.stride
    if s.max_slots > 0xffffffffu:
        s.max_slots = 0xffffffffu
    s.lo = <size_t>s.base
    s.hi = <size_t>s.base + s.max_slots * s.stride
    pgo_lock_init(&s.lock, threadsafe)
    _slab_update_fast(s)
    pgo_vg_create(s)
    return s


cdef void slab_destroy(pgo_slab_t* s) noexcept nogil:
    if s != NULL:
        pgo_vg_destroy(s)
        pgo_lock_destroy(&s.lock)
        pgo_sys_unreserve(s.raw, s.raw_len)
        pgo_sys_free(s.bitmap)
        pgo_sys_free(s.pybits)
        pgo_sys_free(s.free_slots)
        pgo_sys_free(s.slab_starts)
        pgo_sys_free(s)


cdef int _slab_grow(pgo_slab_t* s) noexcept nogil:
    cdef size_t nslots = s.next_slots, total, words, i, nbytes, offset, end
    cdef uint64_t* table
    cdef size_t* starts
    if s.nslots >= s.max_slots:
        return PGO_ERR_NOMEM
    if nslots > s.max_slots - s.nslots:
        nslots = s.max_slots - s.nslots           # what the reservation still holds
    total = s.nslots + nslots
    words = (total + 63) // 64
    # Grow every table first and commit last, so that a failure leaves the
    # allocator as it was (a bigger table is harmless).
    if words > s.cap_words:
        table = <uint64_t*>pgo_sys_realloc(s.bitmap, words, sizeof(uint64_t))
        if table == NULL:
            return PGO_ERR_NOMEM
        memset(table + s.cap_words, 0, (words - s.cap_words) * sizeof(uint64_t))
        s.bitmap = table
        table = <uint64_t*>pgo_sys_realloc(s.pybits, words, sizeof(uint64_t))
        if table == NULL:
            return PGO_ERR_NOMEM
        memset(table + s.cap_words, 0, (words - s.cap_words) * sizeof(uint64_t))
        s.pybits = table
        s.cap_words = words
    table = <uint64_t*>pgo_sys_realloc(s.free_slots, total, sizeof(uint64_t))
    if table == NULL:
        return PGO_ERR_NOMEM
    s.free_slots = table
    starts = <size_t*>pgo_sys_realloc(s.slab_starts, s.nslabs + 1, sizeof(size_t))
    if starts == NULL:
        return PGO_ERR_NOMEM
    s.slab_starts = starts
    if pgo_mul_overflow(s.nslots, s.stride, &offset) or pgo_mul_overflow(nslots, s.stride, &nbytes):
        return PGO_ERR_OVERFLOW
    # Commits are whole pages; the slab may already sit in the last one.
    end = _round_up(offset + nbytes, PGO_PAGE_BYTES)
    if end > s.committed:
        if pgo_sys_commit(s.base + s.committed, end - s.committed) != 0:
            return PGO_ERR_NOMEM
        s.committed = end
    if PGO_DEBUG_FILL:
        memset(s.base + offset, PGO_FILL_FREE, nbytes)
    pgo_vg_noaccess(s.base + offset, nbytes)
    s.slab_starts[s.nslabs] = s.nslots
    s.nslabs += 1
    # Highest slot pushed first, so the lowest new slot is handed out first.
    for i in range(nslots):
        s.free_slots[s.nfree] = total - 1 - i
        s.nfree += 1
    s.nslots = total
    s.stats.capacity += nbytes
    if s.next_slots < MAX_SLAB_SLOTS:
        s.next_slots *= 2
    return PGO_OK


cdef int _slab_alloc_unlocked(pgo_slab_t* s, void** out, size_t* slot_out) noexcept nogil:
    # The complete allocation of one slot.
    cdef size_t slot
    cdef int err
    if s.nfree == 0:
        err = _slab_grow(s)
        if err != PGO_OK:
            s.stats.failed += 1
            return err
    s.nfree -= 1
    slot = <size_t>s.free_slots[s.nfree]
    s.bitmap[slot >> 6] |= (<uint64_t>1) << (slot & 63)
    out[0] = s.base + slot * s.stride
    pgo_vg_alloc(s, out[0], s.stride)
    slot_out[0] = slot
    s.stats.allocs += 1
    if s.nslots - s.nfree > s.peak_slots:
        s.peak_slots = s.nslots - s.nfree
    if PGO_DEBUG_FILL:
        memset(out[0], PGO_FILL_ALLOC, s.stride)
    return PGO_OK


cdef int _slab_locate(pgo_slab_t* s, void* p, size_t* slot_out) noexcept nogil:
    cdef size_t off, slot
    if <uintptr_t>p < <uintptr_t>s.base:
        return PGO_ERR_FOREIGN
    off = <uintptr_t>p - <uintptr_t>s.base
    slot = off >> s.stride_shift if s.stride_shift else off // s.stride
    if slot >= s.nslots:
        return PGO_ERR_FOREIGN
    if off - slot * s.stride:
        return PGO_ERR_INTERIOR
    slot_out[0] = slot
    return PGO_OK


cdef int _slab_free_slot(pgo_slab_t* s, size_t slot, bint from_python) noexcept nogil:
    cdef uint64_t bit = (<uint64_t>1) << (slot & 63)
    if not (s.bitmap[slot >> 6] & bit):
        return PGO_ERR_DOUBLE_FREE
    if s.pybits[slot >> 6] & bit and not from_python:
        return PGO_ERR_PY_OWNED
    if PGO_CANARY and not from_python and not pgo_canary_ok(
            s.base + slot * s.stride + s.block_size, s.stride - s.block_size):
        return PGO_ERR_OVERRUN
    s.bitmap[slot >> 6] &= ~bit
    s.pybits[slot >> 6] &= ~bit
    s.free_slots[s.nfree] = slot
    s.nfree += 1
    s.stats.frees += 1
    if PGO_DEBUG_FILL:
        memset(s.base + slot * s.stride, PGO_FILL_FREE, s.stride)
    pgo_vg_free(s, s.base + slot * s.stride)
    return PGO_OK


cdef int _slab_free_unlocked(void* state, void* p) noexcept nogil:
    cdef pgo_slab_t* s = <pgo_slab_t*>state
    cdef size_t slot
    cdef int err
    if p == NULL:
        return PGO_OK
    err = _slab_locate(s, p, &slot)
    if err != PGO_OK:
        return err
    return _slab_free_slot(s, slot, False)


cdef int _slab_alloc_c(void* state, size_t n, size_t align, void** out) noexcept nogil:
    # One slot (n and align are the slab's own).
    cdef size_t slot
    return _slab_alloc_unlocked(<pgo_slab_t*>state, out, &slot)


cdef void* _slab_alloc_slow(pgo_slab_t* s) noexcept nogil:
    return pgo_locked_alloc(&s.lock, &s.stats, _slab_alloc_c, s, s.block_size, s.align,
                            "SlabAllocator")


cdef int _slab_free_slow(pgo_slab_t* s, void* p) noexcept nogil:
    return pgo_locked_free(&s.lock, &s.stats, _slab_free_unlocked, s, p, "SlabAllocator")


# -- numpy's handler (see pgo_backend_t) ----------------------------------
# A block taken for an array is marked as Python-owned, as a Block's is, so
# C code cannot free it and reset() refuses while it is alive.

cdef int _slab_alloc_py(pgo_slab_t* s, size_t n, void** out, size_t* slot) noexcept nogil:
    # A slot Python owns (an array's or a Block's) for n bytes: C code cannot
    # free it.
    cdef int err = _slab_alloc_unlocked(s, out, slot)
    if err == PGO_OK:
        s.pybits[slot[0] >> 6] |= (<uint64_t>1) << (slot[0] & 63)
        s.py_allocs += 1
        s.py_requested += n
    return err


cdef int _slab_take_unlocked(void* state, size_t n, size_t align, void** out) noexcept nogil:
    cdef size_t slot
    return _slab_alloc_py(<pgo_slab_t*>state, n, out, &slot)


cdef bint _slab_holds(void* state, void* p) noexcept nogil:
    # base and max_slots never change: no lock needed.
    cdef pgo_slab_t* s = <pgo_slab_t*>state
    return pgo_within(p, s.base, s.max_slots * s.stride)


cdef int _slab_give_unlocked(void* state, void* p) noexcept nogil:
    cdef pgo_slab_t* s = <pgo_slab_t*>state
    cdef size_t slot
    cdef int err = _slab_locate(s, p, &slot)
    if err == PGO_ERR_FOREIGN:
        return PGO_ERR_DOUBLE_FREE      # in the reservation, past the slabs: gone already
    if err == PGO_OK and not (s.pybits[slot >> 6] & ((<uint64_t>1) << (slot & 63))):
        return PGO_ERR_DOUBLE_FREE
    if err == PGO_OK:
        err = _slab_free_slot(s, slot, True)
    return err


cdef size_t _slab_span_unlocked(void* state, void* p) noexcept nogil:
    cdef pgo_slab_t* s = <pgo_slab_t*>state
    cdef size_t slot
    if (_slab_locate(s, p, &slot) == PGO_OK
            and s.bitmap[slot >> 6] & ((<uint64_t>1) << (slot & 63))):
        return s.block_size
    return 0


cdef int _slab_reset_unlocked(void* state) noexcept nogil:
    cdef pgo_slab_t* s = <pgo_slab_t*>state
    cdef size_t i
    slab_sync_stats(s)
    s.stats.frees += s.nslots - s.nfree
    if PGO_DEBUG_FILL:
        # Only slots still handed out: the others were filled when freed
        # (and valgrind no longer lets anyone touch them).
        for i in range(s.nslots):
            if s.bitmap[i >> 6] & ((<uint64_t>1) << (i & 63)):
                memset(s.base + i * s.stride, PGO_FILL_FREE, s.stride)
    pgo_vg_trim(s, s.base, 0)
    memset(s.bitmap, 0, s.cap_words * sizeof(uint64_t))
    memset(s.pybits, 0, s.cap_words * sizeof(uint64_t))
    s.nfree = 0
    for i in range(s.nslots):
        s.free_slots[s.nfree] = s.nslots - 1 - i
        s.nfree += 1
    s.stats.resets += 1
    s.stats.requested = 0
    s.py_allocs = 0
    s.py_requested = 0
    s.allocs_at_reset = s.stats.allocs
    return PGO_OK


cdef int slab_reset(pgo_slab_t* s) except -1 nogil:
    return pgo_locked_reset(&s.lock, &s.stats, _slab_reset_unlocked, s, "SlabAllocator")


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
            by default as many as fit in 256 KiB.
        max_bytes: most bytes of slabs, 0 for no limit but the 64 GiB of
            address space reserved up front (address space only: memory is
            committed slab by slab).
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
        pgo_backend_init(&self._be, self.s, &self.s.lock, &self.s.stats,
                         _slab_take_unlocked, NULL, self.s.block_size,
                         _slab_holds, _slab_give_unlocked, _slab_span_unlocked,
                         &self.s.lo, &self.s.hi)
        self._bind(<pgo_destroy_fn>slab_destroy, 1, self.s.align)

    @property
    def block_size(self):
        return self.s.block_size

    @property
    def align(self):
        return self.s.align

    cdef int _c_alloc(self, size_t nbytes, size_t align, void** out, size_t* token) noexcept:
        if nbytes > self.s.block_size:
            self.s.stats.failed += 1
            return PGO_ERR_TOO_BIG
        if align > self.s.align:
            self.s.stats.failed += 1
            return PGO_ERR_ALIGN
        return _slab_alloc_py(self.s, nbytes, out, token)

    cdef int _c_free(self, Block b) noexcept:
        return _slab_free_slot(self.s, b.token, True)

    cdef void _c_dead(self, Block b) noexcept:
        _slab_free_slot(self.s, b.token, True)

    cdef void _sync(self) noexcept:
        slab_sync_stats(self.s)

    cdef size_t _canary_len(self, Block b) noexcept:
        return self.s.stride - b.nbytes if PGO_CANARY else 0

    cdef int _c_reset(self) noexcept:
        return _slab_reset_unlocked(self.s)

    cdef object _where(self, char* p):
        cdef size_t slot, k
        if _slab_locate(self.s, p, &slot) != PGO_OK:
            return f"address {<uintptr_t>p:#x}"
        k = self.s.nslabs - 1
        while k > 0 and self.s.slab_starts[k] > slot:
            k -= 1
        return f"slab {k} slot {slot - self.s.slab_starts[k]}"

    def _raise_alloc(self, int code, size_t nbytes, size_t align):
        if code == PGO_ERR_TOO_BIG:
            raise ValueError(f"{self!r} serves blocks of at most {self.s.block_size} bytes; "
                             f"{nbytes:,} requested")
        if code == PGO_ERR_ALIGN:
            raise ValueError(f"{self!r} aligns blocks to {self.s.align} bytes; alignment "
                             f"{align} requested")
        Allocator._raise_alloc(self, code, nbytes, align)

    def _describe_nomem(self, size_t nbytes):
        limit = (f"max_bytes={self.s.max_bytes:,} reached" if self.s.max_bytes
                 and self.s.nslots >= self.s.max_slots else "the system refused more")
        return (f"{self!r}: cannot allocate a {self.s.block_size}-byte block: "
                f"{self.s.stats.capacity:,} bytes in {self.s.nslabs} slab(s), {limit}")

    def _extra_stats(self):
        return {"block_size": self.s.block_size, "stride": self.s.stride,
                "align": self.s.align, "slabs": self.s.nslabs, "free_slots": self.s.nfree,
                "max_bytes": self.s.max_bytes}

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
            pgo_raise_at(code, "SlabAllocator", <void*>address)

    def __repr__(self):
        return (f"<SlabAllocator block_size={self.s.block_size} align={self.s.align} "
                f"slabs={self.s.nslabs} threadsafe={bool(self.s.lock.enabled)}>")
