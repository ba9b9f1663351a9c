"""pgo's Cython core: allocators over malloc'd memory.

Python code uses the classes re-exported by :mod:`pgo`; Cython code can
``cimport pgo._core.stack`` (and ``linear``, ``arena``, ``slab``) for the
``nogil`` C-level API declared in the ``.pxd`` files shipped in the wheel.
"""
