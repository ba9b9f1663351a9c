"""pgo's Cython core: allocators over malloc'd memory.

Python code uses the classes re-exported by :mod:`pgo`; Cython code can
``cimport pgo._core.stack`` (and ``linear``, ``arena``, ``slab``, ``cache``,
``mapped``, ``numa``, ``hier``, ``compact``, ``adaptive``, ``containers``) for the ``nogil`` C-level API declared in the ``.pxd`` files
shipped in the wheel.  Those declarations include pgo's C headers, shipped
in ``pgo/_core/_c/``: ``cythonize`` finds them by itself (it adds the
directory of a ``.pxd``'s headers to the include path); a build that calls
the C compiler some other way adds ``get_include()`` to its include dirs,
as it does ``numpy.get_include()``.
"""

import os


def get_include() -> str:
    """The directory of pgo's C headers (``pgo_defs.h`` and the others)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "_c")
