# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""C-level allocator benchmarks: pgo's inline ``.pxd`` paths vs glibc.

Every arm is a ``nogil`` loop timed with ``clock_gettime(CLOCK_MONOTONIC)``
around the loop only (allocator creation, warm-up and tear-down are outside
the clock).  For each pattern there is one pgo arm and one glibc arm with the
same loop shape, the same sizes and the same bookkeeping (pointer arrays,
index tables), so the difference between them is the allocator.

So that the compiler cannot drop the work (gcc removes a malloc/free pair
whose pointer does not escape, and stores to memory that is freed), every
block gets one ``volatile`` 8-byte store, and every pointer is added into a
register accumulator that is published to a ``volatile`` global once per
loop.  Only the first word of each block is touched: the rows measure the
allocator, not memory bandwidth.

Patterns (``ns`` returned is per *operation* as defined here):

``lifo``   (stack vs malloc) rounds of: allocate ``depth`` blocks, then free
           them newest first.  One op = one alloc + one free.  ``depth=1`` is
           plain alloc/free pairs.
``bulk``   (linear, arena vs malloc) rounds of: allocate ``batch`` blocks,
           then release them all (``linear_reset`` / ``arena_reset``; glibc
           frees each block, oldest first).  One op = one alloc plus its
           share of the release.
``churn``  (slab vs malloc) a working set of ``live`` blocks; each op frees
           the block at a pseudo-random index (precomputed table) and
           allocates a replacement into that index.  One op = free + alloc.
"""

from libc.stdint cimport uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport free, malloc
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from pgo._core.arena cimport ArenaAllocator, arena_alloc, arena_reset, pgo_arena_t
from pgo._core.linear cimport LinearAllocator, linear_alloc, linear_reset, pgo_linear_t
from pgo._core.slab cimport SlabAllocator, pgo_slab_t, slab_alloc, slab_free
from pgo._core.stack cimport StackAllocator, pgo_stack_t, stack_alloc, stack_free


cdef extern from *:
    """
    static volatile uintptr_t pgo_bench_sink;
    static inline void pgo_bench_touch(void* p, size_t v) { *(volatile size_t*)p = v; }
    static inline void pgo_bench_publish(uintptr_t acc) { pgo_bench_sink += acc; }
    static inline uintptr_t pgo_bench_read_sink(void) { return pgo_bench_sink; }
    """
    void touch "pgo_bench_touch"(void* p, size_t v) noexcept nogil
    void publish "pgo_bench_publish"(uintptr_t acc) noexcept nogil
    uintptr_t read_sink "pgo_bench_read_sink"() noexcept nogil


cdef enum:
    ALIGN = 16            # what malloc guarantees on x86-64; pgo is asked for the same
    MAX_DEPTH = 64
    MAX_BATCH = 4096
    IDX_MASK = 4095       # churn index table: 4096 entries


cdef inline double now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec * 1e9 + <double>ts.tv_nsec


cdef inline void* checked_malloc(size_t n) except NULL nogil:
    cdef void* p = malloc(n)
    if p == NULL:
        with gil:
            raise MemoryError(f"malloc({n}) failed")
    return p


# -- lifo: stack vs malloc ------------------------------------------------
cdef double lifo_stack(pgo_stack_t* s, size_t size, size_t depth, size_t rounds) except -1.0 nogil:
    cdef void* ptrs[MAX_DEPTH]
    cdef void* p
    cdef size_t r, k
    cdef uintptr_t acc = 0
    cdef double t0 = now_ns()
    for r in range(rounds):
        for k in range(depth):
            p = stack_alloc(s, size, ALIGN)
            touch(p, r)
            acc += <uintptr_t>p
            ptrs[k] = p
        k = depth
        while k > 0:
            k -= 1
            stack_free(s, ptrs[k])
    t0 = now_ns() - t0
    publish(acc)
    return t0


cdef double lifo_malloc(size_t size, size_t depth, size_t rounds) except -1.0 nogil:
    cdef void* ptrs[MAX_DEPTH]
    cdef void* p
    cdef size_t r, k
    cdef uintptr_t acc = 0
    cdef double t0 = now_ns()
    for r in range(rounds):
        for k in range(depth):
            p = checked_malloc(size)
            touch(p, r)
            acc += <uintptr_t>p
            ptrs[k] = p
        k = depth
        while k > 0:
            k -= 1
            free(ptrs[k])
    t0 = now_ns() - t0
    publish(acc)
    return t0


# -- bulk: linear / arena vs malloc ----------------------------------------
cdef double bulk_linear(pgo_linear_t* s, size_t size, size_t batch, size_t rounds) except -1.0 nogil:
    cdef void* p
    cdef size_t r, k
    cdef uintptr_t acc = 0
    cdef double t0 = now_ns()
    for r in range(rounds):
        for k in range(batch):
            p = linear_alloc(s, size, ALIGN)
            touch(p, r)
            acc += <uintptr_t>p
        linear_reset(s)
    t0 = now_ns() - t0
    publish(acc)
    return t0


cdef double bulk_arena(pgo_arena_t* a, size_t size, size_t batch, size_t rounds) except -1.0 nogil:
    cdef void* p
    cdef size_t r, k
    cdef uintptr_t acc = 0
    cdef double t0 = now_ns()
    for r in range(rounds):
        for k in range(batch):
            p = arena_alloc(a, size, ALIGN)
            touch(p, r)
            acc += <uintptr_t>p
        arena_reset(a)
    t0 = now_ns() - t0
    publish(acc)
    return t0


cdef double bulk_malloc(void** ptrs, size_t size, size_t batch, size_t rounds) except -1.0 nogil:
    cdef void* p
    cdef size_t r, k
    cdef uintptr_t acc = 0
    cdef double t0 = now_ns()
    for r in range(rounds):
        for k in range(batch):
            p = checked_malloc(size)
            touch(p, r)
            acc += <uintptr_t>p
            ptrs[k] = p
        for k in range(batch):
            free(ptrs[k])
    t0 = now_ns() - t0
    publish(acc)
    return t0


# -- churn: slab vs malloc -------------------------------------------------
cdef double churn_slab(pgo_slab_t* s, void** ptrs, const uint32_t* idx, size_t ops) except -1.0 nogil:
    cdef void* p
    cdef size_t i, j
    cdef uintptr_t acc = 0
    cdef double t0 = now_ns()
    for i in range(ops):
        j = idx[i & IDX_MASK]
        slab_free(s, ptrs[j])
        p = slab_alloc(s)
        touch(p, i)
        acc += <uintptr_t>p
        ptrs[j] = p
    t0 = now_ns() - t0
    publish(acc)
    return t0


cdef double churn_malloc(void** ptrs, const uint32_t* idx, size_t size, size_t ops) except -1.0 nogil:
    cdef void* p
    cdef size_t i, j
    cdef uintptr_t acc = 0
    cdef double t0 = now_ns()
    for i in range(ops):
        j = idx[i & IDX_MASK]
        free(ptrs[j])
        p = checked_malloc(size)
        touch(p, i)
        acc += <uintptr_t>p
        ptrs[j] = p
    t0 = now_ns() - t0
    publish(acc)
    return t0


# -- references: the floors quoted in DESIGN.md, in this harness --------------
# Not pgo: the smallest allocators that can serve each pattern, with their
# state in memory (as a real allocator's is) and the same touches, so the
# table shows how far each pgo path is from what the pattern allows.
ctypedef struct ref_bump_t:
    char* base
    size_t size
    size_t top


ctypedef struct ref_node_t:
    ref_node_t* next


cdef inline void* ref_bump_alloc(ref_bump_t* b, size_t n) noexcept nogil:
    cdef size_t off = (b.top + (ALIGN - 1)) & ~(<size_t>ALIGN - 1)
    if off > b.size or n > b.size - off:
        return NULL
    b.top = off + n
    return b.base + off


cdef double lifo_ref(ref_bump_t* b, size_t size, size_t depth, size_t rounds) except -1.0 nogil:
    cdef void* ptrs[MAX_DEPTH]
    cdef void* p
    cdef size_t r, k
    cdef uintptr_t acc = 0
    cdef double t0 = now_ns()
    for r in range(rounds):
        for k in range(depth):
            p = ref_bump_alloc(b, size)
            if p == NULL:
                with gil:
                    raise MemoryError()
            touch(p, r)
            acc += <uintptr_t>p
            ptrs[k] = p
        k = depth
        while k > 0:
            k -= 1
            b.top = <char*>ptrs[k] - b.base     # LIFO free: back to its start
    t0 = now_ns() - t0
    publish(acc)
    return t0


cdef double bulk_ref(ref_bump_t* b, size_t size, size_t batch, size_t rounds) except -1.0 nogil:
    cdef void* p
    cdef size_t r, k
    cdef uintptr_t acc = 0
    cdef double t0 = now_ns()
    for r in range(rounds):
        for k in range(batch):
            p = ref_bump_alloc(b, size)
            if p == NULL:
                with gil:
                    raise MemoryError()
            touch(p, r)
            acc += <uintptr_t>p
        b.top = 0
    t0 = now_ns() - t0
    publish(acc)
    return t0


cdef double churn_ref(ref_node_t** head, void** ptrs, const uint32_t* idx, size_t ops) except -1.0 nogil:
    cdef void* p
    cdef ref_node_t* node
    cdef size_t i, j
    cdef uintptr_t acc = 0
    cdef double t0 = now_ns()
    for i in range(ops):
        j = idx[i & IDX_MASK]
        node = <ref_node_t*>ptrs[j]             # free: push
        node.next = head[0]
        head[0] = node
        node = head[0]                          # alloc: pop
        if node == NULL:
            with gil:
                raise MemoryError()
        head[0] = node.next
        p = <void*>node
        touch(p, i)
        acc += <uintptr_t>p
        ptrs[j] = p
    t0 = now_ns() - t0
    publish(acc)
    return t0


cdef void fill_index(uint32_t* idx, size_t live, uint64_t seed) noexcept nogil:
    # xorshift64*: a fixed, allocator-independent "random-ish" free order.
    cdef uint64_t x = seed | 1
    cdef size_t i, n = <size_t>IDX_MASK + 1
    for i in range(n):
        x ^= x >> 12
        x ^= x << 25
        x ^= x >> 27
        idx[i] = <uint32_t>(((x * 0x2545F4914F6CDD1Dull) >> 32) % live)


# -- Python entry points ----------------------------------------------------
def _check(size_t size, size_t n, size_t limit, str what):
    if size == 0:
        raise ValueError("size must be > 0")
    if n == 0 or n > limit:
        raise ValueError(f"{what} must be in 1..{limit}, got {n}")


def lifo(str arm, size_t size, size_t ops, size_t depth=8, bint threadsafe=False):
    """ns per alloc+free, LIFO: rounds of `depth` allocs then frees newest first.

    arm: "stack", "malloc" or "ref" (a minimal inline bump pointer).
    `ops` is rounded up to a multiple of `depth`.
    """
    cdef StackAllocator st
    cdef pgo_stack_t* s = NULL
    cdef ref_bump_t b
    cdef size_t rounds = (ops + depth - 1) // depth if depth else 0
    cdef size_t warm = rounds // 8 + 1
    cdef double t
    _check(size, depth, MAX_DEPTH, "depth")
    if arm == "stack":
        # Room for `depth` blocks with their 24-byte headers and padding.
        st = StackAllocator(depth * (size + 64) + 4096, threadsafe=threadsafe)
        s = st.s
        with nogil:
            lifo_stack(s, size, depth, warm)
            t = lifo_stack(s, size, depth, rounds)
    elif arm == "malloc":
        with nogil:
            lifo_malloc(size, depth, warm)
            t = lifo_malloc(size, depth, rounds)
    elif arm == "ref":
        b.size = depth * (size + ALIGN) + 4096
        b.top = 0
        b.base = <char*>malloc(b.size)
        if b.base == NULL:
            raise MemoryError()
        try:
            with nogil:
                lifo_ref(&b, size, depth, warm)
                t = lifo_ref(&b, size, depth, rounds)
        finally:
            free(b.base)
    else:
        raise ValueError(f"lifo arm must be 'stack', 'malloc' or 'ref', got {arm!r}")
    return t / (rounds * depth)


def bulk(str arm, size_t size, size_t ops, size_t batch=64, bint threadsafe=False,
         size_t arena_chunk=1 << 20):
    """ns per alloc (release amortized): rounds of `batch` allocs then release all.

    arm: "linear" (linear_reset), "arena" (arena_reset; chunks of
    `arena_chunk` bytes), "malloc" (free each, oldest first) or "ref" (a
    minimal inline bump pointer reset by `top = 0`).
    """
    cdef ref_bump_t b
    cdef LinearAllocator lin
    cdef ArenaAllocator ar
    cdef void** ptrs
    cdef size_t rounds = (ops + batch - 1) // batch if batch else 0
    cdef size_t warm = rounds // 8 + 1
    cdef double t
    _check(size, batch, MAX_BATCH, "batch")
    if arm == "linear":
        lin = LinearAllocator(batch * (size + ALIGN) + 4096, threadsafe=threadsafe)
        with nogil:
            bulk_linear(lin.s, size, batch, warm)
            t = bulk_linear(lin.s, size, batch, rounds)
    elif arm == "arena":
        ar = ArenaAllocator(arena_chunk, 0, threadsafe=threadsafe)
        with nogil:
            bulk_arena(ar.a, size, batch, warm)
            t = bulk_arena(ar.a, size, batch, rounds)
    elif arm == "malloc":
        ptrs = <void**>malloc(batch * sizeof(void*))
        if ptrs == NULL:
            raise MemoryError()
        try:
            with nogil:
                bulk_malloc(ptrs, size, batch, warm)
                t = bulk_malloc(ptrs, size, batch, rounds)
        finally:
            free(ptrs)
    elif arm == "ref":
        b.size = batch * (size + ALIGN) + 4096
        b.top = 0
        b.base = <char*>malloc(b.size)
        if b.base == NULL:
            raise MemoryError()
        try:
            with nogil:
                bulk_ref(&b, size, batch, warm)
                t = bulk_ref(&b, size, batch, rounds)
        finally:
            free(b.base)
    else:
        raise ValueError(f"bulk arm must be 'linear', 'arena', 'malloc' or 'ref', got {arm!r}")
    return t / (rounds * batch)


def churn(str arm, size_t size, size_t ops, size_t live=512, bint threadsafe=False,
          uint64_t seed=0x9E3779B97F4A7C15):
    """ns per free+alloc of one block in a working set of `live` blocks.

    arm: "slab" (block_size = size), "malloc" or "ref" (a minimal intrusive
    free list over one array of blocks).  The working set is filled before
    the clock starts and freed after it stops.
    """
    cdef SlabAllocator sl = None
    cdef pgo_slab_t* s = NULL
    cdef void** ptrs = NULL
    cdef uint32_t* idx = NULL
    cdef char* pool = NULL
    cdef ref_node_t* head = NULL
    cdef size_t i, warm = ops // 8 + 1
    cdef size_t stride = (size + ALIGN - 1) & ~(<size_t>ALIGN - 1)
    cdef double t = 0.0
    _check(size, live, 1 << 24, "live")
    if arm not in ("slab", "malloc", "ref"):
        raise ValueError(f"churn arm must be 'slab', 'malloc' or 'ref', got {arm!r}")
    try:
        ptrs = <void**>malloc(live * sizeof(void*))
        idx = <uint32_t*>malloc((<size_t>IDX_MASK + 1) * sizeof(uint32_t))
        if ptrs == NULL or idx == NULL:
            raise MemoryError()
        fill_index(idx, live, seed)
        if arm == "slab":
            sl = SlabAllocator(size, threadsafe=threadsafe)
            s = sl.s
            with nogil:
                for i in range(live):
                    ptrs[i] = slab_alloc(s)
                    touch(ptrs[i], i)
                churn_slab(s, ptrs, idx, warm)
                t = churn_slab(s, ptrs, idx, ops)
                for i in range(live):
                    slab_free(s, ptrs[i])
        elif arm == "malloc":
            with nogil:
                for i in range(live):
                    ptrs[i] = checked_malloc(size)
                    touch(ptrs[i], i)
                churn_malloc(ptrs, idx, size, warm)
                t = churn_malloc(ptrs, idx, size, ops)
                for i in range(live):
                    free(ptrs[i])
        else:
            if stride < sizeof(ref_node_t):
                stride = sizeof(ref_node_t)
            pool = <char*>malloc(live * stride)
            if pool == NULL:
                raise MemoryError()
            with nogil:
                for i in range(live):
                    ptrs[i] = pool + i * stride
                    touch(ptrs[i], i)
                churn_ref(&head, ptrs, idx, warm)
                t = churn_ref(&head, ptrs, idx, ops)
    finally:
        free(ptrs)
        free(idx)
        free(pool)
    return t / ops


def sink():
    """The published accumulator (read it so nothing is dead code)."""
    return read_sink()
