# cython: binding=False
"""Block and Allocator: the Python face of every pgo allocator.

Design
------
a) Each allocator family (stack, linear, arena, slab) is a C struct plus
   ``nogil`` functions in its ``.pxd``; its ``cdef class`` derives from
   ``Allocator``, hands it numpy's entry points with the struct's stats and
   lock (``_be``), its alignments and the struct's destroy function
   (``_bind``) in ``__cinit__``, and fills in the hooks
   (``_c_alloc``, ``_c_free``, ``_c_dead``, ``_c_reset``).
   Everything users see -- ``alloc``, ``empty``, ``zeros``, ``free``,
   ``reset``, ``stats`` -- is written once, here, and so is ``__dealloc__``.
b) Python never sees a bare pointer.  ``alloc()`` returns a ``Block``, an
   object exporting the memory through the buffer protocol
   (``memoryview(block).obj is block``); ``empty()``/``zeros()`` return numpy
   arrays whose ``base`` is the Block.  The Block holds its allocator, so the
   allocator outlives every view of its memory.
c) A Block that dies without ``free()`` gives its memory back through
   ``_c_dead``: a slab slot is freed, a stack block is released once
   everything above it is gone, an arena chunk is reused once nothing in it
   is alive.  ``reset()`` refuses while any Block is alive and changes nothing
   before it refuses.

# NOTE: the module is compiled with binding=False: its methods are plain
# method descriptors rather than CyFunctions, which takes about 15 ns off
# every alloc()/free() call from Python (measured: alloc+free 70 -> 52 ns).

# NOTE: ownership.  A Block owns its allocation until it is freed or dies;
# it holds its Allocator, whose subclass owns the C struct behind _st and
# _lock.  The fork registry (_c/pgo_fork.c) holds the mutexes of
# Python-made threadsafe allocators while they live.  The one-buffer
# helpers (pgo_buffer_create) hand what they make to the caller.

# NOTE: thread-safety.  Python-level calls hold the GIL.  An allocator made
# with threadsafe=True also takes its mutex around every C hook, so C code
# calling the .pxd functions without the GIL can share it; a contended mutex
# is waited for with the GIL released (pgo_lock_gil_held).
"""

cimport cython
cimport numpy as cnp
from cpython.buffer cimport PyBuffer_FillInfo
from cpython.exc cimport PyErr_SetObject, PyErr_WriteUnraisable
from cpython.object cimport PyTypeObject
from cpython.ref cimport PyObject, Py_INCREF
from libc.stdint cimport SIZE_MAX, uintptr_t
from libc.string cimport memset

from pgo._core._c.pgo_fork cimport (
    pgo_fork_add_inner, pgo_fork_fn, pgo_fork_hooks, pgo_fork_register, pgo_fork_unregister,
)
from pgo._core._memory cimport pgo_sys_alloc, pgo_sys_calloc, pgo_sys_free
from pgo._core._typedefs cimport (
    PGO_DEBUG_FILL, PGO_ERR_ALIGN, PGO_ERR_DOUBLE_FREE, PGO_ERR_FOREIGN, PGO_ERR_INTERIOR,
    PGO_ERR_LIVE, PGO_ERR_NOMEM, PGO_ERR_ORDER, PGO_ERR_OVERFLOW, PGO_ERR_OVERRUN, PGO_ERR_PY_OWNED,
    PGO_ERR_TOO_BIG, PGO_FILL_FREE, PGO_MAX_ALIGN, PGO_OK, pgo_backend_init, pgo_backend_t,
    pgo_bad_align, pgo_canary_ok, pgo_lock_destroy, pgo_lock_gil_held, pgo_lock_init, pgo_lock_t,
    pgo_mul_overflow, pgo_stats_t, pgo_unlock, pgo_vg_create, pgo_vg_destroy, pgo_vg_noaccess,
)

import numpy as np

from pgo._errors import AllocatorError

cnp.import_array()

cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX
    bint PyIndex_Check(object o)
    # With exc=NULL, an out-of-range integer is clipped instead of raising.
    Py_ssize_t PyNumber_AsSsize_t(object o, PyObject* exc) except? -1

cdef extern from "numpy/arrayobject.h":
    bint PyDataType_REFCHK(cnp.dtype descr)
    # numpy's Cython declarations leave this one out; `descr` is a raw
    # PyObject* because the call steals the reference to it.
    ctypedef struct PyArray_Descr_t "PyArray_Descr":
        pass
    object PyArray_NewFromDescr(PyTypeObject* subtype, PyArray_Descr_t* descr, int nd,
                                cnp.npy_intp* dims, cnp.npy_intp* strides,
                                void* data, int flags, PyObject* obj)

#: True when built with PGO_TEST_BUILD=1 (bounds checks, NDEBUG off, fills).
DEBUG_BUILD = bool(PGO_DEBUG_FILL)

cdef enum:
    MAX_NDIM = 64
    BIG_MEMSET = 1048576        # zero bigger blocks with the GIL released (1 MiB)

cdef cnp.dtype _FLOAT64 = np.dtype(np.float64)
cdef pgo_stats_t _NO_STATS
cdef pgo_lock_t _NO_LOCK
cdef dict _DESCR_CACHE = {}


# What pgo_raise raises for each error code: the exception type and its
# message ({name}: the allocator; {nbytes} and {align}: the request).
cdef dict _ERRORS = {
    PGO_ERR_NOMEM: (MemoryError, "cannot allocate {nbytes:,} bytes"),
    PGO_ERR_TOO_BIG: (MemoryError, "{nbytes:,} bytes is more than it can ever hold"),
    PGO_ERR_OVERFLOW: (MemoryError, "size of {nbytes:,} bytes overflows with alignment {align}"),
    PGO_ERR_ALIGN: (ValueError, "alignment must be a power of two from 1 to 4096, got {align}"),
    PGO_ERR_FOREIGN: (AllocatorError, "pointer was not allocated here"),
    PGO_ERR_INTERIOR: (AllocatorError, "pointer is inside a block, not the start of one"),
    PGO_ERR_DOUBLE_FREE: (AllocatorError, "double free"),
    PGO_ERR_ORDER: (AllocatorError,
                    "free out of LIFO order (only the most recent block can be freed)"),
    PGO_ERR_LIVE: (AllocatorError, "reset while Python blocks are alive"),
    PGO_ERR_PY_OWNED: (AllocatorError, "block is owned by a Python Block; free() or drop "
                                       "that instead"),
    PGO_ERR_OVERRUN: (AllocatorError, "something wrote past the end of the block"),
}


cdef int pgo_raise(int code, const char* who, size_t nbytes, size_t align) except -1 with gil:
    exc_type, message = _ERRORS.get(code, (AllocatorError, "error code {code}"))
    raise exc_type(f"{who.decode()}: " + message.format(nbytes=nbytes, align=align, code=code))


cdef void _set_error(int code, const char* who, size_t nbytes, size_t align,
                     const void* p) noexcept:
    # GIL held.  Raises what pgo_raise (or, with an address, pgo_raise_at)
    # would, and leaves it set for the caller of the noexcept function
    # instead of reporting it as unraisable.
    try:
        if p != NULL:
            pgo_raise_at(code, who, p)
        else:
            pgo_raise(code, who, nbytes, align)
    except BaseException as e:
        PyErr_SetObject(type(e), e)


cdef int pgo_raise_at(int code, const char* who, const void* p) except -1 with gil:
    try:
        pgo_raise(code, who, 0, 0)
    except AllocatorError as e:
        raise AllocatorError(f"{e} (address {<uintptr_t>p:#x})") from None


cdef int pgo_fail_at(int code, const char* who, const void* p) noexcept nogil:
    with gil:
        _set_error(code, who, 0, 0, p)
    return -1


cdef int pgo_fail(int code, const char* who, size_t nbytes, size_t align) noexcept nogil:
    with gil:
        _set_error(code, who, nbytes, align, NULL)
    return -1


cdef void* pgo_fail_null(int code, const char* who, size_t nbytes, size_t align) noexcept nogil:
    with gil:
        _set_error(code, who, nbytes, align, NULL)
    return NULL


cdef void* pgo_buffer_create(size_t struct_size, size_t capacity, bint threadsafe,
                             const char* who) except NULL nogil:
    cdef pgo_buffer_t* b = <pgo_buffer_t*>pgo_sys_calloc(1, struct_size)
    if b == NULL:
        pgo_raise(PGO_ERR_NOMEM, who, struct_size, 0)
        return NULL
    b.base = <char*>pgo_sys_alloc(capacity, 64)
    if b.base == NULL:
        pgo_sys_free(b)
        pgo_raise(PGO_ERR_NOMEM, who, capacity, 64)
        return NULL
    if PGO_DEBUG_FILL:
        memset(b.base, PGO_FILL_FREE, capacity)
    pgo_vg_create(b)
    pgo_vg_noaccess(b.base, capacity)
    b.size = capacity
    b.lo = <size_t>b.base
    b.hi = <size_t>b.base + capacity
    b.stats.capacity = capacity
    pgo_lock_init(&b.lock, threadsafe)
    # Decided here, by pgo's own build, not by the build of whoever inlines
    # the .pxd paths.
    b.fast = not threadsafe and not PGO_DEBUG_FILL
    return b


cdef void pgo_buffer_destroy(void* state) noexcept nogil:
    cdef pgo_buffer_t* b = <pgo_buffer_t*>state
    if b == NULL:
        return
    pgo_vg_destroy(b)
    pgo_lock_destroy(&b.lock)
    pgo_sys_free(b.base)
    pgo_sys_free(b)


cdef inline size_t _size_arg(object n, str what) except? 0:
    # PyNumber_AsSsize_t with no exception type clips instead of raising, so
    # a huge request becomes an impossible size (MemoryError later), and a
    # non-integer raises TypeError as it does for np.empty.
    cdef Py_ssize_t v = PyNumber_AsSsize_t(n, NULL)
    if v < 0:
        raise ValueError(f"{what} must be >= 0, got {n!r}")
    if v == PY_SSIZE_T_MAX:
        raise MemoryError(f"{what} of {n:,} is more than any allocator can hold")
    return <size_t>v


cdef inline size_t _align_arg(object align) except? 0:
    cdef Py_ssize_t v = PyNumber_AsSsize_t(align, NULL)
    if v <= 0 or pgo_bad_align(<size_t>v):
        raise ValueError(f"alignment must be a power of two from 1 to 4096, got {align!r}")
    return <size_t>v


cdef inline cnp.dtype _descr(object dtype):
    cdef cnp.dtype d
    if dtype is None or dtype is float:
        return _FLOAT64
    if type(dtype) is type(_FLOAT64) or isinstance(dtype, cnp.dtype):
        d = <cnp.dtype>dtype
    else:
        try:
            d = _DESCR_CACHE.get(dtype)
        except TypeError:               # unhashable spec (a list of fields)
            return np.dtype(dtype)
        if d is None:
            d = np.dtype(dtype)
            if len(_DESCR_CACHE) < 256:
                _DESCR_CACHE[dtype] = d
    return d


@cython.no_gc
@cython.freelist(64)
@cython.final
cdef class Block:
    """One allocation: a writable buffer over allocator memory.

    ``memoryview(block)``, ``np.frombuffer(block, ...)`` and ``bytes(block)``
    all work, and so do ``block[i]``, ``block[i:j]`` (a memoryview) and
    ``block[i:j] = data``; each open view keeps the block alive.  A Block that is dropped
    without ``free()`` returns its memory to the allocator by itself.

    Attributes:
        allocator: the allocator that owns the memory.
        address: the start address (an int, for diagnostics).
        nbytes: the size asked for.
        exports: open buffer views.
        freed: True once ``allocator.free(block)`` succeeded.
    """

    def __init__(self):
        raise TypeError("Blocks come from an allocator's alloc(), empty() or zeros()")

    def __dealloc__(self):
        if not self.freed and self.allocator is not None:
            self.allocator._block_died(self)

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        if self.allocator is None:
            raise AllocatorError("this Block was not made by an allocator")
        if self.freed:
            raise AllocatorError(f"cannot view a freed block of {self.allocator!r}")
        PyBuffer_FillInfo(buffer, self, self.ptr, <Py_ssize_t>self.nbytes, 0, flags)
        self.exports += 1

    def __releasebuffer__(self, Py_buffer* buffer):
        self.exports -= 1

    def __len__(self):
        return self.nbytes

    def __getitem__(self, key):
        # Like a memoryview of bytes; a slice is a memoryview, which keeps an
        # export (and so the block) alive for as long as it lives.
        return memoryview(self)[key]

    def __setitem__(self, key, value):
        with memoryview(self) as view:
            view[key] = value

    @property
    def address(self):
        return <uintptr_t>self.ptr

    @property
    def nbytes(self):
        return self.nbytes

    @property
    def exports(self):
        return self.exports

    @property
    def freed(self):
        return self.freed

    def __repr__(self):
        if self.allocator is None:
            return "<pgo Block (not made by an allocator)>"
        if self.freed:
            return f"<pgo Block (freed) of {self.allocator!r}>"
        return (f"<pgo Block {self.nbytes} bytes at {<uintptr_t>self.ptr:#x} "
                f"({self.allocator._where(self.ptr)}) of {self.allocator!r}>")


# NOTE: fork().  Every threadsafe allocator's mutex is taken just before
# fork() and let go just after it, in parent and child alike, so the child
# never inherits a mutex some other thread held mid-operation (it would
# deadlock on it) or a structure half-way through a change.  This is done by
# pthread_atfork handlers, inside fork() itself, after CPython's own
# before-fork work: there the forking thread holds the GIL and runs no
# Python code, and every other holder of an allocator mutex is C code that
# lets it go without needing the GIL (the rule pgo_lock_gil_held keeps), so
# waiting for each mutex cannot deadlock.  (Taking them from an
# os.register_at_fork hook could: that waits with the GIL released while
# holding the mutexes taken so far, and numpy's callbacks block on those
# mutexes with the GIL held.)  The registry holds the mutexes of Python-made
# allocators (C callers of *_create own their own fork story).
if pgo_fork_hooks() != 0:
    raise ImportError("pgo: pthread_atfork failed; allocators could not be made fork-safe")


cdef int pgo_fork_inner(pgo_fork_fn prepare, pgo_fork_fn parent, pgo_fork_fn child) noexcept:
    return pgo_fork_add_inner(prepare, parent, child)


# What free() raises (AllocatorError) for a code; {where}: the block's place
# as the allocator names it, {address}: its address.
cdef dict _FREE_ERRORS = {
    PGO_ERR_ORDER: ("free of the block at {where} is out of LIFO order; free the blocks "
                    "allocated after it first"),
    PGO_ERR_DOUBLE_FREE: "double free of the block at {where}",
    PGO_ERR_INTERIOR: "{where} is inside a block, not the start of one",
    PGO_ERR_FOREIGN: "address {address:#x} was not allocated here",
}


cdef class Allocator:
    """Base of every pgo allocator; not instantiated directly.

    Subclasses: StackAllocator, LinearAllocator, ArenaAllocator,
    SlabAllocator, CacheAllocator, MappedPool, NUMAAllocator,
    HierarchicalAllocator, CompactingAllocator, AdaptiveAllocator.  See
    each for its allocation pattern.
    """

    def __cinit__(self, *args, **kwargs):
        # Until a subclass points these at its own struct (and forever for a
        # bare Allocator or a Python subclass of it), they point at empty
        # module-level ones, so no method ever dereferences NULL.
        self._st = &_NO_STATS
        self._lock = &_NO_LOCK
        self._min_align = 1
        self._max_align = PGO_MAX_ALIGN

    def __init__(self, *args, **kwargs):
        if type(self) is Allocator:
            raise TypeError("Allocator is abstract; use StackAllocator, LinearAllocator, "
                            "ArenaAllocator, SlabAllocator, CacheAllocator, MappedPool, "
                            "NUMAAllocator, HierarchicalAllocator, CompactingAllocator or "
                            "AdaptiveAllocator")
        if self._lock.enabled and not self._fork_registered:
            if pgo_fork_register(&self._lock.mutex) != 0:
                raise MemoryError("pgo: cannot register the allocator's mutex for fork()")
            self._fork_registered = True

    def __dealloc__(self):
        # NOTE: the subclasses have no __dealloc__ of their own: their struct
        # is freed here, through _destroy, after its mutex has left the
        # fork registry (a fork in between would lock freed memory).  A
        # __cinit__ that failed before _bind left nothing to free.
        self._fork_forget()
        if self._destroy != NULL:
            self._destroy(self._be.state)
            self._destroy = NULL

    cdef void _bind(self, pgo_destroy_fn destroy, size_t min_align, size_t max_align) noexcept:
        # After pgo_backend_init(&self._be, ...): the struct's stats and lock
        # are the backend's.
        self._st = self._be.stats
        self._lock = self._be.lock
        self._min_align = min_align
        self._max_align = max_align
        self._destroy = destroy

    cdef void _bind_buffer(self, pgo_buffer_t* b, pgo_alloc_fn take, pgo_holds_fn holds,
                           pgo_free_fn give, pgo_span_fn span, size_t min_align) noexcept:
        pgo_backend_init(&self._be, b, &b.lock, &b.stats, take, NULL, SIZE_MAX, holds, give, span,
                         &b.lo, &b.hi)
        self._bind(pgo_buffer_destroy, min_align, PGO_MAX_ALIGN)
        self._buffer = b.base

    cdef void _fork_forget(self) noexcept:
        if self._fork_registered:
            pgo_fork_unregister(&self._lock.mutex)
            self._fork_registered = False

    # -- hooks filled in by each allocator family ------------------------
    cdef int _c_alloc(self, size_t nbytes, size_t align, void** out, size_t* token) noexcept:
        return PGO_ERR_NOMEM

    cdef int _c_free(self, Block b) noexcept:
        return PGO_ERR_FOREIGN

    cdef void _c_dead(self, Block b) noexcept:
        pass

    cdef int _c_reset(self) noexcept:
        return PGO_OK

    cdef object _where(self, char* p):
        if self._buffer != NULL:
            return f"offset {p - self._buffer}"
        return f"address {<uintptr_t>p:#x}"

    cdef int _backend(self, pgo_backend_t* out) noexcept:
        if self._be.take_fn == NULL:
            return -1
        out[0] = self._be
        return 0

    cdef void _sync(self) noexcept:
        pass

    cdef size_t _canary_len(self, Block b) noexcept:
        return 0

    cdef bint _canary_broken(self, Block b) noexcept:
        # Test build only: the bytes after the block must still hold the fill.
        return PGO_DEBUG_FILL and not pgo_canary_ok(b.ptr + b.nbytes, self._canary_len(b))

    def _describe_nomem(self, size_t nbytes):
        cdef pgo_stats_t st = self._synced_stats()
        return (f"{self!r}: cannot allocate {nbytes:,} bytes "
                f"({st.in_use:,} of {st.capacity:,} bytes in use)")

    # -- shared machinery -------------------------------------------------
    cdef Block _block(self, size_t nbytes, size_t align):
        cdef void* p = NULL
        cdef size_t token = 0
        cdef int code
        if pgo_bad_align(align):
            raise ValueError(f"alignment must be a power of two from 1 to 4096, got {align}")
        if align < self._min_align:
            align = self._min_align
        # The Block exists before the memory does, so that a failure to make
        # it cannot leak an allocation.
        cdef Block b = Block.__new__(Block)
        pgo_lock_gil_held(self._lock, self._st)
        code = self._c_alloc(nbytes, align, &p, &token)
        if code == PGO_OK:
            self._st.live_blocks += 1
        pgo_unlock(self._lock)
        if code != PGO_OK:
            self._raise_alloc(code, nbytes, align)
        b.allocator = self
        b.ptr = <char*>p
        b.nbytes = nbytes
        b.token = token
        return b

    def _raise_alloc(self, int code, size_t nbytes, size_t align):
        if code == PGO_ERR_NOMEM:
            raise MemoryError(self._describe_nomem(nbytes))
        if code == PGO_ERR_TOO_BIG or code == PGO_ERR_OVERFLOW:
            raise MemoryError(f"{self!r}: {nbytes:,} bytes (alignment {align}) "
                              f"is more than it can ever hold")
        pgo_raise(code, type(self).__name__.encode(), nbytes, align)

    cdef void _block_died(self, Block b) noexcept:
        if PGO_DEBUG_FILL and self._canary_broken(b):
            # Nobody to raise to in a deallocator: report it as unraisable.
            PyErr_SetObject(AllocatorError, self._overrun(b))
            PyErr_WriteUnraisable(self)
        pgo_lock_gil_held(self._lock, self._st)
        self._c_dead(b)
        self._st.live_blocks -= 1
        pgo_unlock(self._lock)

    cdef object _array(self, object shape, object dtype, object order, size_t align, bint zero):
        cdef cnp.npy_intp dims[MAX_NDIM]
        cdef int nd, i, flags
        cdef size_t nbytes, d
        cdef cnp.dtype descr = _descr(dtype)
        if PyDataType_REFCHK(descr):
            raise TypeError(f"dtype {descr} holds Python object references; pgo allocators "
                            f"hand out raw memory, so only plain data dtypes are supported")
        nbytes = <size_t>descr.itemsize
        if isinstance(shape, int) or (PyIndex_Check(shape) and getattr(shape, "ndim", 0) == 0):
            nd = 1
            d = _size_arg(shape, "array dimensions")
            dims[0] = <cnp.npy_intp>d
            if pgo_mul_overflow(nbytes, d, &nbytes):
                raise MemoryError(f"array of shape ({shape},) and dtype {descr} is too big")
        else:
            shape = tuple(shape)
            nd = len(shape)
            if nd > MAX_NDIM:
                raise ValueError(f"maximum supported dimension is {MAX_NDIM}, got {nd}")
            for i in range(nd):
                d = _size_arg(shape[i], "array dimensions")
                dims[i] = <cnp.npy_intp>d
                if pgo_mul_overflow(nbytes, d, &nbytes):
                    raise MemoryError(f"array of shape {shape} and dtype {descr} is too big")
        if nbytes > <size_t>PY_SSIZE_T_MAX:
            raise MemoryError(f"array of shape {shape} and dtype {descr} is too big")
        if order is None or order == "C":
            flags = cnp.NPY_ARRAY_CARRAY
        elif order == "F":
            flags = cnp.NPY_ARRAY_FARRAY
        else:
            raise ValueError(f"order must be 'C' or 'F', got {order!r}")
        cdef Block b = self._block(nbytes, align)
        b.backs_array = True
        if zero:
            if nbytes >= BIG_MEMSET:
                with nogil:
                    memset(b.ptr, 0, nbytes)
            else:
                memset(b.ptr, 0, nbytes)
        Py_INCREF(descr)
        arr = PyArray_NewFromDescr(<PyTypeObject*>cnp.ndarray, <PyArray_Descr_t*>descr, nd, dims,
                                   NULL, b.ptr, flags, NULL)
        cnp.set_array_base(arr, b)
        return arr

    # -- public API -------------------------------------------------------
    def alloc(self, nbytes, align=None):
        """Allocate `nbytes` bytes aligned to `align` and return a Block.

        Args:
            nbytes: size in bytes, >= 0.  ``alloc(0)`` returns a valid,
                zero-length Block with an address of its own; it is freed like
                any other.
            align: a power of two from 1 to 4096; by default 16 (or the
                allocator's largest alignment, if smaller).

        Returns:
            A Block: ``memoryview(block)`` is a writable view of the memory.

        Raises:
            MemoryError: the allocator is exhausted (the message names the
                byte count) or the size is impossible.
            ValueError: `align` is not a power of two up to 4096, or `nbytes`
                is negative.
        """
        cdef size_t a
        if align is None:
            a = 16 if self._max_align >= 16 else self._max_align
        else:
            a = _align_arg(align)
        return self._block(_size_arg(nbytes, "nbytes"), a)

    def empty(self, shape, dtype=None, order="C", align=None):
        """A new uninitialized numpy array over this allocator's memory.

        Like ``np.empty(shape, dtype, order)``; ``arr.base`` is the Block, and
        dropping the last array (or view) of it gives the memory back.
        `align` defaults to 64 (or the allocator's largest alignment, if
        smaller).  Object dtypes are refused (TypeError).
        """
        return self._array(shape, dtype, order, self._array_align(align), False)

    def zeros(self, shape, dtype=None, order="C", align=None):
        """Like ``empty()``, with the memory set to zero."""
        return self._array(shape, dtype, order, self._array_align(align), True)

    cdef size_t _array_align(self, object align) except? 0:
        if align is None:
            return 64 if self._max_align >= 64 else self._max_align
        return _align_arg(align)

    @cython.always_allow_keywords(False)
    def free(self, block):
        """Give back a Block from ``alloc()``.

        Raises:
            AllocatorError: the block was already freed, belongs to another
                allocator, still has open views, backs a numpy array, or (for
                a stack) is not the most recent block.  Nothing changes when
                it raises.
            TypeError: `block` is not a Block.
        """
        cdef Block b
        cdef int code
        if (type(block) is Block and (<Block>block).allocator is self
                and not (<Block>block).freed and not (<Block>block).exports
                and not (<Block>block).backs_array and not PGO_DEBUG_FILL):
            b = <Block>block            # the common case: every check passes
        else:
            b = self._check_free(block)
            self._check_releasable(b)
        pgo_lock_gil_held(self._lock, self._st)
        # Checked again under the mutex: taking it may have released the
        # GIL, and another thread may have freed the block or opened a view
        # on it meanwhile.  `freed` is set before the mutex is let go.
        if b.freed or b.exports:
            pgo_unlock(self._lock)
            self._check_free(b)
            self._check_releasable(b)
            raise AllocatorError(f"{self!r}: another thread used the block while it was "
                                 f"being freed; nothing was freed")
        code = self._c_free(b)
        if code == PGO_OK:
            self._st.live_blocks -= 1
            b.freed = True
        pgo_unlock(self._lock)
        if code != PGO_OK:
            self._raise_free(code, b)

    cdef int _check_releasable(self, Block b) except -1:
        if b.exports:
            raise AllocatorError(f"{self!r}: block at {self._where(b.ptr)} still has "
                                 f"{b.exports} open buffer view(s); release them first")
        if b.backs_array:
            raise AllocatorError(f"{self!r}: block at {self._where(b.ptr)} backs a numpy array; "
                                 f"it is freed when the array is dropped")
        if PGO_DEBUG_FILL and self._canary_broken(b):
            raise self._overrun(b)
        return 0

    def _overrun(self, Block b):
        return AllocatorError(f"{self!r}: something wrote past the end of the "
                              f"{b.nbytes}-byte block at {self._where(b.ptr)}")

    cdef Block _check_free(self, object block):
        # The Block `block`, if this allocator may free it; else raises.
        cdef Block b
        if type(block) is not Block:
            if isinstance(block, np.ndarray):
                raise TypeError("free() takes a Block from alloc(); numpy arrays from "
                                "empty()/zeros() give their memory back when the last "
                                "reference to them is dropped")
            raise TypeError(f"free() takes a Block from alloc(), got {type(block).__name__}")
        b = <Block>block
        if b.allocator is not self:
            raise AllocatorError(f"{self!r}: block belongs to {b.allocator!r}, free it there")
        if b.freed:
            raise AllocatorError(f"{self!r}: double free of the {b.nbytes}-byte block "
                                 f"at {self._where(b.ptr)}")
        return b

    cdef int _refuse_free(self, object block, str instead) except -1:
        # free() of the allocators that have none (linear, arena): a misused
        # block is reported as such (a foreign one names its owner), any
        # other is told what to do `instead`.
        self._check_free(block)
        raise AllocatorError(f"{self!r} has no individual free; {instead}")

    def _raise_free(self, int code, Block b):
        message = _FREE_ERRORS.get(code)
        if message is None:
            pgo_raise(code, type(self).__name__.encode(), b.nbytes, 0)
        raise AllocatorError(f"{self!r}: " + message.format(
            where=self._where(b.ptr), address=<uintptr_t>b.ptr))

    def reset(self):
        """Release everything at once.

        Raises:
            AllocatorError: Blocks or arrays from this allocator are still
                alive; the message gives their number and nothing is changed.
        """
        cdef int code
        cdef Py_ssize_t live
        pgo_lock_gil_held(self._lock, self._st)
        live = self._st.live_blocks
        code = PGO_ERR_LIVE if live else self._c_reset()
        pgo_unlock(self._lock)
        if code == PGO_ERR_LIVE:
            raise AllocatorError(
                f"{self!r}: cannot reset while {live} block(s) or array(s) from it are "
                f"alive; drop them (del, then gc.collect() if they are in a cycle) first")
        if code != PGO_OK:
            pgo_raise(code, type(self).__name__.encode(), 0, 0)

    def stats(self):
        """A dict of counters and ratios.

        Keys: ``in_use`` (bytes consumed now, padding included), ``peak``,
        ``capacity`` (bytes reserved from the system), ``allocations``,
        ``frees``, ``resets``, ``failed``, ``live_blocks``, ``requested``
        and ``lost`` (bytes asked for / lost to alignment, headers and
        rounding since the last reset), ``fragmentation`` (lost over
        requested + lost), ``utilization`` (in_use over capacity),
        ``contention`` (lock acquisitions that had to wait), plus
        allocator-specific keys.
        """
        cdef pgo_stats_t st = self._synced_stats()
        extra = self._extra_stats()
        consumed = st.requested + st.lost
        out = {
            "allocator": type(self).__name__,
            "in_use": st.in_use,
            "peak": st.peak,
            "capacity": st.capacity,
            "allocations": st.allocs,
            "frees": st.frees,
            "resets": st.resets,
            "failed": st.failed,
            "live_blocks": st.live_blocks,
            "requested": st.requested,
            "lost": st.lost,
            "fragmentation": <double>st.lost / consumed if consumed else 0.0,
            "utilization": <double>st.in_use / st.capacity if st.capacity else 0.0,
            "contention": st.contention,
            "threadsafe": bool(self._lock.enabled),
        }
        out.update(extra)
        return out

    def _extra_stats(self):
        return {}

    @property
    def capacity(self):
        """Bytes reserved from the system."""
        return self._st.capacity

    cdef pgo_stats_t _synced_stats(self) noexcept:
        # A consistent copy, derived fields included.
        # NOTE: no Python code may run while the mutex is held: a GC pass
        # could drop a Block, whose release takes the same mutex.
        cdef pgo_stats_t st
        pgo_lock_gil_held(self._lock, self._st)
        self._sync()
        st = self._st[0]
        pgo_unlock(self._lock)
        return st

    @property
    def in_use(self):
        """Bytes consumed now, alignment padding and headers included."""
        return self._synced_stats().in_use

    @property
    def peak(self):
        return self._synced_stats().peak

    @property
    def live_blocks(self):
        """Blocks and arrays from this allocator that are still alive."""
        return self._st.live_blocks

    @property
    def threadsafe(self):
        return bool(self._lock.enabled)
