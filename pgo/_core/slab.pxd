# SlabAllocator: fixed-size blocks with O(1) alloc and free.
#
#   cdef pgo_slab_t* s = slab_create(64, 64, 1024, 0, False)
#   cdef void* p = slab_alloc(s)
#   slab_free(s, p)            # double free / interior / foreign: AllocatorError
#   slab_destroy(s)
#
# Free slots live on a stack of (slab, slot) codes, not inside the freed
# memory, so the debug fill pattern survives a free; a per-slot bitmap says
# which slots are handed out, which is what catches a double free, and a
# second one which of them a Python Block owns (C code may not free those).
# A free finds its slab by binary search over the slabs' addresses; slabs
# double in size as the allocator grows, so there are few of them.
#
# The inline paths cover the common case (no lock, one slab, a power-of-two
# stride, the normal build); everything else, errors included, goes to the
# out-of-line functions in slab.pyx so the inline code stays small enough to
# be inlined.  stats.in_use, peak and lost are derived: call
# slab_sync_stats(s) before reading s.stats.

from libc.stdint cimport uint64_t, uintptr_t

from pgo._core._base cimport Allocator
from pgo._core._typedefs cimport pgo_lock_t, pgo_stats_t, pgo_unlikely


ctypedef struct pgo_slab_seg_t:
    char* base
    uint64_t* bitmap          # bit set: slot handed out
    uint64_t* pybits          # bit set: slot owned by a Python Block
    size_t nslots


ctypedef struct pgo_slab_t:
    size_t block_size         # bytes a block may hold
    size_t stride             # block_size (+ test-build canary) rounded up to align
    size_t stride_shift       # log2(stride) when stride is a power of two, else 0
    size_t align
    bint fast                 # the inline paths apply (see above)
    pgo_slab_seg_t* segs
    size_t nsegs
    size_t cap_segs
    size_t* order             # seg indices sorted by base address
    uint64_t* free_codes      # (seg << 32) | slot, top of stack last
    size_t nfree
    size_t cap_free           # slots in all slabs
    size_t next_slots         # slots in the next slab
    size_t max_bytes          # 0: no limit
    size_t peak_slots
    uint64_t allocs_at_reset
    pgo_stats_t stats
    pgo_lock_t lock


cdef pgo_slab_t* slab_create(size_t block_size, size_t align, size_t first_slots,
                             size_t max_bytes, bint threadsafe) except NULL nogil
cdef void slab_destroy(pgo_slab_t* s) noexcept nogil
cdef int slab_reset(pgo_slab_t* s) except -1 nogil
# Out of line: NULL / -1 with the exception set.
cdef void* _slab_alloc_slow(pgo_slab_t* s) noexcept nogil
cdef int _slab_free_slow(pgo_slab_t* s, void* p) noexcept nogil


cdef inline void slab_sync_stats(pgo_slab_t* s) noexcept nogil:
    s.stats.in_use = (s.cap_free - s.nfree) * s.stride
    s.stats.peak = s.peak_slots * s.stride
    s.stats.lost = (s.stats.allocs - s.allocs_at_reset) * s.stride - s.stats.requested


cdef inline void* slab_alloc(pgo_slab_t* s) except NULL nogil:
    """One block of s.block_size bytes; raises MemoryError when exhausted."""
    cdef uint64_t code
    cdef size_t slot
    cdef pgo_slab_seg_t* seg
    if pgo_unlikely(not s.fast or s.nfree == 0):
        return _slab_alloc_slow(s)
    s.nfree -= 1
    code = s.free_codes[s.nfree]
    slot = <size_t>(code & 0xffffffffu)
    seg = &s.segs[code >> 32]
    seg.bitmap[slot >> 6] |= (<uint64_t>1) << (slot & 63)
    s.stats.allocs += 1
    s.stats.requested += s.block_size
    if s.cap_free - s.nfree > s.peak_slots:
        s.peak_slots = s.cap_free - s.nfree
    return seg.base + slot * s.stride


cdef inline int slab_free(pgo_slab_t* s, void* p) except -1 nogil:
    """Give back a block; NULL is a no-op.  Raises AllocatorError on misuse."""
    cdef pgo_slab_seg_t* seg = s.segs
    cdef size_t off, slot, word
    cdef uint64_t bit
    if pgo_unlikely(not s.fast):
        return _slab_free_slow(s, p)
    off = <uintptr_t>p - <uintptr_t>seg.base
    slot = off >> s.stride_shift
    word = slot >> 6
    bit = (<uint64_t>1) << (slot & 63)
    if pgo_unlikely(slot >= seg.nslots or (off & (s.stride - 1)) != 0
                    or (seg.bitmap[word] & bit) == 0 or (seg.pybits[word] & bit) != 0):
        return _slab_free_slow(s, p)
    seg.bitmap[word] &= ~bit
    s.free_codes[s.nfree] = slot
    s.nfree += 1
    s.stats.frees += 1
    return 0


cdef class SlabAllocator(Allocator):
    cdef pgo_slab_t* s
