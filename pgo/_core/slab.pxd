# SlabAllocator: fixed-size blocks with O(1) alloc and free.
#
#   cdef pgo_slab_t* s = slab_create(64, 64, 1024, 0, False)
#   cdef void* p = slab_alloc(s)
#   slab_free(s, p)            # double free / interior / foreign: AllocatorError
#   slab_destroy(s)
#
# All slots live in one range of address space reserved up front and
# committed slab by slab as the allocator grows, so slot i is always at
# base + i * stride and a pointer's slot is a subtraction and a shift (or a
# division for strides that are not powers of two), whatever the size.
# Free slots are a stack of slot numbers outside the blocks, so the test
# build's fill pattern survives a free; a bitmap says which slots are handed
# out (that is what catches a double free) and a second one which of them a
# Python Block owns (C code may not free those).
#
# The inline paths cover the common case (no lock, a power-of-two stride,
# the normal build); everything else, errors included, goes to the
# out-of-line functions in slab.pyx, which keeps the inline code small
# enough to be inlined.  stats.in_use, peak, requested and lost are
# derived: call slab_sync_stats(s) before reading s.stats.

from libc.stdint cimport uint64_t, uintptr_t

from pgo._core._base cimport Allocator
from pgo._core._typedefs cimport pgo_lock_t, pgo_stats_t, pgo_unlikely


ctypedef struct pgo_slab_t:
    size_t block_size         # bytes a block may hold
    size_t stride             # block_size (+ test-build canary) rounded up to align
    size_t stride_shift       # log2(stride) when stride is a power of two, else 0
    size_t align
    bint fast                 # the inline paths apply (see above)
    char* base                # slot 0
    size_t nslots             # slots committed so far
    size_t max_slots          # slots the reservation (or max_bytes) allows
    size_t max_bytes          # 0: no limit but the reservation
    uint64_t* bitmap          # bit set: slot handed out
    uint64_t* pybits          # bit set: slot owned by a Python Block
    size_t cap_words          # words in each bitmap
    uint64_t* free_slots      # stack of free slot numbers, top last
    size_t nfree
    size_t* slab_starts       # first slot of each slab, for messages
    size_t nslabs
    size_t next_slots         # slots in the next slab
    size_t committed          # bytes from base made usable (whole pages)
    size_t lo, hi             # the reservation's address range (slots may go there)
    void* raw                 # the reservation, for munmap
    size_t raw_len
    size_t peak_slots
    uint64_t allocs_at_reset
    uint64_t py_allocs        # since the last reset
    uint64_t py_requested     # since the last reset
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
    # C-level allocations count as block_size requested; Python ones add
    # what they asked for to py_requested.
    s.stats.in_use = (s.nslots - s.nfree) * s.stride
    s.stats.peak = s.peak_slots * s.stride
    s.stats.requested = (s.py_requested + (s.stats.allocs - s.allocs_at_reset - s.py_allocs)
                         * s.block_size)
    s.stats.lost = (s.stats.allocs - s.allocs_at_reset) * s.stride - s.stats.requested


cdef inline void* slab_alloc(pgo_slab_t* s) except NULL nogil:
    """One block of s.block_size bytes; raises MemoryError when exhausted."""
    cdef size_t n = s.nfree, slot, used
    if pgo_unlikely(not s.fast or n == 0):
        return _slab_alloc_slow(s)
    n -= 1
    s.nfree = n
    slot = <size_t>s.free_slots[n]
    s.bitmap[slot >> 6] |= (<uint64_t>1) << (slot & 63)
    s.stats.allocs += 1
    used = s.nslots - n
    if used > s.peak_slots:
        s.peak_slots = used
    return s.base + (slot << s.stride_shift)


cdef inline int slab_free(pgo_slab_t* s, void* p) except -1 nogil:
    """Give back a block; NULL is a no-op.  Raises AllocatorError on misuse."""
    cdef size_t off, slot, word
    cdef uint64_t bit
    if pgo_unlikely(not s.fast or <uintptr_t>p < <uintptr_t>s.base):
        return _slab_free_slow(s, p)
    off = <uintptr_t>p - <uintptr_t>s.base
    slot = off >> s.stride_shift
    word = slot >> 6
    bit = (<uint64_t>1) << (slot & 63)
    if pgo_unlikely(slot >= s.nslots or (off & (s.stride - 1)) != 0
                    or (s.bitmap[word] & bit) == 0 or (s.pybits[word] & bit) != 0):
        return _slab_free_slow(s, p)
    s.bitmap[word] &= ~bit
    s.free_slots[s.nfree] = slot
    s.nfree += 1
    s.stats.frees += 1
    return 0


cdef class SlabAllocator(Allocator):
    cdef pgo_slab_t* s
