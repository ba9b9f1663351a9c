# numpy's data-memory handler API (NEP 49), as the handlers in
# numpy_bridge.pyx (the router) and recorder.pyx (the recorder) use it.
# The callbacks numpy calls are noexcept nogil: numpy calls some of them
# without the GIL.

from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t

cimport numpy as cnp


cdef extern from "numpy/arrayobject.h":
    ctypedef struct PyDataMemAllocator:
        void* ctx
        void* (*malloc)(void* ctx, size_t size) noexcept nogil
        void* (*calloc)(void* ctx, size_t nelem, size_t elsize) noexcept nogil
        void* (*realloc)(void* ctx, void* ptr, size_t new_size) noexcept nogil
        void (*free)(void* ctx, void* ptr, size_t size) noexcept nogil

    ctypedef struct PyDataMem_Handler:
        char name[127]
        uint8_t version
        PyDataMemAllocator allocator

    object PyDataMem_SetHandler(object handler)
    object PyDataMem_GetHandler()
    PyObject* PyArray_HANDLER(cnp.ndarray arr)
