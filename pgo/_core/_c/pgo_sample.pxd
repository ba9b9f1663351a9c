from libc.stdint cimport uint32_t, uint64_t


cdef extern from "pgo_sample.h" nogil:
    bint pgo_sample_keep(uint32_t level, uint64_t addr) noexcept
    uint32_t pgo_sample_pass_level(uint64_t addr) noexcept
