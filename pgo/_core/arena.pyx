"""ArenaAllocator: chunked bump allocation, reused chunk by chunk.

Design: allocation bumps a pointer in the current chunk (inline in
``arena.pxd``); when it is full the slow path here reuses a chunk with
nothing alive in it, or mallocs a new one (``chunk_size``, or larger for a
big request) while ``max_bytes`` allows.  Each chunk counts its live blocks;
a dropped Python Block (or ``arena_release`` from C) decrements the count,
and at zero the chunk's bump pointer goes back to 0.  So a loop of scoped
temporaries runs in steady state without any explicit reset, and a chunk
is never reused while anything in it is alive.

Ownership: the ``pgo_arena_t``, its chunk table and every chunk belong to
the ArenaAllocator object (or to the C caller of ``arena_create``); chunks
are kept across ``reset()`` and freed in ``arena_destroy``.
"""

from libc.stdint cimport uintptr_t
from libc.string cimport memset

from pgo._core._base cimport Allocator, Block, pgo_raise
from pgo._core._memory cimport pgo_sys_alloc, pgo_sys_calloc, pgo_sys_free, pgo_sys_realloc
from pgo._core._typedefs cimport (
    PGO_DEBUG_FILL, PGO_ERR_FOREIGN, PGO_ERR_LIVE, PGO_ERR_NOMEM,
    PGO_ERR_OVERFLOW, PGO_ERR_TOO_BIG, PGO_FILL_FREE, PGO_OK, pgo_add_overflow,
    pgo_lock, pgo_lock_destroy, pgo_lock_init, pgo_unlock,
)

from pgo._errors import AllocatorError

cdef enum:
    DEF_CHUNK = 1048576         # 1 MiB; literals only: overflowcheck mis-compiles constant expressions here


cdef int _arena_add_chunk(pgo_arena_t* a, size_t size) noexcept nogil:
    cdef pgo_arena_chunk_t* chunks
    cdef size_t cap
    cdef char* base
    if a.max_bytes and (size > a.max_bytes or a.stats.capacity > a.max_bytes - size):
        return PGO_ERR_NOMEM
    if a.nchunks == a.cap_chunks:
        cap = a.cap_chunks * 2 if a.cap_chunks else 8
        chunks = <pgo_arena_chunk_t*>pgo_sys_realloc(a.chunks, cap, sizeof(pgo_arena_chunk_t))
        if chunks == NULL:
            return PGO_ERR_NOMEM
        a.chunks = chunks
        a.cap_chunks = cap
    base = <char*>pgo_sys_alloc(size, 64)
    if base == NULL:
        return PGO_ERR_NOMEM
    if PGO_DEBUG_FILL:
        memset(base, PGO_FILL_FREE, size)
    a.chunks[a.nchunks].base = base
    a.chunks[a.nchunks].size = size
    a.chunks[a.nchunks].top = 0
    a.chunks[a.nchunks].live = 0
    a.nchunks += 1
    a.stats.capacity += size
    return PGO_OK


cdef pgo_arena_t* arena_create(size_t chunk_size, size_t max_bytes, bint threadsafe) except NULL nogil:
    cdef pgo_arena_t* a = <pgo_arena_t*>pgo_sys_calloc(1, sizeof(pgo_arena_t))
    if a == NULL:
        pgo_raise(PGO_ERR_NOMEM, "ArenaAllocator", sizeof(pgo_arena_t), 0)
        return NULL
    if chunk_size == 0:
        chunk_size = DEF_CHUNK
    if max_bytes and chunk_size > max_bytes:
        chunk_size = max_bytes
    a.chunk_size = chunk_size
    a.max_bytes = max_bytes
    if _arena_add_chunk(a, chunk_size) != PGO_OK:
        pgo_sys_free(a.chunks)
        pgo_sys_free(a)
        pgo_raise(PGO_ERR_NOMEM, "ArenaAllocator", chunk_size, 64)
        return NULL
    pgo_lock_init(&a.lock, threadsafe)
    return a


cdef void arena_destroy(pgo_arena_t* a) noexcept nogil:
    cdef size_t i
    if a != NULL:
        pgo_lock_destroy(&a.lock)
        for i in range(a.nchunks):
            pgo_sys_free(a.chunks[i].base)
        pgo_sys_free(a.chunks)
        pgo_sys_free(a)


cdef int _arena_alloc_slow(pgo_arena_t* a, size_t n, size_t align, void** out, size_t* chunk) noexcept nogil:
    cdef size_t need, i, size
    cdef int code
    if pgo_add_overflow(n, align, &need):
        a.stats.failed += 1
        return PGO_ERR_OVERFLOW
    # A chunk with nothing alive in it, big enough even in the worst case of
    # alignment padding, is reused before anything new is asked for.
    for i in range(a.nchunks):
        if i != a.current and a.chunks[i].live == 0 and a.chunks[i].size >= need:
            a.current = i
            return _arena_alloc_unlocked(a, n, align, out, chunk)
    size = a.chunk_size if need <= a.chunk_size else need
    code = _arena_add_chunk(a, size)
    if code != PGO_OK:
        a.stats.failed += 1
        if a.max_bytes and need > a.max_bytes:
            return PGO_ERR_TOO_BIG
        return code
    a.current = a.nchunks - 1
    return _arena_alloc_unlocked(a, n, align, out, chunk)


cdef void _arena_release_in(pgo_arena_t* a, size_t chunk) noexcept nogil:
    cdef pgo_arena_chunk_t* c = &a.chunks[chunk]
    c.live -= 1
    a.stats.frees += 1
    if c.live == 0:
        if PGO_DEBUG_FILL:
            memset(c.base, PGO_FILL_FREE, c.top)
        a.stats.in_use -= c.top
        c.top = 0


cdef int _arena_find(pgo_arena_t* a, void* p, size_t* chunk) noexcept nogil:
    cdef uintptr_t x = <uintptr_t>p
    cdef size_t i
    cdef pgo_arena_chunk_t* c
    for i in range(a.nchunks):
        c = &a.chunks[i]
        if <uintptr_t>c.base <= x and x - <uintptr_t>c.base <= c.top and c.live:
            chunk[0] = i
            return PGO_OK
    return PGO_ERR_FOREIGN


cdef int arena_release(pgo_arena_t* a, void* p) except -1 nogil:
    cdef size_t chunk
    cdef int code
    if p == NULL:
        return 0
    pgo_lock(&a.lock, &a.stats)
    code = _arena_find(a, p, &chunk)
    if code == PGO_OK:
        _arena_release_in(a, chunk)
    pgo_unlock(&a.lock)
    if code != PGO_OK:
        return pgo_raise(code, "ArenaAllocator", 0, 0)
    return 0


cdef int _arena_reset_unlocked(pgo_arena_t* a) noexcept nogil:
    cdef size_t i
    if a.stats.live_blocks:
        return PGO_ERR_LIVE
    for i in range(a.nchunks):
        if PGO_DEBUG_FILL:
            memset(a.chunks[i].base, PGO_FILL_FREE, a.chunks[i].top)
        a.chunks[i].top = 0
        a.chunks[i].live = 0
    a.current = 0
    a.stats.in_use = 0
    a.stats.resets += 1
    a.stats.requested = 0
    a.stats.lost = 0
    return PGO_OK


cdef int arena_reset(pgo_arena_t* a) except -1 nogil:
    cdef int code
    pgo_lock(&a.lock, &a.stats)
    code = _arena_reset_unlocked(a)
    pgo_unlock(&a.lock)
    if code != PGO_OK:
        return pgo_raise(code, "ArenaAllocator", 0, 0)
    return 0


cdef class ArenaAllocator(Allocator):
    """Chunked memory for objects that share a lifetime.

    Args:
        chunk_size: bytes per chunk (a bigger request gets a chunk of its
            own size).
        max_bytes: most bytes the arena may reserve, 0 for no limit; past it
            allocation raises MemoryError.
        threadsafe: take a mutex on every operation (see StackAllocator).

    There is no individual free.  Each chunk counts its live Blocks and
    arrays; when the last one is dropped, the chunk is reused from its
    start.  ``reset()`` recycles every chunk at once (keeping the memory)
    and raises AllocatorError, changing nothing, while anything is alive.
    """

    def __cinit__(self, size_t chunk_size=DEF_CHUNK, size_t max_bytes=0, *, bint threadsafe=False):
        self.a = arena_create(chunk_size, max_bytes, threadsafe)
        self._st = &self.a.stats
        self._lock = &self.a.lock

    def __dealloc__(self):
        arena_destroy(self.a)

    cdef int _c_alloc(self, size_t nbytes, size_t align, void** out, size_t* token) noexcept:
        return _arena_alloc_unlocked(self.a, nbytes, align, out, token)

    cdef void _c_dead(self, Block b) noexcept:
        _arena_release_in(self.a, b.token)

    cdef int _c_reset(self) noexcept:
        return _arena_reset_unlocked(self.a)

    cdef object _where(self, char* p):
        cdef size_t chunk
        if _arena_find(self.a, p, &chunk) == PGO_OK:
            return f"chunk {chunk} offset {p - self.a.chunks[chunk].base}"
        return f"address {<uintptr_t>p:#x}"

    def _describe_nomem(self, size_t nbytes):
        limit = f"max_bytes={self.a.max_bytes:,}" if self.a.max_bytes else "no limit"
        return (f"{self!r}: cannot allocate {nbytes:,} bytes: {self.a.stats.capacity:,} bytes "
                f"reserved in {self.a.nchunks} chunk(s), {limit}")

    def _extra_stats(self):
        cdef size_t i, busy = 0
        for i in range(self.a.nchunks):
            if self.a.chunks[i].live:
                busy += 1
        return {"chunks": self.a.nchunks, "chunks_in_use": busy,
                "chunk_size": self.a.chunk_size, "max_bytes": self.a.max_bytes}

    def free(self, block):
        """Not supported: drop the block instead; its chunk is reused once
        nothing in it is alive.

        Raises:
            AllocatorError: always (naming the real owner of a foreign block).
        """
        self._check_free(block)
        raise AllocatorError(f"{self!r} has no individual free; drop the block (its chunk is "
                             f"reused once nothing in it is alive) or reset()")

    def __repr__(self):
        return (f"<ArenaAllocator chunk_size={self.a.chunk_size} chunks={self.a.nchunks} "
                f"max_bytes={self.a.max_bytes} threadsafe={bool(self.a.lock.enabled)}>")
