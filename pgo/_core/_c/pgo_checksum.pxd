from libc.stdint cimport uint32_t


cdef extern from "pgo_checksum.h" nogil:
    uint32_t pgo_checksum(const void* data, size_t n) noexcept
