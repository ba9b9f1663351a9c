"""pgo allocators as numpy's data-memory handler (NEP 49).

Design: a ``Router`` is a table of size classes, each served by one pgo
allocator; a request outside every class, or one its allocator cannot serve
(exhausted: counted as a fallback), goes to the *system path*.  A custom
handler loses two things numpy's default handler does, so the system path
does them itself: blocks of 4 MiB and more are advised ``MADV_HUGEPAGE``
(when numpy's own switch for it is on), and blocks under 4 KiB are kept for
reuse in a small per-thread cache (numpy keeps one too; without it every
small array costs a malloc/free pair more).

A block is given back to whichever allocator's memory holds it: each
allocator answers from the pointer alone (an address range, then its own
block records), never from the size numpy passes to ``free``, which can
differ from the size allocated.  A pointer no allocator claims came from the
system path.

The system path (its small-block cache and huge-page advice) is C, in
``_c/pgo_sys_path.h``; the size rules it follows are exported here as
``SMALL_BLOCK_BYTES`` and ``HUGEPAGE_MIN_BYTES``.  The handler that threads
started later take is shared with the recorder through ``_handler_hook``.

# NOTE: ownership and lifetime.  A handler capsule owns a ``pgo_capsule_t``
# (numpy's handler struct and the context its callbacks get), which holds a
# reference to the Router, which holds its allocators.  numpy keeps a
# reference to the capsule in every array whose data it allocated, so
# allocators live until the last such array is freed, whatever happens to
# the Python objects or to the installed handler meanwhile.
# NOTE: threads and the GIL.  The callbacks are ``noexcept nogil`` C that
# never touch the Python C-API.  numpy calls them with or without the GIL
# (realloc runs without it in ``np.fromfile``), and frees run on whichever
# thread drops the last reference, so every allocator behind a router must
# be made with ``threadsafe=True`` (the cache always is); the router's own
# counters are atomics and the small-block cache is per thread.
"""

from cpython.pycapsule cimport (
    PyCapsule_CheckExact, PyCapsule_GetPointer, PyCapsule_IsValid, PyCapsule_New,
)
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, strncpy
cimport numpy as cnp

from pgo._core._base cimport Allocator, Block
from pgo._core._c.pgo_memory cimport PGO_HUGEPAGE_MIN_BYTES, PGO_SMALL_BLOCK_BYTES
from pgo._core._c.pgo_sys_path cimport (
    pgo_small_count, pgo_sys_path_alloc, pgo_sys_path_free, pgo_sys_path_realloc,
)
from pgo._core._npy_handler cimport (
    PyArray_HANDLER, PyDataMem_GetHandler, PyDataMem_Handler, PyDataMem_SetHandler,
)
from pgo._core._typedefs cimport (
    PGO_DEBUG_FILL, PGO_ERR_FOREIGN, PGO_OK, pgo_atomic_inc, pgo_atomic_load,
    pgo_atomic_store, pgo_backend_give, pgo_backend_span, pgo_backend_t, pgo_backend_take,
    pgo_mul_overflow,
)
from pgo._core.slab cimport SlabAllocator

import contextvars
import threading

import numpy as np

from pgo._core._handler_hook import set_thread_handler, thread_handler, wrapped_handler

cnp.import_array()

#: Requests under this many bytes are small blocks: the system path keeps
#: them per thread for reuse, and a size-class cache serves from here up.
SMALL_BLOCK_BYTES = PGO_SMALL_BLOCK_BYTES
#: Blocks of this many bytes and more are advised MADV_HUGEPAGE, as numpy's
#: default handler does.
HUGEPAGE_MIN_BYTES = PGO_HUGEPAGE_MIN_BYTES


# -- the router, in C ---------------------------------------------------------

cdef inline void _sys_free(pgo_router_t* r, void* p) noexcept nogil:
    if pgo_sys_path_free(p) != 0:
        pgo_atomic_inc(&r.errors)     # not a block of ours: leaked, never freed blindly


cdef inline void* _route_alloc(pgo_router_t* r, size_t n, bint routed, bint zero) noexcept nogil:
    # zero: calloc; each allocator (and the system path) zeroes only what
    # is not zero already.
    cdef void* p = NULL
    cdef size_t i
    cdef pgo_route_t* rt
    if n == 0:
        n = 1                       # a zero-size array still gets an address of its own
    if routed:
        for i in range(r.nroutes):
            rt = &r.routes[i]
            if rt.lo <= n and n <= rt.hi:
                if pgo_backend_take(&rt.be, n, zero, &p) == PGO_OK:
                    pgo_atomic_inc(&rt.allocs)
                    return p
                pgo_atomic_inc(&r.fallback)
                break
    return pgo_sys_path_alloc(n, r.small_cache, r.hugepages, zero)


cdef inline void _route_free(pgo_router_t* r, void* p) noexcept nogil:
    cdef size_t i
    cdef int err
    cdef pgo_backend_t* be
    if p == NULL:
        return
    for i in range(r.nowners):
        be = &r.owners[i]
        if <size_t>p < pgo_atomic_load(be.lo) or <size_t>p >= pgo_atomic_load(be.hi):
            continue                # not in its memory: no call, no lock
        err = pgo_backend_give(be, p)
        if err == PGO_OK:
            return
        if err != PGO_ERR_FOREIGN:
            # In an allocator's memory but not a live block of it: keeping
            # it is safe, handing it to free() or reusing it would not be.
            pgo_atomic_inc(&r.errors)
            return
    _sys_free(r, p)


cdef int pgo_route_owner(pgo_router_t* r, void* p) noexcept nogil:
    cdef size_t i
    for i in range(r.nowners):
        if pgo_backend_span(&r.owners[i], p):
            return <int>i
    return -1


# -- numpy's callbacks ------------------------------------------------------------

ctypedef struct pgo_capsule_t:
    PyDataMem_Handler handler
    pgo_router_t* router
    size_t active             # 0 once uninstall() turned this handler off
    PyObject* keep            # the Router: a strong reference


cdef void* _h_malloc(void* ctx, size_t size) noexcept nogil:
    cdef pgo_capsule_t* h = <pgo_capsule_t*>ctx
    return _route_alloc(h.router, size, pgo_atomic_load(&h.active) != 0, False)


cdef void* _h_calloc(void* ctx, size_t nelem, size_t elsize) noexcept nogil:
    cdef pgo_capsule_t* h = <pgo_capsule_t*>ctx
    cdef size_t n
    if pgo_mul_overflow(nelem, elsize, &n):
        return NULL
    return _route_alloc(h.router, n, pgo_atomic_load(&h.active) != 0, True)


cdef void* _h_realloc(void* ctx, void* ptr, size_t new_size) noexcept nogil:
    cdef pgo_capsule_t* h = <pgo_capsule_t*>ctx
    cdef pgo_router_t* r = h.router
    cdef size_t i, span
    cdef void* q
    if ptr == NULL:
        return _h_malloc(ctx, new_size)
    if new_size == 0:
        new_size = 1
    for i in range(r.nowners):
        span = pgo_backend_span(&r.owners[i], ptr)
        if span:
            # Moves to wherever a block of the new size is routed; on failure
            # the old block is untouched, as realloc promises.
            q = _route_alloc(r, new_size, pgo_atomic_load(&h.active) != 0, False)
            if q == NULL:
                return NULL
            memcpy(q, ptr, span if span < new_size else new_size)
            if pgo_backend_give(&r.owners[i], ptr) != PGO_OK:
                pgo_atomic_inc(&r.errors)
            return q
    return pgo_sys_path_realloc(ptr, new_size, r.hugepages)


cdef void _h_free(void* ctx, void* ptr, size_t size) noexcept nogil:
    # `size` is ignored on purpose: numpy's can differ from the size allocated.
    _route_free((<pgo_capsule_t*>ctx).router, ptr)


cdef void _capsule_destructor(object capsule) noexcept:
    # Runs (with the GIL) when the last array allocated through this handler
    # and every other reference to the capsule are gone.
    cdef pgo_capsule_t* h = <pgo_capsule_t*>PyCapsule_GetPointer(capsule, "mem_handler")
    if h == NULL:
        return
    Py_DECREF(<object>h.keep)
    free(h)


cdef pgo_capsule_t* _ours(object capsule):
    # The pgo context of a handler capsule, or NULL if it is not a pgo one.
    cdef PyDataMem_Handler* hd
    if not PyCapsule_IsValid(capsule, "mem_handler"):
        return NULL
    hd = <PyDataMem_Handler*>PyCapsule_GetPointer(capsule, "mem_handler")
    if hd.allocator.malloc != _h_malloc:
        return NULL
    return <pgo_capsule_t*>hd


# -- Python API ---------------------------------------------------------------------

class SizeClass:
    """Requests of ``min_bytes`` to ``max_bytes`` bytes (both inclusive;
    ``max_bytes=None``: no upper bound) go to ``allocator``.

    The allocator must be thread-safe (``threadsafe=True``; a CacheAllocator
    always is): numpy allocates and frees from any thread.
    """

    __slots__ = ("min_bytes", "max_bytes", "allocator")

    def __init__(self, min_bytes, max_bytes, allocator):
        if not isinstance(allocator, Allocator) or type(allocator) is Allocator:
            raise TypeError(f"SizeClass needs a pgo allocator, got {type(allocator).__name__}")
        if isinstance(min_bytes, bool) or not isinstance(min_bytes, int) or min_bytes < 0:
            raise ValueError(f"min_bytes must be an int >= 0, got {min_bytes!r}")
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int)
                                      or max_bytes < min_bytes):
            raise ValueError(f"max_bytes must be None or an int >= min_bytes ({min_bytes}), "
                             f"got {max_bytes!r}")
        object.__setattr__(self, "min_bytes", min_bytes)
        object.__setattr__(self, "max_bytes", max_bytes)
        object.__setattr__(self, "allocator", allocator)

    def __setattr__(self, name, value):
        # A Router copies its classes into C: a later change would not reach it.
        raise AttributeError(f"SizeClass is immutable; make a new one (and a new Router)")

    def __repr__(self):
        return f"SizeClass({self.min_bytes}, {self.max_bytes}, {self.allocator!r})"

    def __eq__(self, other):
        if not isinstance(other, SizeClass):
            return NotImplemented
        return ((self.min_bytes, self.max_bytes) == (other.min_bytes, other.max_bytes)
                and self.allocator is other.allocator)

    __hash__ = None


cdef size_t _hi(object max_bytes):
    return <size_t>-1 if max_bytes is None else <size_t>max_bytes


cdef class Router:
    """numpy's data memory, routed by request size to pgo allocators.

    Args:
        size_classes: SizeClass entries; ranges may not overlap.  A request
            in no class goes to the system path (malloc, with numpy's
            small-block cache and huge-page advice kept).
        name: the handler name numpy reports (``np.lib...get_handler_name``,
            ``pgo.handler_name``); at most 126 characters.
        small_cache: keep freed blocks under 4 KiB per thread for reuse, as
            numpy's default handler does (off in the test build, so that
            valgrind sees every free).

    A routed allocator that cannot serve a request (exhausted) does not fail
    it: the request goes to the system path and is counted in
    ``stats()["fallback"]``.  Use with ``pgo.use(router)`` (a block of code)
    or ``pgo.install(router)`` (the process, threads started later included).
    """

    cdef pgo_router_t* r
    cdef readonly tuple size_classes
    cdef readonly str name
    cdef tuple _owners               # the allocator of each r.owners[i]

    def __cinit__(self, size_classes=(), *, name="pgo", bint small_cache=True):
        cdef pgo_backend_t be
        cdef Allocator a
        cdef size_t i, k
        classes = tuple(size_classes)
        if not isinstance(name, str) or not name or len(name.encode()) > 126:
            raise ValueError(f"name must be a non-empty str of at most 126 bytes, got {name!r}")
        if len(classes) > PGO_MAX_ROUTES:
            raise ValueError(f"a Router takes at most {PGO_MAX_ROUTES} size classes, "
                             f"got {len(classes)}")
        for sc in classes:
            if not isinstance(sc, SizeClass):
                raise TypeError(f"Router takes SizeClass entries, got {type(sc).__name__}")
            _check_routable(sc)
        ordered = sorted(classes, key=lambda sc: sc.min_bytes)
        for prev, cur in zip(ordered, ordered[1:]):
            if prev.max_bytes is None or prev.max_bytes >= cur.min_bytes:
                raise ValueError(f"size classes overlap: {prev!r} and {cur!r}")
        self.r = <pgo_router_t*>calloc(1, sizeof(pgo_router_t))
        if self.r == NULL:
            raise MemoryError(f"Router: cannot allocate {sizeof(pgo_router_t)} bytes")
        owners = []
        for sc in ordered:
            a = <Allocator>sc.allocator
            a._backend(&be)
            i = self.r.nroutes
            self.r.routes[i].lo = sc.min_bytes
            self.r.routes[i].hi = _hi(sc.max_bytes)
            self.r.routes[i].be = be
            self.r.nroutes += 1
            if not any(o is a for o in owners):
                self.r.owners[len(owners)] = be
                owners.append(a)
        self.r.nowners = len(owners)
        self.r.hugepages = bool(np._core.multiarray._get_madvise_hugepage())
        self.r.small_cache = small_cache and not PGO_DEBUG_FILL
        self.size_classes = tuple(ordered)
        self._owners = tuple(owners)
        self.name = name

    def __dealloc__(self):
        # Every capsule holds a reference to this Router, so no handler that
        # points at self.r can still be called.
        free(self.r)

    cdef object _capsule(self):
        cdef pgo_capsule_t* h = <pgo_capsule_t*>calloc(1, sizeof(pgo_capsule_t))
        if h == NULL:
            raise MemoryError(f"Router: cannot allocate {sizeof(pgo_capsule_t)} bytes")
        bname = self.name.encode()
        strncpy(h.handler.name, bname, 126)
        h.handler.version = 1
        h.handler.allocator.ctx = h
        h.handler.allocator.malloc = _h_malloc
        h.handler.allocator.calloc = _h_calloc
        h.handler.allocator.realloc = _h_realloc
        h.handler.allocator.free = _h_free
        h.router = self.r
        h.active = 1
        h.keep = <PyObject*>self
        Py_INCREF(self)
        try:
            return PyCapsule_New(h, "mem_handler", _capsule_destructor)
        except BaseException:
            Py_DECREF(self)
            free(h)
            raise

    def owner_of(self, size_t address):
        """The allocator whose memory holds ``address``, or None (system path)."""
        cdef int i
        with nogil:
            i = pgo_route_owner(self.r, <void*>address)
        return None if i < 0 else self._owners[i]

    def stats(self):
        """A dict: ``name``, ``fallback`` (routed requests served by the
        system path because their allocator could not), ``errors`` (frees an
        allocator refused; always 0 unless something is wrong), and
        ``routes``: per size class its bounds, allocator and ``allocations``.
        """
        routes = []
        for i, sc in enumerate(self.size_classes):
            routes.append({"min_bytes": sc.min_bytes, "max_bytes": sc.max_bytes,
                           "allocator": type(sc.allocator).__name__,
                           "allocations": pgo_atomic_load(<size_t*>&self.r.routes[i].allocs)})
        return {"name": self.name,
                "fallback": pgo_atomic_load(<size_t*>&self.r.fallback),
                "errors": pgo_atomic_load(<size_t*>&self.r.errors),
                "routes": routes}

    @classmethod
    def from_config(cls, entries, *, source="<config>", name="pgo"):
        """A Router from ``[[numpy.size_class]]`` tables given as Python
        data: a list of dicts with ``min_bytes``, optional ``max_bytes``,
        ``allocator`` (``cache``, ``slab``, ``arena``, ``linear`` or
        ``stack``) and that allocator's settings (``pgo.config.SETTINGS``;
        one left out is the allocator class's default).  The tables are
        checked as a config file's are.

        Raises:
            pgo.ConfigError: a bad table, key, type or size, or an
                allocator that cannot be made; the message names ``source``
                and the entry.
        """
        if _config_reader is None:
            raise RuntimeError("Router.from_config reads pgo's config format: import "
                               "pgo.runtime.allocators first (pgo.Router does)")
        return _config_reader(cls, entries, source=source, name=name)

    def __repr__(self):
        return f"<Router {self.name!r} {list(self.size_classes)!r}>"


# NOTE: the config format is not _core's to know.  pgo.runtime.allocators
# (which `pgo.Router` imports) hands its reader in here, so the dependency
# runs from the runtime to _core and never back.
cdef object _config_reader = None


def set_config_reader(reader):
    """What ``Router.from_config`` calls: ``reader(cls, entries, *, source,
    name)``; set once by ``pgo.runtime.allocators``."""
    global _config_reader
    _config_reader = reader


def _check_routable(sc):
    cdef pgo_backend_t be
    cdef Allocator a = <Allocator>sc.allocator
    if a._backend(&be) != 0:
        raise TypeError(f"{a!r} cannot serve numpy arrays")
    if not a._lock.enabled:
        raise ValueError(f"{a!r} must be made with threadsafe=True to serve numpy arrays: "
                         f"numpy allocates and frees from any thread, some without the GIL")
    if isinstance(a, SlabAllocator):
        if sc.max_bytes is None or sc.max_bytes > (<SlabAllocator>a).s.block_size:
            raise ValueError(f"{sc!r}: the slab serves at most {(<SlabAllocator>a).s.block_size} "
                             f"bytes; give max_bytes <= block_size")
        if (<SlabAllocator>a).s.align < 16:
            raise ValueError(f"{a!r}: numpy data needs 16-byte alignment; make the slab "
                             f"with align=16")


cdef object _router_for(object target):
    if isinstance(target, Router):
        return target
    if isinstance(target, Allocator):
        hi = None
        if isinstance(target, SlabAllocator):
            hi = (<SlabAllocator>target).s.block_size
        return Router([SizeClass(0, hi, target)], name=f"pgo:{type(target).__name__}")
    raise TypeError(f"expected a pgo allocator or a Router, "
                    f"got {type(target).__name__}")


cdef object _checked_capsule(object target):
    cdef PyDataMem_Handler* hd
    if not PyCapsule_IsValid(target, "mem_handler"):
        name = "a capsule with another name" if PyCapsule_CheckExact(target) else "not a capsule"
        raise ValueError(f"not a numpy memory handler capsule ({name})")
    hd = <PyDataMem_Handler*>PyCapsule_GetPointer(target, "mem_handler")
    if hd.version != 1 or hd.allocator.malloc == NULL or hd.allocator.free == NULL \
            or hd.allocator.calloc == NULL or hd.allocator.realloc == NULL:
        raise ValueError(f"malformed numpy memory handler capsule (version {hd.version}, "
                         f"missing callbacks)")
    return target


class use:
    """Context manager: arrays created inside take their data from
    ``target`` (a pgo allocator, a Router, or a numpy handler capsule).

    On exit the previous handler is back.  Nestable, and one ``use`` object
    may be entered by several threads or asyncio tasks at once: like numpy's
    handler, what it saves and restores is per context (a ContextVar), so
    threads started inside do not inherit it (see ``pgo.install``).  Arrays
    made inside keep their allocator alive after the block ends.

        with pgo.use(pgo.ArenaAllocator(threadsafe=True)):
            y = np.sin(x) * 2        # temporaries and y come from the arena
    """

    __slots__ = ("capsule", "router")

    def __init__(self, target):
        if PyCapsule_CheckExact(target):
            self.capsule = _checked_capsule(target)
            self.router = None
        else:
            self.router = _router_for(target)
            self.capsule = (<Router>self.router)._capsule()
    def __enter__(self):
        previous = PyDataMem_SetHandler(self.capsule)
        _USE_STACK.set(_USE_STACK.get() + ((self, previous),))
        return self.router

    def __exit__(self, *exc):
        # The innermost entry of this object in this context.  (No negative
        # indices: this module is compiled with wraparound off.)
        stack = _USE_STACK.get()
        i = len(stack)
        while i > 0 and stack[i - 1][0] is not self:
            i -= 1
        if i == 0:
            raise RuntimeError("pgo.use: __exit__ without __enter__ in this context")
        _USE_STACK.set(stack[:i - 1] + stack[i:])
        PyDataMem_SetHandler(stack[i - 1][1])
        return False


# What each use() entered in this context saved: (use, previous handler),
# innermost last.  One variable for all of them, so a context holds one
# entry however many use() objects it has seen.
_USE_STACK = contextvars.ContextVar("pgo.use", default=())


def current_handler():
    """The numpy memory handler capsule in effect in this thread or task
    (numpy's own, or a pgo one); ``pgo.use()`` takes it back."""
    return PyDataMem_GetHandler()


# -- process-wide ------------------------------------------------------------------

cdef object _installed = None        # (router, capsule, previous handler)
_install_lock = threading.Lock()


def swap_handler(capsule):
    """Sets numpy's handler in this context and returns the one before:
    for a wrapper that keeps it in its own frame and puts it back (one C
    call each way, no stack of saved handlers as ``use`` needs)."""
    return PyDataMem_SetHandler(capsule)


def install(target):
    """Route numpy's data memory through ``target`` (a Router or a pgo
    allocator) in the whole process: this thread, and every
    ``threading.Thread`` started from now on (``concurrent.futures``
    workers included).  Threads already running keep their handler.

    Returns the Router.  Installing again replaces the previous one.  In a
    thread inside a ``with pgo.use(...)`` block, the block's exit puts back
    that thread's handler from before the block, as for any nested change.
    """
    global _installed
    router = _router_for(target)
    capsule = (<Router>router)._capsule()
    with _install_lock:
        if _installed is not None:
            _uninstall_locked()
        set_thread_handler(capsule)
        previous = PyDataMem_SetHandler(capsule)
        _installed = (router, capsule, previous)
    return router


cdef object _uninstall_locked():
    global _installed
    router, capsule, previous = _installed
    _installed = None
    # Threads that took this handler keep it, but it now sends every new
    # request to the system path: uninstall is process-wide too.  Blocks
    # already handed out still go back to their allocators.
    pgo_atomic_store(&_ours(capsule).active, 0)
    if thread_handler() is capsule:
        set_thread_handler(None)
    if PyDataMem_GetHandler() is capsule:
        PyDataMem_SetHandler(previous)
    return router


def uninstall():
    """Undo ``install()``: new arrays, in every thread, take their data from
    the system again (arrays alive keep theirs until they are freed).

    Returns the Router that was installed, or None if there was none.
    """
    with _install_lock:
        if _installed is None:
            return None
        return _uninstall_locked()


def installed():
    """The Router ``install()`` put in place, or None."""
    state = _installed
    return None if state is None else state[0]


# -- which handler and allocator own an array's memory ---------------------------

cdef object _data_owner(object array):
    # Follows .base to the object that owns the memory an array views.
    cdef object a = array
    cdef int depth = 0
    if not isinstance(a, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(array).__name__}")
    while depth < 1000:
        depth += 1
        if isinstance(a, np.ndarray):
            if cnp.PyArray_FLAGS(<cnp.ndarray>a) & cnp.NPY_ARRAY_OWNDATA or a.base is None:
                return a
            a = a.base
        elif isinstance(a, memoryview):
            a = a.obj
        else:
            return a
    return None


def handler_name(array):
    """The name of the numpy memory handler that allocated the memory
    ``array`` lives in (following views to their base): ``"pgo"`` or the
    Router's name for pgo, ``"default_allocator"`` for numpy's own, None
    when the memory was not allocated by a numpy handler (a pgo Block, a
    buffer from elsewhere).
    """
    owner = _data_owner(array)
    if isinstance(owner, np.ndarray) and cnp.PyArray_FLAGS(<cnp.ndarray>owner) & cnp.NPY_ARRAY_OWNDATA:
        return np._core.multiarray.get_handler_name(owner)
    return None


def owner(array):
    """The pgo allocator whose memory ``array`` lives in, or None.

    Works for arrays from an allocator's ``empty()``/``zeros()`` and for
    arrays numpy allocated through a pgo handler (``use``/``install``),
    views included.  None for memory from the system path or elsewhere.
    """
    cdef pgo_capsule_t* h
    cdef PyObject* cap
    cdef int i
    cdef void* data
    base = _data_owner(array)
    if isinstance(base, Block):
        return (<Block>base).allocator
    if not isinstance(base, np.ndarray) or not cnp.PyArray_FLAGS(<cnp.ndarray>base) & cnp.NPY_ARRAY_OWNDATA:
        return None
    cap = PyArray_HANDLER(<cnp.ndarray>base)
    if cap == NULL:
        return None
    capsule = <object>cap
    h = _ours(capsule)
    if h == NULL:
        # A wrapping handler (the profiler's recorder) passes every call on
        # to the handler it wraps, which may be a pgo router: look there.
        inner = wrapped_handler(capsule)
        if inner is None:
            return None
        h = _ours(inner)
        if h == NULL:
            return None
    data = cnp.PyArray_DATA(<cnp.ndarray>base)
    with nogil:
        i = pgo_route_owner(h.router, data)
    if i < 0:
        return None
    return (<Router><object>h.keep)._owners[i]


def _small_cache_count_for_tests():
    """Test-only: small system blocks cached by the calling thread."""
    return pgo_small_count()
