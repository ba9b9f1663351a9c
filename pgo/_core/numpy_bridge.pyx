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

Ownership and lifetime: a handler capsule owns a ``pgo_capsule_t`` (numpy's
handler struct and the context its callbacks get), which holds a reference
to the Router, which holds its allocators.  numpy keeps a reference to the
capsule in every array whose data it allocated, so allocators live until
the last such array is freed, whatever happens to the Python objects or to
the installed handler meanwhile.

Threads and the GIL: the callbacks are ``noexcept nogil`` C that never
touch the Python C-API.  numpy calls them with or without the GIL (realloc
runs without it in ``np.fromfile``), and frees run on whichever thread drops
the last reference, so every allocator behind a router must be made with
``threadsafe=True`` (the cache always is); the router's own counters are
atomics and the small-block cache is per thread.
"""

from cpython.pycapsule cimport (
    PyCapsule_CheckExact, PyCapsule_GetPointer, PyCapsule_IsValid, PyCapsule_New,
)
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from libc.stdint cimport uint8_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset, strncpy
cimport numpy as cnp

from pgo._core._base cimport Allocator, Block
from pgo._core._npy_handler cimport (
    PyArray_HANDLER, PyDataMem_GetHandler, PyDataMem_Handler, PyDataMem_SetHandler,
    PyDataMemAllocator,
)
from pgo._core._typedefs cimport (
    PGO_DEBUG_FILL, PGO_ERR_FOREIGN, PGO_OK, pgo_atomic_inc, pgo_atomic_load,
    pgo_atomic_store, pgo_backend_t, pgo_mul_overflow,
)
from pgo._core.slab cimport SlabAllocator

import contextvars
import threading

import numpy as np

from pgo._errors import ConfigError

cnp.import_array()


cdef extern from *:
    """
    #include <pthread.h>
    #include <stdint.h>
    #include <stdlib.h>
    #include <string.h>
    #include <sys/mman.h>

    /* The system path.  Every block from it starts with a 16-byte header
       (so data stays 16-byte aligned) saying that it is a system block and,
       for a small one, its bucket: a free then needs neither the size numpy
       passes (untrusted) nor malloc_usable_size.  Small blocks (requests
       under 4 KiB; bucket b serves 16*(b-1)+1 .. 16*b bytes) are kept for
       reuse in a per-thread cache, which needs no lock and no GIL.  numpy
       caches under 1 KiB; pgo goes further because its header would push
       requests just under 1 KiB past glibc's own per-thread cache (1032
       bytes).  At most 7 blocks per bucket: about 3.7 MB per thread at
       worst, numpy's own bound. */
    #define PGO_SMALL_MAX 4096
    #define PGO_SC_BUCKETS 257
    #define PGO_SC_DEPTH 7
    #define PGO_SYS_MAGIC 0x70676f53u   /* "pgoS" */
    typedef struct {
        uint32_t magic;
        uint32_t bucket;      /* 0: not a small block, never cached */
        uint64_t spare;
    } pgo_sys_hdr_t;

    /* One cache line per bucket: its count and its blocks, as numpy's is. */
    typedef struct {
        size_t n;
        pgo_sys_hdr_t *p[PGO_SC_DEPTH];
    } pgo_small_bucket_t;

    typedef struct {
        pgo_small_bucket_t b[PGO_SC_BUCKETS];
    } pgo_small_cache_t;

    #define PGO_SMALL_GONE ((pgo_small_cache_t *)1)
    /* initial-exec: one 8-byte slot, read with a single instruction instead
       of a __tls_get_addr call on every small allocation and free. */
    static __thread pgo_small_cache_t *pgo_tls_small __attribute__((tls_model("initial-exec")));
    static pthread_key_t pgo_small_key;
    static pthread_once_t pgo_small_once = PTHREAD_ONCE_INIT;

    static void pgo_small_destroy(void *arg) {
        /* Thread exit: the cached blocks go back to malloc.  Frees later in
           this thread's exit (other keys' destructors) bypass the cache. */
        pgo_small_cache_t *c = (pgo_small_cache_t *)arg;
        for (int b = 0; b < PGO_SC_BUCKETS; b++)
            for (size_t i = 0; i < c->b[b].n; i++)
                free(c->b[b].p[i]);
        free(c);
        pgo_tls_small = PGO_SMALL_GONE;
    }

    static void pgo_small_key_init(void) {
        pthread_key_create(&pgo_small_key, pgo_small_destroy);
    }

    static pgo_small_cache_t *pgo_small_get(void) {
        pgo_small_cache_t *c = pgo_tls_small;
        if (__builtin_expect(c != NULL, 1))
            return c == PGO_SMALL_GONE ? NULL : c;
        pthread_once(&pgo_small_once, pgo_small_key_init);
        if (posix_memalign((void **)&c, 64, sizeof(*c)) != 0)
            return NULL;
        memset(c, 0, sizeof(*c));
        if (pthread_setspecific(pgo_small_key, c) != 0) {
            free(c);
            return NULL;
        }
        pgo_tls_small = c;
        return c;
    }

    /* What numpy's default handler does for blocks of 4 MiB and more. */
    static inline void pgo_advise_huge(void *p, size_t n) {
        uintptr_t a, e;
        if (p == NULL || n < ((size_t)1 << 22))
            return;
        a = ((uintptr_t)p + 4095) & ~(uintptr_t)4095;
        e = (uintptr_t)p + n;
        if (e > a)
            madvise((void *)a, e - a, MADV_HUGEPAGE);
    }

    static inline void *pgo_sys_block(pgo_sys_hdr_t *h, uint32_t bucket) {
        if (h == NULL)
            return NULL;
        h->magic = PGO_SYS_MAGIC;
        h->bucket = bucket;
        return h + 1;
    }

    /* n > 0; zero: calloc semantics. */
    static inline void *pgo_sys_path_alloc(size_t n, int small_cache, int huge, int zero) {
        pgo_sys_hdr_t *h;
        if (n < PGO_SMALL_MAX && small_cache) {
            size_t b = (n + 15) >> 4;
            pgo_small_cache_t *c = pgo_small_get();
            if (c != NULL && c->b[b].n) {
                h = c->b[b].p[--c->b[b].n];
                if (zero)
                    memset(h + 1, 0, n);
                return pgo_sys_block(h, (uint32_t)b);
            }
            h = zero ? calloc(1, sizeof(pgo_sys_hdr_t) + (b << 4))
                     : malloc(sizeof(pgo_sys_hdr_t) + (b << 4));
            return pgo_sys_block(h, (uint32_t)b);
        }
        if (n > SIZE_MAX - sizeof(pgo_sys_hdr_t))
            return NULL;
        h = zero ? calloc(1, sizeof(pgo_sys_hdr_t) + n) : malloc(sizeof(pgo_sys_hdr_t) + n);
        if (huge)
            pgo_advise_huge(h, sizeof(pgo_sys_hdr_t) + n);
        return pgo_sys_block(h, 0);
    }

    /* 0, or -1 when p is not a system-path block (left alone). */
    static inline int pgo_sys_path_free(void *p) {
        pgo_sys_hdr_t *h = (pgo_sys_hdr_t *)p - 1;
        pgo_small_cache_t *c;
        if (__builtin_expect(h->magic != PGO_SYS_MAGIC, 0))
            return -1;
        if (h->bucket && (c = pgo_small_get()) != NULL && c->b[h->bucket].n < PGO_SC_DEPTH) {
            pgo_small_bucket_t *bk = &c->b[h->bucket];
            h->magic = 0;   /* cached: a second free of it is refused (set again when reused) */
            bk->p[bk->n++] = h;
            return 0;
        }
        h->magic = 0;
        free(h);
        return 0;
    }

    /* NULL with p untouched on failure (or when p is not a system block). */
    static inline void *pgo_sys_path_realloc(void *p, size_t n, int huge) {
        pgo_sys_hdr_t *h = (pgo_sys_hdr_t *)p - 1;
        if (h->magic != PGO_SYS_MAGIC || n > SIZE_MAX - sizeof(pgo_sys_hdr_t))
            return NULL;
        h = realloc(h, sizeof(pgo_sys_hdr_t) + n);
        if (huge)
            pgo_advise_huge(h, sizeof(pgo_sys_hdr_t) + n);
        /* Its size is no longer its bucket's: never cached. */
        return pgo_sys_block(h, 0);
    }

    /* Test hook: the calling thread's cached block count. */
    static size_t pgo_small_count(void) {
        pgo_small_cache_t *c = pgo_tls_small;
        size_t k = 0;
        if (c == NULL || c == PGO_SMALL_GONE)
            return 0;
        for (int b = 0; b < PGO_SC_BUCKETS; b++)
            k += c->b[b].n;
        return k;
    }
    """
    void* pgo_sys_path_alloc(size_t n, bint small_cache, bint huge, bint zero) noexcept nogil
    int pgo_sys_path_free(void* p) noexcept nogil
    void* pgo_sys_path_realloc(void* p, size_t n, bint huge) noexcept nogil
    size_t pgo_small_count() noexcept nogil


# -- the router, in C ---------------------------------------------------------

cdef inline void _sys_free(pgo_router_t* r, void* p) noexcept nogil:
    if pgo_sys_path_free(p) != 0:
        pgo_atomic_inc(&r.errors)     # not a block of ours: leaked, never freed blindly


cdef void* pgo_route_alloc(pgo_router_t* r, size_t n, bint routed) noexcept nogil:
    return _route_alloc(r, n, routed, False)


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
                if rt.be.take(rt.be.state, n, zero, &p) == PGO_OK:
                    pgo_atomic_inc(&rt.allocs)
                    return p
                pgo_atomic_inc(&r.fallback)
                break
    return pgo_sys_path_alloc(n, r.small_cache, r.hugepages, zero)


cdef void pgo_route_free(pgo_router_t* r, void* p) noexcept nogil:
    _route_free(r, p)


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
        err = be.give(be.state, p)
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
        if r.owners[i].span(r.owners[i].state, p):
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
        span = r.owners[i].span(r.owners[i].state, ptr)
        if span:
            # Moves to wherever a block of the new size is routed; on failure
            # the old block is untouched, as realloc promises.
            q = _route_alloc(r, new_size, pgo_atomic_load(&h.active) != 0, False)
            if q == NULL:
                return NULL
            memcpy(q, ptr, span if span < new_size else new_size)
            if r.owners[i].give(r.owners[i].state, ptr) != PGO_OK:
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
        """A Router from the ``[[numpy.size_class]]`` tables of a pgo config
        (a list of dicts, as ``tomllib`` reads them).

        Each entry: ``min_bytes`` (required), ``max_bytes`` (optional),
        ``allocator`` (one of ``cache``, ``slab``, ``arena``, ``linear``,
        ``stack``) and that allocator's settings (see ``CONFIG_KEYS``).

        Raises:
            pgo.ConfigError: naming ``source``, the entry and the valid
                choices, for unknown keys or allocators and bad values.
        """
        from pgo._core._routes import router_from_config
        return router_from_config(cls, entries, source=source, name=name)

    def __repr__(self):
        return f"<Router {self.name!r} {list(self.size_classes)!r}>"


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
_thread_hook_done = False


def _swap_handler(capsule):
    """Sets numpy's handler in this context and returns the one before:
    for a wrapper that keeps it in its own frame and puts it back (one C
    call each way, no stack of saved handlers as ``use`` needs)."""
    return PyDataMem_SetHandler(capsule)


def _patch_threads():
    # numpy gives every new thread the default handler (its ContextVar
    # starts empty there), so a thread started after install() sets pgo's
    # handler itself before running its target: threading.Thread and what
    # is built on it (concurrent.futures, multiprocessing.pool.ThreadPool).
    global _thread_hook_done
    if _thread_hook_done:
        return
    original = threading.Thread._bootstrap_inner

    def _bootstrap_inner(self):
        capsule = _thread_capsule
        try:
            if capsule is not None:
                PyDataMem_SetHandler(capsule)
        finally:
            original(self)          # whatever happened: Thread.start() waits for it

    threading.Thread._bootstrap_inner = _bootstrap_inner
    _thread_hook_done = True


cdef object _thread_capsule = None   # the handler threads started from now on take


def _set_thread_handler(capsule):
    """The handler capsule (or None: numpy's default) that threads started
    from now on take; returns the one before.  One hook for every pgo
    handler (install(), the profiler's recorder), so that the last one set
    wins whatever order they were set up in."""
    global _thread_capsule
    _patch_threads()
    previous = _thread_capsule
    _thread_capsule = capsule
    return previous


def _thread_handler():
    return _thread_capsule


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
        _set_thread_handler(capsule)
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
    if _thread_capsule is capsule:
        _set_thread_handler(None)
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
        # The profiler's recorder passes every call on to the handler it
        # wraps, which may be a pgo router: look there.
        from pgo._core import recorder
        inner = recorder._wrapped(capsule)
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


def _small_cache_count():
    """Test hook: small system blocks cached by the calling thread."""
    return pgo_small_count()
