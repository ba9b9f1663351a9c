# CompactingAllocator: small blocks whose memory goes back to the system
# without moving any of them, as Mesh does (Powers et al., PLDI 2019).
#
#   cdef pgo_compact_t* s = compact_create(0, 150, False)
#   cdef void* p = compact_alloc(s, 100)      # a 112-byte class slot
#   compact_free(s, p)                         # double free / interior / foreign: AllocatorError
#   compact_compact(s)                         # mesh spans, give back pages
#   compact_destroy(s)
#
# Blocks of one size class live in spans (one page or more) of a memfd
# mapped MAP_SHARED at a reserved range, span i's pages at file offset =
# its offset in the range.  compact() looks for spans of a class whose live
# slots do not overlap, copies the live blocks of one into the other's
# pages at the same offsets, maps the first span's addresses onto the
# second's file pages and punches the first's pages out of the file: two
# (or more) virtual spans, one physical span.  No pointer changes.
#
# A physical span is a "heap": the union of its virtual spans' slots,
# allocation finds a free slot there and hands it out at the address of
# its first span.  Each virtual span keeps the slots handed out at its own
# addresses, so a free through an alias of a live slot is a double free,
# not a silent one.
#
# Every entry point takes the allocator's lock (threadsafe=True) or relies
# on the GIL / a single user; nothing is inline.  compact() must not run
# while another thread writes into this allocator's blocks: it copies them.

from libc.stdint cimport uint8_t, uint32_t, uint64_t

from pgo._core._base cimport Allocator
from pgo._core._typedefs cimport pgo_lock_t, pgo_stats_t

cdef enum:
    COMPACT_NCLASSES = 36
    COMPACT_MAX_SMALL = 16384      # the largest class (config.COMPACTING_MAX_BYTES)
    COMPACT_MAX_SLOTS = 256        # slots per span: four bitmap words
    COMPACT_MAX_MESH = 64          # virtual spans on one physical span


ctypedef struct pgo_cspan_t:      # a virtual span: pages of the reserved range
    uint64_t used[4]              # slots handed out at this span's addresses
    uint64_t py[4]                # of those, owned by a Python Block or an array
    uint32_t heap                 # its physical span (NIL: retired)
    uint32_t next                 # the next span on the same heap, or in the free list
    uint32_t first_page           # its first page in the range
    uint8_t cls
    uint8_t remapped              # its pages map another span's file pages


ctypedef struct pgo_cheap_t:      # a physical span and the virtual spans on it
    uint64_t used[4]              # union of its spans' used
    uint32_t live                 # slots in use
    uint32_t nspans
    uint32_t first_span           # the span whose file pages these are; blocks go out there
    uint32_t next_partial         # link in its class's list of heaps with free slots
    uint8_t cls
    uint8_t listed                # in that list
    uint8_t alive                 # 0: a free heap record (next_partial links the free ones)


ctypedef struct pgo_cclass_t:
    uint32_t size                 # bytes a slot holds
    uint32_t slots                # slots a span holds
    uint32_t pages                # pages a span takes
    uint64_t full[4]              # the bits of slots 0..slots-1
    uint32_t current              # the heap allocation fills (NIL: none)
    uint32_t partial              # heaps with free slots (NIL ends)
    uint32_t free_spans           # retired virtual spans (NIL ends)
    uint64_t live                 # slots in use in the class


ctypedef struct pgo_compact_t:
    char* base                    # the reserved range, mapped from fd
    size_t reserve                # its bytes
    int fd                        # the memfd behind it
    size_t brk_pages              # pages handed to spans so far
    size_t max_pages              # pages max_bytes (or the range) allows
    size_t max_bytes              # 0: no limit but the range
    uint32_t* page_span           # span id + 1 of each page (0: none); mapped, lazily touched
    size_t page_span_bytes
    pgo_cspan_t* spans
    size_t nspans, cap_spans
    pgo_cheap_t* heaps
    size_t nheaps, cap_heaps
    uint32_t free_heaps
    pgo_cclass_t classes[COMPACT_NCLASSES]
    size_t resident               # bytes of live heaps' pages (the most RSS they take)
    size_t live_bytes             # class bytes of the blocks handed out
    size_t peak_live
    size_t fragmentation_percent  # maybe_compact's trigger: resident / live above it
    uint64_t meshes               # spans merged onto another's pages, in all
    uint64_t compactions
    uint64_t released_bytes       # given back by compaction, in all
    uint64_t mesh_failures        # meshes undone because the system refused a mapping
    size_t remapped_spans         # spans now mapping another's pages (one mapping each)
    size_t lo, hi                 # the range's addresses
    void* next_allocator          # the fork registry's list
    bint fork_locks               # fork() takes `lock` here: a threadsafe allocator made
                                  # from C, whose mutex the Python registry does not know
    pgo_stats_t stats
    pgo_lock_t lock


# What one compact() did.
ctypedef struct pgo_compact_result_t:
    size_t meshed                 # virtual spans moved onto another's pages
    size_t emptied                # empty physical spans given back
    size_t released_bytes
    size_t resident_before, resident_after, live_bytes


# NULL with the exception set (MemoryError / OSError) on failure.
cdef pgo_compact_t* compact_create(size_t max_bytes, size_t fragmentation_percent,
                                   bint threadsafe) except NULL
cdef void compact_destroy(pgo_compact_t* s) noexcept nogil
# A block of n (0..COMPACT_MAX_SMALL) bytes, 16-byte aligned; NULL with
# MemoryError set (over COMPACT_MAX_SMALL too: "more than it can ever
# hold").  (From Python, any alignment up to 4096: a class whose size is a
# multiple of it.)
cdef void* compact_alloc(pgo_compact_t* s, size_t n) except NULL nogil
# 0, or -1 with AllocatorError set (double free, interior, foreign, a
# Python-owned block); NULL is a no-op.
cdef int compact_free(pgo_compact_t* s, void* p) except -1 nogil
# Meshes and gives back; 0, or -1 with the exception set.  Safe point: no
# other thread may write into the allocator's blocks while it runs.
cdef int compact_compact(pgo_compact_t* s, pgo_compact_result_t* out) except -1 nogil


cdef class CompactingAllocator(Allocator):
    cdef pgo_compact_t* s
