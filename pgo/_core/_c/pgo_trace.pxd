from libc.stdint cimport uint32_t, uint64_t


cdef extern from "pgo_trace.h" nogil:
    const int PGO_TRACE_HEADER_BYTES
    const int PGO_TRACE_FOOTER_BYTES
    const int PGO_REC_BLOCK
    const int PGO_REC_MAX_LEVEL

    ctypedef struct pgo_event_t:
        pass

    ctypedef struct pgo_stream_t:
        int on
        int fd

    ctypedef struct pgo_stream_stats_t:
        int on
        uint32_t blocks, level
        uint64_t seen, recorded, written, write_errors, max_events
        uint64_t level_from[32]

    ctypedef struct pgo_trace_t:
        uint64_t t0
        pgo_stream_t np
        pgo_stream_t obj

    pgo_trace_t pgo_trace

    uint64_t pgo_now_ns() noexcept
    int pgo_trace_init() noexcept
    void pgo_trace_begin(uint64_t t0, int np_fd, uint64_t np_max_events,
                         int obj_fd, uint64_t obj_max_events) noexcept
    void pgo_trace_switch(bint np_on, bint obj_on) noexcept
    void pgo_trace_flush() noexcept
    void pgo_trace_finish() noexcept
    void pgo_trace_snapshot(pgo_stream_stats_t* np, pgo_stream_stats_t* obj) noexcept
    void pgo_trace_header(unsigned char* out, uint64_t t0) noexcept
    void pgo_trace_footer(unsigned char* out, uint32_t blocks, uint64_t written) noexcept
