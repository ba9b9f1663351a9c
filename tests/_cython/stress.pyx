# cython: language_level=3, boundscheck=False, wraparound=False
"""Test-only extension: third-party Cython code on pgo's .pxd C API.

Built by tests/conftest.py (the session fixture ``cext``) against the .pxd
files of the pgo under test, so importing it proves that they cimport; every
wrapper makes its C-API call inside ``with nogil:``, which proves that the
API needs no GIL.

a) Wrappers: one C-API call each, addresses passed as ints, so that tests
   can drive the error paths (MemoryError, ValueError and AllocatorError
   raised from nogil code) from Python.
b) A stress worker in the style of mimalloc's test-stress: each thread
   allocates blocks, fills them with a cookie pattern (a hash of a per-block
   cookie and the byte's address), checks and frees its own, and swaps some
   with the other threads through a ring under a pthread mutex, so blocks
   are freed on threads that did not allocate them.  It counts mismatches
   and never stops on one.

Ownership: blocks in flight belong to the worker holding them or to the
ring; ``drain()`` checks and frees what the ring still holds.
"""

from libc.stdint cimport int64_t, uint8_t, uint64_t, uintptr_t
from libc.stdlib cimport free, malloc
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from pgo._core._base cimport Allocator
from pgo._core._typedefs cimport (
    pgo_backend_give, pgo_backend_t, pgo_backend_take, pthread_mutex_destroy,
    pthread_mutex_init, pthread_mutex_lock, pthread_mutex_t, pthread_mutex_unlock,
)
from pgo._core.arena cimport ArenaAllocator, arena_alloc, arena_release, arena_reset, pgo_arena_t
from pgo._core.containers cimport (
    IntMap, StringBuilder, Vector, intmap_delete, intmap_get, intmap_len, intmap_set,
    sb_append, vector_push_f64, vector_push_i64, vector_reserve,
)
from pgo._core.linear cimport (
    LinearAllocator, linear_alloc, linear_create, linear_destroy, linear_reset,
    pgo_linear_t,
)
from pgo._core.slab cimport SlabAllocator, pgo_slab_t, slab_alloc, slab_free, slab_reset
from pgo._core.hier cimport HierarchicalAllocator, hier_alloc, hier_free, pgo_hier_t
from pgo._core.compact cimport (
    CompactingAllocator, compact_alloc, compact_compact, compact_free, pgo_compact_result_t,
)
from pgo._core.numa cimport NUMAAllocator, numa_alloc, numa_free, numa_home_pool
from pgo._core.mapped cimport (
    MappedPool, mapped_alloc, mapped_create, mapped_destroy, mapped_free, mapped_trim,
    pgo_mapped_t,
)
from pgo._core.stack cimport (
    StackAllocator, pgo_stack_mark_t, pgo_stack_t, stack_alloc, stack_create,
    stack_destroy, stack_free, stack_mark, stack_release, stack_reset,
)


# -- a) one C-API call each, without the GIL -------------------------------

def stack_alloc_c(StackAllocator st not None, size_t n, size_t align=16):
    cdef void* p
    with nogil:
        p = stack_alloc(st.s, n, align)
    return <uintptr_t>p


def vector_fill_c(Vector v not None, long n, bint floats=False):
    """Push 0..n-1 from nogil code (int64 or float64 elements)."""
    cdef long i
    with nogil:
        for i in range(n):
            if floats:
                vector_push_f64(v.v, <double>i)
            else:
                vector_push_i64(v.v, i)


def vector_reserve_c(Vector v not None, size_t capacity):
    with nogil:
        vector_reserve(v.v, capacity)


def intmap_count_c(IntMap m not None, keys):
    """Count each key into m from nogil code (the counting loop of a word
    count); returns the length afterwards."""
    cdef Py_ssize_t i, n = len(keys)
    cdef int64_t* ks = <int64_t*>malloc(max(n, 1) * sizeof(int64_t))
    cdef int64_t value
    cdef size_t length
    if ks == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            ks[i] = keys[i]
        with nogil:
            for i in range(n):
                if not intmap_get(m.m, ks[i], &value):
                    value = 0
                intmap_set(m.m, ks[i], value + 1)
            length = intmap_len(m.m)
    finally:
        free(ks)
    return length


def intmap_delete_c(IntMap m not None, int64_t key):
    cdef int removed
    with nogil:
        removed = intmap_delete(m.m, key)
    return removed


def sb_repeat_c(StringBuilder b not None, bytes chunk, long times):
    cdef const char* p = chunk
    cdef size_t n = len(chunk)
    cdef long i
    with nogil:
        for i in range(times):
            sb_append(b.b, p, n)


def stack_free_c(StackAllocator st not None, uintptr_t address):
    with nogil:
        stack_free(st.s, <void*>address)


def stack_mark_c(StackAllocator st not None):
    cdef pgo_stack_mark_t m
    with nogil:
        m = stack_mark(st.s)
    return (m.top, m.last)


def stack_release_c(StackAllocator st not None, mark):
    cdef pgo_stack_mark_t m
    m.top, m.last = mark
    with nogil:
        stack_release(st.s, m)


def stack_reset_c(StackAllocator st not None):
    with nogil:
        stack_reset(st.s)


def stack_standalone(size_t capacity):
    """A stack made and destroyed in C, with no Python object around it.

    Returns (aligned, lifo_refused, released_to_zero) as booleans.
    """
    cdef pgo_stack_t* s
    cdef pgo_stack_mark_t m
    cdef char* a
    cdef char* b
    cdef bint aligned, refused = False, released
    with nogil:
        s = stack_create(capacity, False)
    try:
        with nogil:
            m = stack_mark(s)
            a = <char*>stack_alloc(s, 100, 64)
            b = <char*>stack_alloc(s, 100, 256)
            aligned = (<uintptr_t>a) % 64 == 0 and (<uintptr_t>b) % 256 == 0
        try:
            with nogil:
                stack_free(s, a)        # not the newest: must raise
        except Exception as e:
            refused = type(e).__name__ == "AllocatorError"
        with nogil:
            stack_free(s, b)
            stack_free(s, a)
            b = <char*>stack_alloc(s, 8, 8)
            stack_release(s, m)
            released = s.b.top == 0 and s.b.stats.in_use == 0
            stack_reset(s)
    finally:
        stack_destroy(s)
    return aligned, refused, released


def linear_alloc_c(LinearAllocator la not None, size_t n, size_t align=16):
    cdef void* p
    with nogil:
        p = linear_alloc(la.s, n, align)
    return <uintptr_t>p


def linear_reset_c(LinearAllocator la not None):
    with nogil:
        linear_reset(la.s)


def linear_standalone(size_t capacity, size_t n):
    """A linear allocator made and destroyed in C: allocate `n`-byte blocks
    until MemoryError; returns how many fit."""
    cdef pgo_linear_t* s
    cdef size_t count = 0
    with nogil:
        s = linear_create(capacity, False)
    try:
        while True:
            try:
                with nogil:
                    linear_alloc(s, n, 1)
            except MemoryError:
                return count
            count += 1
    finally:
        linear_destroy(s)


def arena_alloc_c(ArenaAllocator ar not None, size_t n, size_t align=16):
    cdef void* p
    with nogil:
        p = arena_alloc(ar.a, n, align)
    return <uintptr_t>p


def arena_release_c(ArenaAllocator ar not None, uintptr_t address):
    with nogil:
        arena_release(ar.a, <void*>address)


def arena_reset_c(ArenaAllocator ar not None):
    with nogil:
        arena_reset(ar.a)


def slab_alloc_c(SlabAllocator sl not None):
    cdef void* p
    with nogil:
        p = slab_alloc(sl.s)
    return <uintptr_t>p


def slab_free_c(SlabAllocator sl not None, uintptr_t address):
    with nogil:
        slab_free(sl.s, <void*>address)


def slab_reset_c(SlabAllocator sl not None):
    with nogil:
        slab_reset(sl.s)


def mapped_alloc_c(MappedPool mp not None, size_t n, size_t align=64):
    cdef void* p
    with nogil:
        p = mapped_alloc(mp.s, n, align)
    return <uintptr_t>p


def mapped_free_c(MappedPool mp not None, uintptr_t address):
    with nogil:
        mapped_free(mp.s, <void*>address)


def mapped_trim_c(MappedPool mp not None):
    cdef size_t got
    with nogil:
        got = mapped_trim(mp.s)
    return got


def hier_alloc_c(HierarchicalAllocator h not None, size_t n):
    cdef void* p
    with nogil:
        p = hier_alloc(h.s, n)
    return <uintptr_t>p


def hier_free_c(HierarchicalAllocator h not None, uintptr_t address):
    with nogil:
        hier_free(h.s, <void*>address)


def compact_alloc_c(CompactingAllocator a not None, size_t n):
    cdef void* p
    with nogil:
        p = compact_alloc(a.s, n)
    return <uintptr_t>p


def compact_free_c(CompactingAllocator a not None, uintptr_t address):
    with nogil:
        compact_free(a.s, <void*>address)


def compact_c(CompactingAllocator a not None):
    cdef pgo_compact_result_t r
    with nogil:
        compact_compact(a.s, &r)
    return {"meshed": r.meshed, "emptied": r.emptied, "released_bytes": r.released_bytes}


def backend_churn_nogil(Allocator a not None, double seconds, size_t n=200_000):
    """numpy's handler path (take, then give, under the allocator's lock)
    without the GIL, for `seconds`: what a nogil numpy realloc does.
    Returns the pairs made."""
    cdef pgo_backend_t be = a._be
    cdef void* ps[5]
    cdef size_t pairs = 0, k
    cdef double deadline
    if be.take_fn == NULL:
        raise TypeError(f"{a!r} has no handler")
    with nogil:
        deadline = now() + seconds
        while now() < deadline:
            for k in range(5):
                if pgo_backend_take(&be, n, False, &ps[k]) != 0:
                    ps[k] = NULL
            for k in range(5):
                if ps[k] != NULL:
                    pgo_backend_give(&be, ps[k])
            pairs += 5
    return pairs


def numa_alloc_c(NUMAAllocator na not None, size_t n, size_t align=64):
    cdef void* p
    cdef size_t pool
    with nogil:
        p = numa_alloc(na.s, n, align)
        pool = numa_home_pool(na.s)
    return <uintptr_t>p, pool


def numa_free_c(NUMAAllocator na not None, uintptr_t address):
    with nogil:
        numa_free(na.s, <void*>address)


def mapped_without_a_python_object(size_t capacity, int rounds):
    # A private pool made, used and destroyed from C alone: blocks of
    # growing sizes, written, freed in reverse, then one block of nearly all
    # of it (which needs every free extent merged back).
    cdef pgo_mapped_t* s
    cdef char* ps[64]
    cdef int i, r, wrong = 0
    cdef size_t free_after
    with nogil:
        s = mapped_create(capacity, False, False)
        for r in range(rounds):
            for i in range(64):
                ps[i] = <char*>mapped_alloc(s, 64 * (i + 1), 64)
                ps[i][0] = <char>i
            for i in range(63, -1, -1):
                wrong += ps[i][0] != <char>i
                mapped_free(s, ps[i])
            ps[0] = <char*>mapped_alloc(s, capacity - 4096, 64)
            mapped_free(s, ps[0])
    if wrong:
        mapped_destroy(s)
        return -1
    free_after = s.free_units
    with nogil:
        mapped_destroy(s)
    return free_after


def slab_churn_nogil(SlabAllocator sl not None, long iters):
    """alloc+free pairs through the C API without the GIL."""
    cdef long i
    cdef void* p
    with nogil:
        for i in range(iters):
            p = slab_alloc(sl.s)
            slab_free(sl.s, p)


def slab_churn_with_gil(SlabAllocator sl not None, long iters):
    """The same pairs with the GIL held: legal, the functions are nogil."""
    cdef long i
    cdef void* p
    for i in range(iters):
        p = slab_alloc(sl.s)
        slab_free(sl.s, p)


# -- b) the stress worker ---------------------------------------------------

cdef enum:
    KIND_SLAB = 0
    KIND_ARENA = 1
    KIND_HIER = 2
    KIND_MAPPED = 3
    LOCAL_MAX = 32
    ARENA_MAX_BLOCK = 256


ctypedef struct item_t:
    char* p
    size_t n
    uint64_t cookie          # (thread id << 40) | sequence number


ctypedef struct target_t:
    int kind
    pgo_slab_t* slab
    pgo_arena_t* arena
    pgo_hier_t* hier
    pgo_mapped_t* mapped
    size_t max_n


ctypedef struct ring_t:
    pthread_mutex_t mutex
    item_t* items
    size_t cap
    size_t head
    size_t count


cdef class Exchange:
    """A bounded ring of blocks that the workers hand to each other."""

    cdef ring_t r

    def __cinit__(self, size_t capacity=64):
        self.r.items = <item_t*>malloc(capacity * sizeof(item_t))
        if self.r.items == NULL:
            raise MemoryError(f"cannot allocate a ring of {capacity} items")
        self.r.cap = capacity
        pthread_mutex_init(&self.r.mutex, NULL)

    def __dealloc__(self):
        if self.r.items != NULL:
            pthread_mutex_destroy(&self.r.mutex)
            free(self.r.items)

    def __len__(self):
        return self.r.count


cdef bint ring_put(ring_t* r, item_t it) noexcept nogil:
    cdef bint ok = False
    pthread_mutex_lock(&r.mutex)
    if r.count < r.cap:
        r.items[(r.head + r.count) % r.cap] = it
        r.count += 1
        ok = True
    pthread_mutex_unlock(&r.mutex)
    return ok


cdef bint ring_get(ring_t* r, item_t* out) noexcept nogil:
    cdef bint ok = False
    pthread_mutex_lock(&r.mutex)
    if r.count:
        out[0] = r.items[r.head]
        r.head = (r.head + 1) % r.cap
        r.count -= 1
        ok = True
    pthread_mutex_unlock(&r.mutex)
    return ok


cdef inline uint8_t pattern(uint64_t cookie, uintptr_t q) noexcept nogil:
    # Multiplying by an odd constant is a bijection, so two blocks with
    # different cookies disagree on at least one byte of every shared word.
    cdef uint64_t h = (cookie ^ (q >> 3)) * <uint64_t>0x9E3779B97F4A7C15
    return <uint8_t>(h >> (8 * (q & 7)))


cdef void fill(item_t* it) noexcept nogil:
    cdef size_t i
    for i in range(it.n):
        it.p[i] = <char>pattern(it.cookie, <uintptr_t>(it.p + i))


cdef uint64_t check(item_t* it) noexcept nogil:
    cdef size_t i
    for i in range(it.n):
        if <uint8_t>it.p[i] != pattern(it.cookie, <uintptr_t>(it.p + i)):
            return 1
    return 0


cdef inline uint64_t xorshift(uint64_t* s) noexcept nogil:
    cdef uint64_t x = s[0]
    x ^= x << 13
    x ^= x >> 7
    x ^= x << 17
    s[0] = x
    return x


cdef inline double now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef char* target_alloc(target_t* t, size_t n) except NULL nogil:
    if t.kind == KIND_SLAB:
        return <char*>slab_alloc(t.slab)
    if t.kind == KIND_HIER:
        return <char*>hier_alloc(t.hier, n)
    if t.kind == KIND_MAPPED:
        return <char*>mapped_alloc(t.mapped, n, 16)
    return <char*>arena_alloc(t.arena, n, 16)


cdef int target_free(target_t* t, char* p) except -1 nogil:
    if t.kind == KIND_SLAB:
        return slab_free(t.slab, p)
    if t.kind == KIND_HIER:
        return hier_free(t.hier, p)
    if t.kind == KIND_MAPPED:
        return mapped_free(t.mapped, p)
    return arena_release(t.arena, p)


cdef target_t make_target(allocator) except *:
    cdef target_t t
    t.slab = NULL
    t.arena = NULL
    t.hier = NULL
    t.mapped = NULL
    if isinstance(allocator, HierarchicalAllocator):
        t.kind = KIND_HIER
        t.hier = (<HierarchicalAllocator>allocator).s
        t.max_n = 2048                 # 1 B - 2 KiB: 28 size classes
    elif isinstance(allocator, MappedPool):
        t.kind = KIND_MAPPED
        t.mapped = (<MappedPool>allocator).s
        t.max_n = ARENA_MAX_BLOCK
    elif isinstance(allocator, SlabAllocator):
        t.kind = KIND_SLAB
        t.slab = (<SlabAllocator>allocator).s
        t.max_n = t.slab.block_size
    elif isinstance(allocator, ArenaAllocator):
        t.kind = KIND_ARENA
        t.arena = (<ArenaAllocator>allocator).a
        t.max_n = ARENA_MAX_BLOCK
    else:
        raise TypeError(f"stress() takes a SlabAllocator, ArenaAllocator, MappedPool or "
                        f"HierarchicalAllocator, not {type(allocator).__name__}")
    return t


def stress(allocator, Exchange ex not None, double seconds, unsigned int tid, uint64_t seed=1):
    """One worker: run for `seconds` without the GIL.

    Returns a dict: mismatches (blocks whose pattern changed), allocations,
    frees, given (blocks put in the ring), taken (blocks taken from it) and
    foreign (taken blocks that another thread allocated).
    """
    cdef target_t t = make_target(allocator)
    cdef ring_t* r = &ex.r
    cdef item_t local[LOCAL_MAX]
    cdef item_t it
    cdef size_t nlocal = 0, k, n, iters = 0
    cdef uint64_t rng = (seed * <uint64_t>0x9E3779B97F4A7C15) ^ (tid + 1)
    cdef uint64_t x, seq = 0
    cdef uint64_t mismatches = 0, allocs = 0, frees = 0, given = 0, taken = 0, foreign = 0
    cdef double deadline
    if rng == 0:
        rng = 1
    with nogil:
        deadline = now() + seconds
        while True:
            iters += 1
            if (iters & 127) == 0 and now() >= deadline:
                break
            x = xorshift(&rng)
            if x % 8 < 4:
                if nlocal < LOCAL_MAX:
                    n = 1 + (x >> 8) % t.max_n
                    it.p = target_alloc(&t, n)
                    it.n = n
                    it.cookie = ((<uint64_t>tid) << 40) | seq
                    seq += 1
                    fill(&it)
                    local[nlocal] = it
                    nlocal += 1
                    allocs += 1
            elif x % 8 < 6:
                if nlocal:
                    k = (x >> 8) % nlocal
                    it = local[k]
                    nlocal -= 1
                    local[k] = local[nlocal]
                    mismatches += check(&it)
                    target_free(&t, it.p)
                    frees += 1
            elif x % 8 == 6:
                if nlocal:
                    k = (x >> 8) % nlocal
                    if ring_put(r, local[k]):
                        nlocal -= 1
                        local[k] = local[nlocal]
                        given += 1
            else:
                if ring_get(r, &it):
                    taken += 1
                    if (it.cookie >> 40) != tid:
                        foreign += 1
                    mismatches += check(&it)
                    target_free(&t, it.p)
                    frees += 1
        while nlocal:
            nlocal -= 1
            mismatches += check(&local[nlocal])
            target_free(&t, local[nlocal].p)
            frees += 1
    return {"mismatches": mismatches, "allocations": allocs, "frees": frees,
            "given": given, "taken": taken, "foreign": foreign}


def drain(allocator, Exchange ex not None):
    """Check and free what the ring still holds; returns (mismatches, freed)."""
    cdef target_t t = make_target(allocator)
    cdef item_t it
    cdef uint64_t mismatches = 0, freed = 0
    with nogil:
        while ring_get(&ex.r, &it):
            mismatches += check(&it)
            target_free(&t, it.p)
            freed += 1
    return mismatches, freed
