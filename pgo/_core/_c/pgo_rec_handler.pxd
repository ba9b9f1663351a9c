from cpython.ref cimport PyObject


cdef extern from "pgo_rec_handler.h":
    object pgo_rec_handler_wrap(object inner)
    PyObject* pgo_rec_handler_inner(object capsule)
