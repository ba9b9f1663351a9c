from libc.stdint cimport uint64_t


cdef extern from "pgo_objsampler.h":
    void pgo_objs_start(double rate, uint64_t seed)
    void pgo_objs_stop()
    size_t pgo_objs_live()
