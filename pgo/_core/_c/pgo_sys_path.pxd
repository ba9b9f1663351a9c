cdef extern from "pgo_sys_path.h" nogil:
    void* pgo_sys_path_alloc(size_t n, bint small_cache, bint huge, bint zero) noexcept
    int pgo_sys_path_free(void* p) noexcept
    void* pgo_sys_path_realloc(void* p, size_t n, bint huge) noexcept
    size_t pgo_small_count() noexcept
