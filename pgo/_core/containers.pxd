# GC-free containers: a typed growable array (Vector), an int64-keyed hash
# map (IntMap) and a byte buffer for building output (StringBuilder).  Each
# is a C struct with nogil functions (this file) under a thin Python class;
# elements are plain C values, never Python objects, so the garbage
# collector neither sees nor traverses them.
#
#   cdef pgo_vector_t* v = (<Vector>vec).v
#   with nogil:
#       vector_push_f64(v, 1.5)          # grows as needed; MemoryError when it cannot
#   cdef pgo_intmap_t* m = (<IntMap>counts).m
#   cdef int64_t n
#   with nogil:
#       if not intmap_get(m, key, &n): n = 0
#       intmap_set(m, key, n + 1)
#
# NOTE: the structs belong to their Python objects; C code may use them only
# while holding a reference to the object, and without the GIL only when no
# other thread uses the same container (they take no lock).

from libc.stdint cimport int64_t

from pgo._core._typedefs cimport pgo_backend_t

cdef enum:
    PGO_VEC_I64 = 0
    PGO_VEC_F64 = 1


ctypedef struct pgo_vector_t:
    char* data
    size_t length
    size_t capacity           # elements
    size_t itemsize
    int kind                  # PGO_VEC_I64 / PGO_VEC_F64
    bint fixed                # never grows: a push past capacity fails
    Py_ssize_t exports        # open buffer views: growing would move the data
    pgo_backend_t* be         # the allocator its data comes from; NULL: the system


ctypedef struct pgo_intmap_t:
    int64_t* keys             # EMPTY / TOMBSTONE mark free slots
    int64_t* values           # int64, or float64 bits
    size_t mask               # slots - 1 (a power of two)
    size_t used               # live keys in the table
    size_t filled             # live keys + tombstones
    bint has_empty_key        # the two marker keys themselves live apart
    bint has_tomb_key
    int64_t empty_value
    int64_t tomb_value
    bint floats               # values are float64


ctypedef struct pgo_sb_t:
    char* data
    size_t length
    size_t capacity
    Py_ssize_t exports


# Vector: 0, or -1 with MemoryError (cannot grow) / OverflowError (fixed
# and full) / BufferError (views are open and it would have to move).
cdef int vector_reserve(pgo_vector_t* v, size_t capacity) except -1 nogil
cdef int vector_push_i64(pgo_vector_t* v, int64_t x) except -1 nogil
cdef int vector_push_f64(pgo_vector_t* v, double x) except -1 nogil

# IntMap: get returns whether the key is there (the value in *out);
# set/delete return 0 / -1 with MemoryError; delete returns 1 if it removed.
cdef bint intmap_get(pgo_intmap_t* m, int64_t key, int64_t* out) noexcept nogil
cdef int intmap_set(pgo_intmap_t* m, int64_t key, int64_t value) except -1 nogil
cdef int intmap_delete(pgo_intmap_t* m, int64_t key) noexcept nogil
cdef size_t intmap_len(pgo_intmap_t* m) noexcept nogil

# StringBuilder: appends n bytes; 0, or -1 with MemoryError / BufferError.
cdef int sb_append(pgo_sb_t* b, const char* p, size_t n) except -1 nogil


cdef class Vector:
    cdef pgo_vector_t* v
    cdef object _dtype
    cdef pgo_backend_t _be
    cdef readonly object allocator    # keeps self._be's allocator alive
    cdef size_t _index(self, Py_ssize_t i) except? 0


cdef class IntMap:
    cdef pgo_intmap_t* m
    cdef readonly bint floats
    cdef size_t _version       # bumped when keys come or go: iteration checks it
    cdef int64_t _store(self, object value) except? -1
    cdef object _load(self, int64_t raw)


cdef class StringBuilder:
    cdef pgo_sb_t* b
