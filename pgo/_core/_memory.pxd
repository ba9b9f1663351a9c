# Where every pgo allocator gets its memory from the system, in one place so
# that out-of-memory can be injected by tests and counted.

cdef void* pgo_sys_alloc(size_t nbytes, size_t align) noexcept nogil
cdef void* pgo_sys_calloc(size_t count, size_t size) noexcept nogil
cdef void* pgo_sys_realloc(void* p, size_t count, size_t size) noexcept nogil
cdef void pgo_sys_free(void* p) noexcept nogil
