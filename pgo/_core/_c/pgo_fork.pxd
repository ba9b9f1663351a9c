from pgo._core._typedefs cimport pthread_mutex_t


cdef extern from "pgo_fork.h" nogil:
    int pgo_fork_hooks() noexcept
    int pgo_fork_register(pthread_mutex_t* m) noexcept
    void pgo_fork_unregister(pthread_mutex_t* m) noexcept
