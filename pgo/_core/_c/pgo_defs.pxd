from libc.stdint cimport uint64_t


cdef extern from "pgo_defs.h" nogil:
    # 1 in the test build (PGO_TEST_BUILD=1): blocks are filled with
    # PGO_FILL_ALLOC when handed out and PGO_FILL_FREE when given back.
    const int PGO_DEBUG_FILL
    const int PGO_FILL_ALLOC
    const int PGO_FILL_FREE
    const size_t PGO_CANARY
    const size_t PGO_MAX_ALIGN
    const int PGO_VALGRIND
    void pgo_vg_create(const void* pool) noexcept
    void pgo_vg_destroy(const void* pool) noexcept
    void pgo_vg_alloc(const void* pool, const void* p, size_t n) noexcept
    void pgo_vg_free(const void* pool, const void* p) noexcept
    void pgo_vg_trim(const void* pool, const void* p, size_t n) noexcept
    void pgo_vg_noaccess(const void* p, size_t n) noexcept
    # The allocator's own access to a freed block (its free-list link).
    void pgo_vg_defined(const void* p, size_t n) noexcept
    bint pgo_likely(bint) noexcept
    bint pgo_unlikely(bint) noexcept
    bint pgo_mul_overflow(size_t a, size_t b, size_t* out) noexcept
    bint pgo_add_overflow(size_t a, size_t b, size_t* out) noexcept
    size_t pgo_atomic_load(size_t* p) noexcept
    void pgo_atomic_store(size_t* p, size_t v) noexcept
    void pgo_atomic_inc(uint64_t* p) noexcept
