# SlabAllocator: fixed-size blocks with O(1) alloc and free.
#
#   cdef pgo_slab_t* s = slab_create(64, 64, 1024, 0, False)
#   cdef void* p = slab_alloc(s)
#   slab_free(s, p)            # double free / interior / foreign: AllocatorError
#   slab_destroy(s)
#
# Free slots live on a stack of (slab, slot) codes, not inside the freed
# memory, so the debug fill pattern survives a free; a per-slot bitmap says
# which slots are handed out, which is what catches a double free.  A free
# finds its slab by binary search over the slabs' addresses; slabs double in
# size as the allocator grows, so there are few of them.

from libc.stdint cimport uint64_t, uintptr_t
from libc.string cimport memset

from pgo._core._base cimport Allocator, pgo_fail, pgo_fail_null
from pgo._core._typedefs cimport (
    PGO_DEBUG_FILL, PGO_ERR_DOUBLE_FREE, PGO_ERR_FOREIGN, PGO_ERR_INTERIOR,
    PGO_FILL_ALLOC, PGO_FILL_FREE, PGO_OK, pgo_lock, pgo_lock_t,
    pgo_stats_alloc, pgo_stats_t, pgo_unlikely, pgo_unlock,
)


ctypedef struct pgo_slab_seg_t:
    char* base
    uint64_t* bitmap          # bit set: slot handed out
    size_t nslots


ctypedef struct pgo_slab_t:
    size_t block_size         # bytes a block may hold
    size_t stride             # block_size rounded up to align
    size_t stride_shift       # log2(stride) when stride is a power of two, else 0
    size_t align
    pgo_slab_seg_t* segs
    size_t nsegs
    size_t cap_segs
    size_t* order             # seg indices sorted by base address
    uint64_t* free_codes      # (seg << 32) | slot, top of stack last
    size_t nfree
    size_t cap_free
    size_t next_slots         # slots in the next slab
    size_t max_bytes          # 0: no limit
    pgo_stats_t stats
    pgo_lock_t lock


cdef pgo_slab_t* slab_create(size_t block_size, size_t align, size_t first_slots,
                             size_t max_bytes, bint threadsafe) except NULL nogil
cdef void slab_destroy(pgo_slab_t* s) noexcept nogil
# Adds a slab; PGO_ERR_NOMEM past max_bytes or when the system refuses.
cdef int _slab_grow(pgo_slab_t* s) noexcept nogil
cdef int slab_reset(pgo_slab_t* s) except -1 nogil


cdef inline int _slab_alloc_unlocked(pgo_slab_t* s, void** out, uint64_t* code_out) noexcept nogil:
    cdef uint64_t code
    cdef pgo_slab_seg_t* seg
    cdef size_t slot
    cdef int err
    if pgo_unlikely(s.nfree == 0):
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
    if PGO_DEBUG_FILL:
        memset(out[0], PGO_FILL_ALLOC, s.stride)
    return PGO_OK


cdef inline int _slab_locate(pgo_slab_t* s, void* p, uint64_t* code_out) noexcept nogil:
    # Binary search for the last slab starting at or below p.
    cdef uintptr_t x = <uintptr_t>p
    cdef size_t lo = 0, hi = s.nsegs, mid, off, slot
    cdef pgo_slab_seg_t* seg
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if <uintptr_t>s.segs[s.order[mid]].base <= x:
            lo = mid
        else:
            hi = mid
    if s.nsegs == 0:
        return PGO_ERR_FOREIGN
    seg = &s.segs[s.order[lo]]
    if x < <uintptr_t>seg.base:
        return PGO_ERR_FOREIGN
    off = x - <uintptr_t>seg.base
    # A shift, not a division, for the usual power-of-two strides.
    slot = off >> s.stride_shift if s.stride_shift else off // s.stride
    if slot >= seg.nslots:
        return PGO_ERR_FOREIGN
    if off - slot * s.stride:
        return PGO_ERR_INTERIOR
    code_out[0] = ((<uint64_t>s.order[lo]) << 32) | slot
    return PGO_OK


cdef inline int _slab_free_code(pgo_slab_t* s, uint64_t code) noexcept nogil:
    cdef pgo_slab_seg_t* seg = &s.segs[code >> 32]
    cdef size_t slot = <size_t>(code & 0xffffffffu)
    cdef uint64_t bit = (<uint64_t>1) << (slot & 63)
    if pgo_unlikely(not (seg.bitmap[slot >> 6] & bit)):
        return PGO_ERR_DOUBLE_FREE
    seg.bitmap[slot >> 6] &= ~bit
    s.free_codes[s.nfree] = code
    s.nfree += 1
    s.stats.frees += 1
    s.stats.in_use -= s.stride
    if PGO_DEBUG_FILL:
        memset(seg.base + slot * s.stride, PGO_FILL_FREE, s.stride)
    return PGO_OK


cdef inline int _slab_free_unlocked(pgo_slab_t* s, void* p) noexcept nogil:
    cdef uint64_t code
    cdef int err
    if p == NULL:
        return PGO_OK
    err = _slab_locate(s, p, &code)
    if pgo_unlikely(err != PGO_OK):
        return err
    return _slab_free_code(s, code)


# Out of line (slab.pyx): the locked, growing and failing cases, so that the
# inline paths below stay small enough for the C compiler to inline.
cdef void* _slab_alloc_slow(pgo_slab_t* s) except NULL nogil
cdef int _slab_free_slow(pgo_slab_t* s, void* p) except -1 nogil


cdef inline void* slab_alloc(pgo_slab_t* s) except NULL nogil:
    """One block of s.block_size bytes; raises MemoryError when exhausted."""
    cdef uint64_t code
    cdef size_t slot
    cdef char* p
    if pgo_unlikely(s.lock.enabled or s.nfree == 0 or PGO_DEBUG_FILL):
        return _slab_alloc_slow(s)
    s.nfree -= 1
    code = s.free_codes[s.nfree]
    slot = <size_t>(code & 0xffffffffu)
    s.segs[code >> 32].bitmap[slot >> 6] |= (<uint64_t>1) << (slot & 63)
    p = s.segs[code >> 32].base + slot * s.stride
    pgo_stats_alloc(&s.stats, s.stats.in_use + s.stride, s.block_size, s.stride - s.block_size)
    return p


cdef inline int slab_free(pgo_slab_t* s, void* p) except -1 nogil:
    """Give back a block; NULL is a no-op.  Raises AllocatorError on misuse."""
    cdef pgo_slab_seg_t* seg = s.segs
    cdef size_t off, slot
    cdef uint64_t bit
    # Fast path: an unlocked allocator with one slab, a slot start, a power
    # of two stride; everything else (and every error) goes out of line.
    if pgo_unlikely(s.lock.enabled or s.nsegs != 1 or s.stride_shift == 0 or PGO_DEBUG_FILL):
        return _slab_free_slow(s, p)
    off = <uintptr_t>p - <uintptr_t>seg.base
    slot = off >> s.stride_shift
    bit = (<uint64_t>1) << (slot & 63)
    if pgo_unlikely(slot >= seg.nslots or (off & (s.stride - 1)) != 0
                    or not (seg.bitmap[slot >> 6] & bit)):
        return _slab_free_slow(s, p)
    seg.bitmap[slot >> 6] &= ~bit
    s.free_codes[s.nfree] = slot
    s.nfree += 1
    s.stats.frees += 1
    s.stats.in_use -= s.stride
    return 0


cdef class SlabAllocator(Allocator):
    cdef pgo_slab_t* s
