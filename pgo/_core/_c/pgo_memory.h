/* What pgo asks of the system's memory, in one place: page sizes, the
   two size rules numpy's default handler follows (and so pgo's handler and
   allocators follow too), and the madvise flags older headers lack.
   numpy_bridge exports the two rules to Python as SMALL_BLOCK_BYTES and
   HUGEPAGE_MIN_BYTES; pgo's Python side is pinned to them by a test. */
#ifndef PGO_MEMORY_H
#define PGO_MEMORY_H

#include <stddef.h>
#include <sys/mman.h>

/* The system's page (mmap granularity, the unit of prefaulting). */
#define PGO_PAGE_BYTES ((size_t)4096)
/* A transparent huge page: big buffers start on one. */
#define PGO_HUGE_PAGE_BYTES ((size_t)1 << 21)

/* Small blocks: requests under this many bytes are kept per thread by the
   numpy handler's system path for reuse, and never served by a size-class
   cache (it serves from here up: this is its smallest class). */
#define PGO_SMALL_BLOCK_SHIFT 12
#define PGO_SMALL_BLOCK_BYTES ((size_t)1 << PGO_SMALL_BLOCK_SHIFT)

/* Buffers of this many bytes and more are advised MADV_HUGEPAGE, as numpy's
   default handler does for its arrays (4 MiB). */
#define PGO_HUGEPAGE_MIN_BYTES ((size_t)1 << 22)

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#endif
