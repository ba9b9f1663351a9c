"""ArenaAllocator: chunked bump allocation, reused chunk by chunk.

Design: allocation bumps a pointer in the current chunk (inline in
``arena.pxd``); when it is full the slow path here reuses a chunk with
nothing alive in it, or mallocs a new one (``chunk_size``, or larger for a
big request) while ``max_bytes`` allows.  Each chunk counts its live blocks;
a dropped Python Block (or ``arena_release`` from C) decrements the count,
and at zero the chunk's bump pointer goes back to 0.  So a loop of scoped
temporaries runs in steady state without any explicit reset, and a chunk
is never reused while anything in it is alive.  Per-chunk bitmaps of block
starts and released/Python-owned bitmaps by block number make every release
checkable.

# NOTE: ownership.  The ``pgo_arena_t``, its chunk table, every chunk and
# its bitmaps belong to the ArenaAllocator object (or to the C caller of
# ``arena_create``); chunks are kept across ``reset()`` and freed in
# ``arena_destroy``.  A Python Block holds its allocator, so the struct
# outlives every Block and array made from it.
# NOTE: threads and the GIL.  Nothing here needs the GIL: every C path is
# nogil.  Without threadsafe=True the struct relies on its single user (or
# the GIL) for exclusion; with it, every entry point in arena.pxd and every
# backend call (numpy's handler) takes the mutex.  The chunk ranges that
# ``_arena_may_own`` reads without the lock are published with atomics and
# never change once published.
"""

from libc.stdint cimport SIZE_MAX, uint64_t, uintptr_t
from libc.string cimport memcpy, memset

from pgo._core._base cimport (
    Allocator, Block, pgo_locked_reset, pgo_locked_alloc, pgo_raise, pgo_raise_at,
)
from pgo._core._memory cimport pgo_sys_alloc, pgo_sys_calloc, pgo_sys_free, pgo_sys_realloc
from pgo._core._typedefs cimport (
    PGO_DEBUG_FILL, PGO_ERR_ALIGN, PGO_ERR_DOUBLE_FREE, PGO_ERR_FOREIGN, PGO_ERR_LIVE,
    PGO_ERR_NOMEM, PGO_ERR_PY_OWNED, PGO_ERR_TOO_BIG, PGO_FILL_ALLOC, PGO_FILL_FREE, PGO_MAX_ALIGN,
    PGO_OK, pgo_add_overflow, pgo_atomic_load, pgo_atomic_store, pgo_backend_init, pgo_destroy_fn,
    pgo_bad_align, pgo_fit, pgo_lock, pgo_lock_destroy,
    pgo_lock_gil_held, pgo_lock_init, pgo_stats_reset, pgo_unlock, pgo_vg_alloc, pgo_vg_create,
    pgo_vg_destroy, pgo_vg_noaccess, pgo_vg_trim,
)

cdef enum:
    DEF_CHUNK = 1048576         # 1 MiB; literals only: overflowcheck mis-compiles constant expressions here


# Block starts are uint32 multiples of 8: a chunk holds at most 32 GiB.
cdef size_t MAX_CHUNK = (<size_t>32) << 30

cdef enum:
    FIRST_BLOCKS = 64           # entries in a chunk's first block list
    CHUNK_FULL = -2             # _arena_bump: no room in the current chunk


cdef inline void _clear_blocks(pgo_arena_chunk_t* c) noexcept nogil:
    # Forget every block of the chunk: costs what its blocks were.
    cdef size_t words = (c.nblocks + 63) // 64
    memset(c.released, 0, words * sizeof(uint64_t))
    memset(c.pybits, 0, words * sizeof(uint64_t))
    c.nblocks = 0
    c.nreleased = 0


cdef int _arena_grow_blocks(pgo_arena_chunk_t* c) noexcept nogil:
    # Doubles the chunk's block list and bitmaps; nothing changes on failure
    # (a bigger array that was already swapped in is harmless).
    cdef size_t cap = c.cap_blocks * 2 if c.cap_blocks else FIRST_BLOCKS
    cdef size_t old_words = c.cap_blocks // 64, words = cap // 64
    cdef uint32_t* starts
    cdef uint64_t* bits
    if cap > 0xffffffffu:
        return PGO_ERR_NOMEM
    starts = <uint32_t*>pgo_sys_realloc(c.starts, cap, sizeof(uint32_t))
    if starts == NULL:
        return PGO_ERR_NOMEM
    c.starts = starts
    bits = <uint64_t*>pgo_sys_realloc(c.released, words, sizeof(uint64_t))
    if bits == NULL:
        return PGO_ERR_NOMEM
    memset(bits + old_words, 0, (words - old_words) * sizeof(uint64_t))
    c.released = bits
    bits = <uint64_t*>pgo_sys_realloc(c.pybits, words, sizeof(uint64_t))
    if bits == NULL:
        return PGO_ERR_NOMEM
    memset(bits + old_words, 0, (words - old_words) * sizeof(uint64_t))
    c.pybits = bits
    c.cap_blocks = cap
    return PGO_OK


cdef int _arena_publish(pgo_arena_t* a, char* base, size_t size) noexcept nogil:
    # Appends a chunk's range for lock-free readers (see pgo_arena_t.ranges).
    cdef size_t cap
    cdef size_t* r
    if a.nranges == a.cap_ranges:
        cap = a.cap_ranges * 2 if a.cap_ranges else 8
        r = <size_t*>pgo_sys_calloc(1 + 2 * cap, sizeof(size_t))
        if r == NULL:
            return PGO_ERR_NOMEM
        if a.ranges != NULL:
            memcpy(r + 1, a.ranges + 1, 2 * a.nranges * sizeof(size_t))
        r[0] = <size_t>a.ranges
        pgo_atomic_store(<size_t*>&a.ranges, <size_t>r)
        a.cap_ranges = cap
    a.ranges[1 + 2 * a.nranges] = <size_t>base
    a.ranges[2 + 2 * a.nranges] = <size_t>base + size
    pgo_atomic_store(&a.nranges, a.nranges + 1)
    return PGO_OK


cdef bint _arena_may_own(pgo_arena_t* a, size_t x) noexcept nogil:
    # Without the lock: is x inside one of the chunks?  (Chunks come from
    # malloc, so other memory lies between them: the bounds alone say
    # little.)  Entries, once published, never change.
    cdef size_t n = pgo_atomic_load(&a.nranges), i
    cdef size_t* r = <size_t*>pgo_atomic_load(<size_t*>&a.ranges)
    for i in range(n):
        if r[1 + 2 * i] <= x and x < r[2 + 2 * i]:
            return True
    return False


cdef int _arena_add_chunk(pgo_arena_t* a, size_t size) noexcept nogil:
    cdef pgo_arena_chunk_t* chunks
    cdef pgo_arena_chunk_t* c
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
    c = &a.chunks[a.nchunks]
    memset(c, 0, sizeof(pgo_arena_chunk_t))
    # The first block list comes with the chunk, so a fresh chunk never
    # fails to take its first block.
    if _arena_grow_blocks(c) != PGO_OK or _arena_publish(a, base, size) != PGO_OK:
        pgo_sys_free(c.starts)
        pgo_sys_free(c.released)
        pgo_sys_free(c.pybits)
        pgo_sys_free(base)
        memset(c, 0, sizeof(pgo_arena_chunk_t))
        return PGO_ERR_NOMEM
    if PGO_DEBUG_FILL:
        memset(base, PGO_FILL_FREE, size)
    # One valgrind pool per chunk, so a recycle can drop its blocks at once.
    pgo_vg_create(base)
    pgo_vg_noaccess(base, size)
    c.base = base
    c.size = size
    if a.lo == 0 or <size_t>base < a.lo:
        pgo_atomic_store(&a.lo, <size_t>base)
    if <size_t>base + size > a.hi:
        pgo_atomic_store(&a.hi, <size_t>base + size)
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
    if chunk_size > MAX_CHUNK:
        pgo_sys_free(a)
        pgo_raise(PGO_ERR_TOO_BIG, "ArenaAllocator (chunks hold at most 32 GiB)", chunk_size, 0)
        return NULL
    a.chunk_size = chunk_size
    a.max_bytes = max_bytes
    if _arena_add_chunk(a, chunk_size) != PGO_OK:
        _arena_free_ranges(a)
        pgo_sys_free(a.chunks)
        pgo_sys_free(a)
        pgo_raise(PGO_ERR_NOMEM, "ArenaAllocator", chunk_size, 64)
        return NULL
    pgo_lock_init(&a.lock, threadsafe)
    # Decided by pgo's own build, not by the build that inlines arena.pxd.
    a.fast = not threadsafe and not PGO_DEBUG_FILL
    return a


cdef void arena_destroy(pgo_arena_t* a) noexcept nogil:
    cdef size_t i
    if a != NULL:
        pgo_lock_destroy(&a.lock)
        for i in range(a.nchunks):
            pgo_vg_destroy(a.chunks[i].base)
            pgo_sys_free(a.chunks[i].base)
            pgo_sys_free(a.chunks[i].starts)
            pgo_sys_free(a.chunks[i].released)
            pgo_sys_free(a.chunks[i].pybits)
        _arena_free_ranges(a)
        pgo_sys_free(a.chunks)
        pgo_sys_free(a)


cdef void _arena_free_ranges(pgo_arena_t* a) noexcept nogil:
    cdef size_t* r = a.ranges
    cdef size_t* older
    while r != NULL:
        older = <size_t*>r[0]
        pgo_sys_free(r)
        r = older


cdef int _arena_bump(pgo_arena_t* a, size_t n, size_t align, void** out, size_t* chunk) noexcept nogil:
    # The complete bump in the current chunk; PGO_ERR_NOMEM if it is full.
    cdef pgo_arena_chunk_t* c = &a.chunks[a.current]
    cdef size_t off
    # A zero-byte block still takes a byte, so that it has an address of its own.
    cdef size_t take = n + (n == 0)
    cdef char* p = pgo_fit(c.base, c.size, c.top, align, take, &off)
    if p == NULL:
        return CHUNK_FULL
    if c.nblocks == c.cap_blocks and _arena_grow_blocks(c) != PGO_OK:
        return PGO_ERR_NOMEM
    pgo_vg_alloc(c.base, c.base + c.top, off + take - c.top)    # padding included
    c.starts[c.nblocks] = <uint32_t>(off >> 3)
    c.nblocks += 1
    a.stats.allocs += 1
    a.stats.requested += n
    c.top = off + take
    if PGO_DEBUG_FILL:
        memset(p, PGO_FILL_ALLOC, n)
    out[0] = p
    # The token of a block: its chunk, and its number in the chunk.
    chunk[0] = a.current | ((c.nblocks - 1) << 32)
    return PGO_OK


cdef int _arena_alloc_unlocked(pgo_arena_t* a, size_t n, size_t align, void** out, size_t* chunk) noexcept nogil:
    cdef size_t need, i, size
    cdef int code
    if pgo_bad_align(align):
        a.stats.failed += 1
        return PGO_ERR_ALIGN
    if align < PGO_ARENA_MIN_ALIGN:
        align = PGO_ARENA_MIN_ALIGN
    code = _arena_bump(a, n, align, out, chunk)
    if code != CHUNK_FULL:
        if code != PGO_OK:
            a.stats.failed += 1
        return code
    if pgo_add_overflow(n, align, &need) or need > MAX_CHUNK:
        a.stats.failed += 1
        return PGO_ERR_TOO_BIG
    # A chunk with nothing alive in it, big enough even in the worst case of
    # alignment padding, is reused before anything new is asked for.
    for i in range(a.nchunks):
        if (i != a.current and a.chunks[i].nblocks == a.chunks[i].nreleased
                and a.chunks[i].size >= need):
            a.current = i
            return _arena_bump(a, n, align, out, chunk)
    size = a.chunk_size if need <= a.chunk_size else need
    code = _arena_add_chunk(a, size)
    if code != PGO_OK:
        a.stats.failed += 1
        if a.max_bytes and need > a.max_bytes:
            return PGO_ERR_TOO_BIG
        return code
    a.current = a.nchunks - 1
    return _arena_bump(a, n, align, out, chunk)


cdef int _arena_alloc_c(void* state, size_t n, size_t align, void** out) noexcept nogil:
    cdef size_t chunk
    return _arena_alloc_unlocked(<pgo_arena_t*>state, n, align, out, &chunk)


cdef void* _arena_alloc_slow(pgo_arena_t* a, size_t n, size_t align) noexcept nogil:
    return pgo_locked_alloc(&a.lock, &a.stats, _arena_alloc_c, a, n, align, "ArenaAllocator")


cdef int _arena_release_block(pgo_arena_t* a, size_t chunk, size_t i, bint from_python) noexcept nogil:
    # Releases block i of `chunk`; the chunk is recycled when none is left.
    cdef pgo_arena_chunk_t* c = &a.chunks[chunk]
    cdef uint64_t bit = (<uint64_t>1) << (i & 63)
    if i >= c.nblocks or c.released[i >> 6] & bit:
        return PGO_ERR_DOUBLE_FREE
    if c.pybits[i >> 6] & bit and not from_python:
        return PGO_ERR_PY_OWNED
    c.released[i >> 6] |= bit
    c.nreleased += 1
    a.stats.frees += 1
    if c.nreleased == c.nblocks:
        # in_use is at a local maximum just before a recycle: the only time
        # it goes down.  Taking the peak here keeps the hot path free of it.
        arena_sync_stats(a)
        if PGO_DEBUG_FILL:
            memset(c.base, PGO_FILL_FREE, c.top)
        pgo_vg_trim(c.base, c.base, 0)
        _clear_blocks(c)
        a.recycled += c.top
        c.top = 0
    return PGO_OK


cdef int _arena_block_at(pgo_arena_chunk_t* c, size_t off, size_t* index) noexcept nogil:
    # Binary search of the chunk's block starts (they are in address order).
    cdef size_t lo = 0, hi = c.nblocks, mid
    cdef uint32_t key
    if off & (PGO_ARENA_MIN_ALIGN - 1) or off >= c.top:
        return PGO_ERR_DOUBLE_FREE
    key = <uint32_t>(off >> 3)
    while lo < hi:
        mid = (lo + hi) >> 1
        if c.starts[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    if lo == c.nblocks or c.starts[lo] != key:
        return PGO_ERR_DOUBLE_FREE
    index[0] = lo
    return PGO_OK


cdef int _arena_find(pgo_arena_t* a, void* p, size_t* chunk) noexcept nogil:
    cdef uintptr_t x = <uintptr_t>p
    cdef size_t i
    cdef pgo_arena_chunk_t* c
    for i in range(a.nchunks):
        c = &a.chunks[i]
        if <uintptr_t>c.base <= x and x - <uintptr_t>c.base < c.size:
            chunk[0] = i
            return PGO_OK
    return PGO_ERR_FOREIGN


cdef int arena_release(pgo_arena_t* a, void* p) except -1 nogil:
    cdef size_t chunk, index
    cdef int code
    if p == NULL:
        return 0
    pgo_lock(&a.lock, &a.stats)
    code = _arena_find(a, p, &chunk)
    if code == PGO_OK:
        code = _arena_block_at(&a.chunks[chunk], <char*>p - a.chunks[chunk].base, &index)
    if code == PGO_OK:
        code = _arena_release_block(a, chunk, index, False)
    pgo_unlock(&a.lock)
    if code == PGO_ERR_DOUBLE_FREE:
        return pgo_raise_at(code, "ArenaAllocator (not the start of a live block: an interior "
                            "pointer, or released already)", p)
    if code != PGO_OK:
        return pgo_raise_at(code, "ArenaAllocator", p)
    return 0


# -- numpy's handler (see pgo_backend_t) ----------------------------------
# An array's block is marked Python-owned, as a Block's is; its chunk is
# recycled once every block in it is given back.

cdef int _arena_alloc_py(pgo_arena_t* a, size_t n, size_t align, void** out,
                         size_t* token) noexcept nogil:
    # A block Python owns (an array's or a Block's): C code cannot release it.
    cdef size_t i
    cdef int err = _arena_alloc_unlocked(a, n, align, out, token)
    if err == PGO_OK:
        i = token[0] >> 32
        a.chunks[token[0] & 0xffffffffu].pybits[i >> 6] |= (<uint64_t>1) << (i & 63)
    return err


cdef int _arena_take_unlocked(void* state, size_t n, size_t align, void** out) noexcept nogil:
    cdef size_t token
    return _arena_alloc_py(<pgo_arena_t*>state, n, align, out, &token)


cdef bint _arena_holds(void* state, void* p) noexcept nogil:
    return _arena_may_own(<pgo_arena_t*>state, <size_t>p)


cdef int _arena_give_unlocked(void* state, void* p) noexcept nogil:
    cdef pgo_arena_t* a = <pgo_arena_t*>state
    cdef size_t chunk, index
    cdef int err = _arena_find(a, p, &chunk)
    if err == PGO_OK:
        err = _arena_block_at(&a.chunks[chunk], <char*>p - a.chunks[chunk].base, &index)
    if err == PGO_OK and not (a.chunks[chunk].pybits[index >> 6] & ((<uint64_t>1) << (index & 63))):
        err = PGO_ERR_PY_OWNED
    if err == PGO_OK:
        err = _arena_release_block(a, chunk, index, True)
    return err


cdef size_t _arena_span_unlocked(void* state, void* p) noexcept nogil:
    # A block ends where the next one in its chunk starts (or at the top).
    cdef pgo_arena_t* a = <pgo_arena_t*>state
    cdef size_t chunk, index, off, end
    cdef pgo_arena_chunk_t* c
    if _arena_find(a, p, &chunk) != PGO_OK:
        return 0
    c = &a.chunks[chunk]
    off = <size_t>p - <size_t>c.base
    if (_arena_block_at(c, off, &index) != PGO_OK
            or c.released[index >> 6] & ((<uint64_t>1) << (index & 63))):
        return 0
    end = (<size_t>c.starts[index + 1]) << 3 if index + 1 < c.nblocks else c.top
    return end - off


cdef int _arena_reset_unlocked(void* state) noexcept nogil:
    cdef pgo_arena_t* a = <pgo_arena_t*>state
    cdef size_t i
    arena_sync_stats(a)
    for i in range(a.nchunks):
        if PGO_DEBUG_FILL:
            memset(a.chunks[i].base, PGO_FILL_FREE, a.chunks[i].top)
        pgo_vg_trim(a.chunks[i].base, a.chunks[i].base, 0)
        a.stats.frees += a.chunks[i].nblocks - a.chunks[i].nreleased
        _clear_blocks(&a.chunks[i])
        a.chunks[i].top = 0
    a.current = 0
    a.recycled = 0
    a.stats.in_use = 0
    pgo_stats_reset(&a.stats)
    return PGO_OK


cdef int arena_reset(pgo_arena_t* a) except -1 nogil:
    return pgo_locked_reset(&a.lock, &a.stats, _arena_reset_unlocked, a, "ArenaAllocator")


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
        pgo_backend_init(&self._be, self.a, &self.a.lock, &self.a.stats,
                         _arena_take_unlocked, NULL, SIZE_MAX,
                         _arena_holds, _arena_give_unlocked, _arena_span_unlocked,
                         &self.a.lo, &self.a.hi)
        self._bind(<pgo_destroy_fn>arena_destroy, PGO_ARENA_MIN_ALIGN, PGO_MAX_ALIGN)

    cdef int _c_alloc(self, size_t nbytes, size_t align, void** out, size_t* token) noexcept:
        return _arena_alloc_py(self.a, nbytes, align, out, token)

    cdef void _c_dead(self, Block b) noexcept:
        _arena_release_block(self.a, b.token & 0xffffffffu, b.token >> 32, True)

    cdef int _c_reset(self) noexcept:
        return _arena_reset_unlocked(self.a)

    cdef void _sync(self) noexcept:
        arena_sync_stats(self.a)

    cdef object _where(self, char* p):
        cdef size_t chunk
        cdef int code
        cdef size_t off = 0
        pgo_lock_gil_held(self._lock, self._st)
        code = _arena_find(self.a, p, &chunk)
        if code == PGO_OK:
            off = p - self.a.chunks[chunk].base
        pgo_unlock(self._lock)
        if code == PGO_OK:
            return f"chunk {chunk} offset {off}"
        return f"address {<uintptr_t>p:#x}"

    def _describe_nomem(self, size_t nbytes):
        limit = f"max_bytes={self.a.max_bytes:,}" if self.a.max_bytes else "no limit"
        return (f"{self!r}: cannot allocate {nbytes:,} bytes: {self.a.stats.capacity:,} bytes "
                f"reserved in {self.a.nchunks} chunk(s), {limit}")

    def _extra_stats(self):
        cdef size_t i, busy = 0, nchunks
        pgo_lock_gil_held(self._lock, self._st)
        nchunks = self.a.nchunks
        for i in range(nchunks):
            if self.a.chunks[i].nblocks != self.a.chunks[i].nreleased:
                busy += 1
        pgo_unlock(self._lock)
        return {"chunks": nchunks, "chunks_in_use": busy,
                "chunk_size": self.a.chunk_size, "max_bytes": self.a.max_bytes}

    def free(self, block):
        """Not supported: drop the block instead; its chunk is reused once
        nothing in it is alive.

        Raises:
            AllocatorError: always (naming the real owner of a foreign block).
        """
        self._refuse_free(block, "drop the block (its chunk is reused once nothing in it is "
                                 "alive) or reset()")

    def __repr__(self):
        return (f"<ArenaAllocator chunk_size={self.a.chunk_size} chunks={self.a.nchunks} "
                f"max_bytes={self.a.max_bytes} threadsafe={bool(self.a.lock.enabled)}>")
