# numpy's data-memory handler (NEP 49) over pgo allocators: the router, a
# table of size classes each served by one allocator, with everything else
# on a system path that keeps what numpy's default handler does (a small
# block cache, huge pages from 4 MiB).  The C-level API (the router's
# struct and the owner lookup) never raises, never needs the GIL and never
# touches the Python C-API.

from libc.stdint cimport uint64_t

from pgo._core._typedefs cimport pgo_backend_t

cdef enum:
    PGO_MAX_ROUTES = 16


ctypedef struct pgo_route_t:
    size_t lo                 # requests of lo..hi bytes (inclusive) go here
    size_t hi
    pgo_backend_t be
    uint64_t allocs           # atomic: blocks the route handed out


ctypedef struct pgo_router_t:
    size_t nroutes
    pgo_route_t routes[PGO_MAX_ROUTES]
    size_t nowners            # distinct allocators among the routes
    pgo_backend_t owners[PGO_MAX_ROUTES]
    bint hugepages            # madvise(MADV_HUGEPAGE) system blocks of 4 MiB and more
    bint small_cache          # keep small system blocks per thread for reuse
    uint64_t fallback         # atomic: routed requests the allocator could not serve
    uint64_t errors           # atomic: frees an owner refused (kept, never recycled)


# Index of the owner (r.owners) of p, or -1 for the system path.
cdef int pgo_route_owner(pgo_router_t* r, void* p) noexcept nogil
