cdef extern from "pgo_memory.h" nogil:
    const size_t PGO_PAGE_BYTES
    const size_t PGO_HUGE_PAGE_BYTES
    const int PGO_SMALL_BLOCK_SHIFT
    const size_t PGO_SMALL_BLOCK_BYTES
    const size_t PGO_HUGEPAGE_MIN_BYTES
    const int MADV_POPULATE_WRITE
    const int MADV_NOHUGEPAGE
