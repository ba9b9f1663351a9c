# Where every pgo allocator gets its memory from the system, in one place so
# that out-of-memory can be injected by tests and counted.

cdef void* pgo_sys_alloc(size_t nbytes, size_t align) noexcept nogil
cdef void* pgo_sys_calloc(size_t count, size_t size) noexcept nogil
cdef void* pgo_sys_realloc(void* p, size_t count, size_t size) noexcept nogil
cdef void pgo_sys_free(void* p) noexcept nogil

# Address space reserved without memory behind it (PROT_NONE, MAP_NORESERVE),
# then committed piece by piece: an allocator that grows in place, so that a
# pointer's slot is one subtraction and a shift away.  Asks for `nbytes`,
# halving while the system refuses (valgrind, `ulimit -v`) down to
# `min_bytes`; `got` is what it reserved.  `raw`/`raw_len` are what
# pgo_sys_unreserve needs; the return value is aligned to `align`.
cdef char* pgo_sys_reserve(size_t nbytes, size_t min_bytes, size_t align, size_t* got,
                           void** raw, size_t* raw_len) noexcept nogil
cdef int pgo_sys_commit(char* p, size_t nbytes) noexcept nogil
cdef void pgo_sys_unreserve(void* raw, size_t raw_len) noexcept nogil

# Zero-filled memory mapped for `nbytes` (rounded up to whole pages), page
# aligned; with `huge`, 4 MiB and more are 2 MiB aligned and advised huge
# pages.  Given back with pgo_sys_unmap(p, nbytes).  NULL when refused.
cdef void* pgo_sys_map(size_t nbytes, bint huge) noexcept nogil
cdef void pgo_sys_unmap(void* p, size_t nbytes) noexcept nogil
