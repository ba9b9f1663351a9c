from pgo._core._typedefs cimport pthread_mutex_t


cdef extern from "pgo_fork.h" nogil:
    int pgo_fork_hooks() noexcept
    ctypedef void (*pgo_fork_fn)() noexcept nogil
    int pgo_fork_add_inner(pgo_fork_fn prepare, pgo_fork_fn parent, pgo_fork_fn child) noexcept
    int pgo_fork_register(pthread_mutex_t* m) noexcept
    void pgo_fork_unregister(pthread_mutex_t* m) noexcept
