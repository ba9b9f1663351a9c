# MappedPool: blocks of any size carved from one mmap, which can be shared
# with other processes (a memfd or a file) so that they see the same arrays.
#
#   cdef pgo_mapped_t* s = mapped_create(1 << 20, False, False)   # private, anonymous
#   cdef void* p = mapped_alloc(s, 1000, 64)
#   mapped_free(s, p)          # double free / interior / foreign: AllocatorError
#   mapped_destroy(s)
#
# The mapping is made once and never grows, so a block's offset from base is
# the same in every process that maps it.  Memory is handed out in 64-byte
# units: free extents sit in power-of-two bins (doubly linked through side
# arrays, never through the blocks, so a view in another process never sees
# allocator data) and coalesce with both neighbours on free.  The side arrays
# are private to the process that made the pool; a process that attaches
# sees the blocks and allocates nothing.
#
# The C paths take the lock (threadsafe=True) and return NULL / -1 with the
# exception set; stats.in_use and peak are kept exactly.

from libc.stdint cimport uint32_t, uint64_t

from pgo._core._base cimport Allocator
from pgo._core._typedefs cimport pgo_lock_t, pgo_stats_t

cdef enum:
    MAPPED_UNIT_SHIFT = 6         # 64-byte units: blocks start cache-line aligned
    MAPPED_NBINS = 33             # free extents of 2**b .. 2**(b+1)-1 units in bin b


ctypedef struct pgo_mapped_t:
    char* base
    size_t size               # bytes mapped (whole pages)
    size_t nunits             # size >> MAPPED_UNIT_SHIFT
    size_t lo, hi             # [base, base + size): for numpy's router
    int fd                    # a memfd pool's memfd (its name); else -1
    bint shared               # MAP_SHARED: a memfd or a file (or a view of one)
    bint view                 # attached to another process's pool: no allocation here
    uint64_t fork_gen         # the process's fork generation when made (see mapped.pyx)
    # Side arrays, one private mapping (pages only where touched):
    uint32_t* len_at          # units of the extent starting at a unit; a free
                              # extent's length is also at its last unit
    uint32_t* next_free       # free-list links, valid at a free extent's first unit
    uint32_t* prev_free
    uint64_t* live            # bit: a live block starts at the unit
    uint64_t* pybits          # bit: ... and a Python Block or an array owns it
    uint64_t* free_head       # bit: a free extent starts at the unit
    uint64_t* free_tail       # bit: a free extent ends at the unit
    void* side
    size_t side_bytes
    uint32_t bins[MAPPED_NBINS]   # first free extent of each bin, or 0xffffffff
    uint64_t bin_mask         # bit b: bin b is not empty
    size_t free_units
    size_t live_units
    size_t peak_units
    size_t free_extents
    uint64_t trimmed          # bytes given back to the system by trim()
    pgo_stats_t stats
    pgo_lock_t lock


# A pool over `size` bytes at `base` (a mapping the caller made and still
# owns: mapped_destroy unmaps it and closes fd when fd >= 0).  NULL with
# MemoryError when the side arrays cannot be mapped.
cdef pgo_mapped_t* mapped_create_over(char* base, size_t size, int fd, bint view,
                                      bint threadsafe) except NULL nogil
# A private anonymous pool of `capacity` bytes (rounded up to whole pages);
# with huge_pages, 4 MiB and more start on a huge page and are advised them.
cdef pgo_mapped_t* mapped_create(size_t capacity, bint huge_pages,
                                 bint threadsafe) except NULL nogil
cdef void mapped_destroy(pgo_mapped_t* s) noexcept nogil
# n bytes (n may be 0) aligned to `align` (a power of two up to 4096): the
# block, or NULL with MemoryError (the pool never grows) / ValueError.
cdef void* mapped_alloc(pgo_mapped_t* s, size_t n, size_t align) except NULL nogil
# 0, or -1 with AllocatorError: a double free, a pointer inside a block or
# outside the pool, or a block a Python Block or array owns.  NULL: 0.
cdef int mapped_free(pgo_mapped_t* s, void* p) except -1 nogil
# Gives the whole pages inside free extents back to the system; the bytes.
cdef size_t mapped_trim(pgo_mapped_t* s) noexcept nogil

# For allocators built from mapped pools (NUMAAllocator): the steps, with
# the caller holding whatever lock covers `s`; PGO_ERR_* codes.
# A block of n bytes (Python-owned with py) at *out.
cdef int mapped_take_unlocked(pgo_mapped_t* s, size_t n, size_t align, bint py,
                              void** out) noexcept nogil
# The live block starting at p: PGO_OK and its unit, or why not.
cdef int mapped_locate(pgo_mapped_t* s, void* p, size_t* unit) noexcept nogil
# Free the live block at `unit` (a unit mapped_locate gave).
cdef void mapped_release(pgo_mapped_t* s, size_t unit) noexcept nogil
cdef int mapped_reset_unlocked(void* state) noexcept nogil


# (address, nbytes) of a Block, or of the memory of anything numpy can view.
cdef tuple memory_of(object obj)


cdef class MappedPool(Allocator):
    cdef pgo_mapped_t* s
    cdef str _name
    cdef str _path
    cdef str _mode
    cdef bint _populate
    cdef bint _huge
    cdef Py_ssize_t _views

    cdef int _attach(self, str name, bint threadsafe) except -1
    cdef void _bind_pool(self) noexcept
    cdef size_t _largest_free(self) noexcept
