from cpython.ref cimport PyObject
from libc.stdint cimport uint32_t


cdef extern from "pgo_sites.h":
    const int PGO_SITES_MAX_PREFIX

    ctypedef struct pgo_site_t:
        PyObject* code
        PyObject* module
        int line

    ctypedef struct pgo_sites_t:
        pgo_site_t* sites
        uint32_t nsites

    pgo_sites_t pgo_sites

    int pgo_sites_begin() except -1
    int pgo_sites_add_prefix(const char* p, size_t n, bint is_site) except -1
    uint32_t pgo_site() noexcept nogil
    void pgo_sites_clear()
