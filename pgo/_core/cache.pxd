# CacheAllocator: large blocks kept for reuse by size class.  The case it is
# for is numpy temporaries of the same size made again and again: glibc maps
# blocks over its mmap threshold (32 MiB) fresh every time and unmaps them on
# free, so every temporary page-faults all its pages in again.  Here a freed
# block waits in its size class (eight classes per power of two) for the
# next request of that class (or of a class up to 4x smaller, when that
# one has none cached), with its pages still mapped.
#
#   cdef pgo_cache_t* c = cache_create(512 << 20, PGO_CACHE_NO_HEADROOM, True, False, 0)
#   cdef void* p = cache_alloc(c, 48 << 20)
#   cache_free(c, p)            # kept: the next cache_alloc of that class reuses it
#   cache_trim(c)               # gives every kept block back to the system
#   cache_destroy(c)
#
# Free blocks are bounded by max_cached_bytes, evicting the least recently
# freed first, and, with a headroom, by the cache's own peak: live + cached
# bytes stay within (100 + headroom)% of the most bytes ever live in it, so
# the cache adds at most that share to the peak footprint of what it serves,
# whatever the sizes a run brings (a bound that scales with the input).
# With a reuse window, a cached block that no allocation took within that
# many allocations of the cache goes back: a block of a size that does not
# come again (a one-off temporary) is not kept while the rest of the
# process grows.  Every operation takes the cache's mutex (a cache is always
# thread-safe: large blocks are few, and the lock costs nothing next to
# touching their pages).  Every block, live or cached, is found from its
# address in a hash table, so a free is checked (a foreign pointer, a double
# free) and the size passed to a free is never needed.  Blocks of 64 KiB
# and more are coloured: mapped a page longer, numpy's arrays start one of
# eight offsets (multiples of 576 bytes) into them, so that the arrays of
# one elementwise loop do not share the CPU caches' sets; C and Python
# callers get the page-aligned start.  The extra page is not in the byte
# counts (stats, cached_bytes) nor the bounds: they count size classes.

from libc.stdint cimport uint64_t

from pgo._core._base cimport Allocator
from pgo._core._typedefs cimport pgo_lock_t, pgo_stats_t


ctypedef struct pgo_cblock_t:
    char* ptr                   # what its last allocation handed out: map, or map + colour
    char* map                   # the block's mapping (page aligned)
    size_t mapped               # bytes mapped: size, plus a page where it has a colour
    unsigned int colour         # bytes into the mapping where numpy's arrays start
    size_t size                 # bytes allocated: the size class
    size_t requested
    pgo_cblock_t* hnext         # chain in the address table (every block)
    pgo_cblock_t* prev          # free blocks: neighbours in their class list...
    pgo_cblock_t* next
    pgo_cblock_t* older         # ...and in the cache-wide recency list
    pgo_cblock_t* newer
    unsigned int cls
    uint64_t freed_at           # cached: the cache's allocation count when it was freed
    uint64_t born_at            # the cache's allocation count when it was last handed out
    bint live                   # handed out (else waiting in the cache)
    bint python_owned           # a Python Block or a numpy array owns it


cdef enum:
    PGO_CACHE_MAX_HEADROOM = 1000000    # percent (10,000x): the largest headroom taken
    PGO_CACHE_NO_HEADROOM = 1000001     # no bound from the cache's peak (and any larger value)


ctypedef struct pgo_cache_t:
    size_t max_cached_bytes
    size_t headroom             # percent of stats.peak; PGO_CACHE_NO_HEADROOM: none
    uint64_t reuse_window       # a cached block unused for this many allocations goes back (0: never)
    uint64_t ops                # allocations asked of the cache
    bint hugepages              # madvise(MADV_HUGEPAGE) blocks of 4 MiB and more
    bint prefault               # populate a fresh block's pages when it is made
    pgo_cblock_t** table        # every block, live or cached, by address: a
    size_t table_mask           # pointer is ours exactly when it is here
    size_t nblocks
    pgo_cblock_t** heads        # free blocks by class, most recent first
    pgo_cblock_t* oldest        # free blocks, least recently freed first
    pgo_cblock_t* newest
    size_t cached_bytes
    size_t cached_blocks
    size_t lo, hi               # every block made lies in [lo, hi): read without the lock
    uint64_t hits
    uint64_t misses
    uint64_t evictions
    uint64_t trims
    pgo_stats_t stats           # in_use: live bytes; capacity: live + cached
    pgo_lock_t lock


cdef pgo_cache_t* cache_create(size_t max_cached_bytes, size_t headroom, bint hugepages,
                               bint prefault, uint64_t reuse_window=*) except NULL nogil
cdef void cache_destroy(pgo_cache_t* c) noexcept nogil
# n bytes (page aligned); MemoryError when the system refuses, after the
# cached blocks were given back to it and the request tried again.
cdef void* cache_alloc(pgo_cache_t* c, size_t n) except NULL nogil
# NULL is a no-op; a foreign pointer or a double free raises AllocatorError.
cdef int cache_free(pgo_cache_t* c, void* p) except -1 nogil
# Gives every cached block back to the system; returns the bytes released.
cdef size_t cache_trim(pgo_cache_t* c) noexcept nogil
# The size class (bytes) a request of n bytes is served from; 0 on overflow.
cdef size_t cache_class_size(size_t n) noexcept nogil


cdef class CacheAllocator(Allocator):
    cdef pgo_cache_t* c
