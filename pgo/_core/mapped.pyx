"""MappedPool: blocks of any size carved from one mmap, private or shared.

Design: the pool is one mapping made up front -- anonymous and private, a
``memfd`` (``shared=True``) or a file (``path=``) -- that never grows or
moves, so a block's offset from the start is the same in every process
that maps it.  That is what sharing needs: the owner hands out arrays and
tells another process ``(pool.name, offset, shape, dtype)``; the other
process attaches by name and views the same memory.  A memfd has no name
in ``/dev/shm``: the kernel frees it when the last process that maps it
exits, however it exits, so a SIGKILL of either side leaves nothing behind.
Its name is ``pgo-mapped-<pid>-<fd>-<token>``, which another process of the
same user opens as ``/proc/<pid>/fd/<fd>`` (the token checks that the fd
still is the pool's).

Memory goes out in 64-byte units.  Free extents sit in 33 power-of-two bins
(a good fit: the head of the first bin whose every extent fits, else a
search of the bins below it, so a request fails only when no extent fits)
and coalesce with both neighbours when a block is freed.  All allocator
data lives in side arrays in a private mapping, never inside the pool, so
a process viewing the pool sees only the blocks, and a stray write into a
block cannot corrupt the free lists.

# NOTE: ownership.  The ``pgo_mapped_t``, its side arrays, the pool's
# mapping and (for a shared pool) its file descriptor belong to the
# MappedPool object, or to the C caller of ``mapped_create*``;
# ``mapped_destroy`` unmaps and closes them.  Blocks, arrays and views
# (``view()``, buffer exports) all hold the pool, so the mapping outlives
# every one of them in this process; other processes keep their own mapping.
# NOTE: threads and the GIL.  Every C path is nogil.  Without
# threadsafe=True the struct relies on its single user (or the GIL); with
# it, every entry point and every backend call (numpy's handler) takes the
# mutex.  ``base`` and ``size`` never change, so range tests need no lock.
# NOTE: fork.  After fork() a private pool is the child's own copy, but a
# shared one is the same memory in both processes while each has its own
# free lists: both would hand out the same bytes.  So a shared pool
# refuses to allocate in a forked child (it may read and free); the child
# attaches by name instead, as any other process does.
"""

import os
import re

import numpy as np

from libc.errno cimport EEXIST, ENOENT, errno
from libc.stdint cimport uint32_t, uint64_t, uintptr_t
from libc.string cimport memset, strerror
from posix.fcntl cimport O_CLOEXEC, O_CREAT, O_EXCL, O_RDWR, open as c_open
from posix.mman cimport (
    MADV_DONTNEED, MADV_HUGEPAGE, MAP_FAILED, MAP_POPULATE, MAP_SHARED, PROT_READ, PROT_WRITE,
    madvise, mmap, munmap,
)
from posix.stat cimport fstat, struct_stat
from posix.unistd cimport close, ftruncate

from pgo._core._base cimport (
    Allocator, Block, pgo_locked_alloc, pgo_locked_free, pgo_raise, pgo_raise_at,
)
from pgo._core._c.pgo_memory cimport MADV_POPULATE_WRITE, PGO_PAGE_BYTES
from pgo._core._memory cimport pgo_sys_calloc, pgo_sys_free, pgo_sys_map, pgo_sys_unmap
from pgo._core._typedefs cimport (
    PGO_CANARY, PGO_DEBUG_FILL, PGO_ERR_ALIGN, PGO_ERR_DOUBLE_FREE, PGO_ERR_FOREIGN,
    PGO_ERR_INTERIOR, PGO_ERR_NOMEM, PGO_ERR_PY_OWNED, PGO_ERR_TOO_BIG, PGO_FILL_ALLOC,
    PGO_FILL_FREE, PGO_OK, pgo_add_overflow, pgo_alloc_fn, pgo_backend_init, pgo_bad_align,
    pgo_destroy_fn, pgo_lock, pgo_lock_destroy, pgo_lock_gil_held, pgo_lock_init, pgo_unlock,
    pgo_vg_alloc, pgo_vg_create, pgo_vg_destroy, pgo_vg_free, pgo_vg_noaccess, pgo_within,
)

from pgo._errors import AllocatorError

cdef extern from "<sys/mman.h>" nogil:
    int memfd_create(const char* name, unsigned int flags)
    const unsigned int MFD_CLOEXEC
    const int MADV_REMOVE

cdef extern from "<pthread.h>" nogil:
    int pthread_atfork(void (*prepare)() noexcept nogil, void (*parent)() noexcept nogil,
                       void (*child)() noexcept nogil)

cdef enum:
    UNIT = 64
    NIL = 0xffffffff

# The most bytes a pool holds: lengths and links are 32-bit unit counts
# (0xffffffff is the end of a list), rounded down to whole pages so that a
# capacity under it stays under it when it is rounded up to pages.
cdef size_t MAX_BYTES = ((<size_t>0xfffffffe) << MAPPED_UNIT_SHIFT) & ~(<size_t>4095)
MAX_CAPACITY = MAX_BYTES

# A memfd pool's name: pgo-mapped-<pid>-<fd>-<token>.
_NAME = re.compile(r"pgo-mapped-(\d+)-(\d+)-([0-9a-f]{8})")

# Counts fork()s into this process (a pthread_atfork child handler): a
# shared pool made at another count is the parent's.
cdef uint64_t _fork_gen = 0


cdef void _forked() noexcept nogil:
    global _fork_gen
    _fork_gen += 1


if pthread_atfork(NULL, NULL, _forked) != 0:
    raise MemoryError("pgo: cannot install MappedPool's fork handler")


# -- the free extents -----------------------------------------------------------

cdef inline size_t _bin(size_t units) noexcept nogil:
    # floor(log2(units)), units >= 1
    return 63 - __builtin_clzll(units)


cdef extern from *:
    int __builtin_clzll(unsigned long long) nogil
    int __builtin_ctzll(unsigned long long) nogil


cdef inline bint _bit(uint64_t* bits, size_t u) noexcept nogil:
    return (bits[u >> 6] >> (u & 63)) & 1


cdef inline void _set(uint64_t* bits, size_t u) noexcept nogil:
    bits[u >> 6] |= (<uint64_t>1) << (u & 63)


cdef inline void _clear(uint64_t* bits, size_t u) noexcept nogil:
    bits[u >> 6] &= ~((<uint64_t>1) << (u & 63))


cdef void _insert_free(pgo_mapped_t* s, size_t u, size_t n) noexcept nogil:
    cdef size_t b = _bin(n)
    cdef uint32_t head = s.bins[b]
    s.len_at[u] = <uint32_t>n
    s.len_at[u + n - 1] = <uint32_t>n
    _set(s.free_head, u)
    _set(s.free_tail, u + n - 1)
    s.next_free[u] = head
    s.prev_free[u] = NIL
    if head != NIL:
        s.prev_free[head] = <uint32_t>u
    s.bins[b] = <uint32_t>u
    s.bin_mask |= (<uint64_t>1) << b
    s.free_units += n
    s.free_extents += 1


cdef void _remove_free(pgo_mapped_t* s, size_t u) noexcept nogil:
    cdef size_t n = s.len_at[u], b = _bin(n)
    cdef uint32_t nxt = s.next_free[u], prv = s.prev_free[u]
    if prv != NIL:
        s.next_free[prv] = nxt
    else:
        s.bins[b] = nxt
        if nxt == NIL:
            s.bin_mask &= ~((<uint64_t>1) << b)
    if nxt != NIL:
        s.prev_free[nxt] = prv
    _clear(s.free_head, u)
    _clear(s.free_tail, u + n - 1)
    s.free_units -= n
    s.free_extents -= 1


cdef inline size_t _aligned(size_t u, size_t align_units) noexcept nogil:
    return (u + align_units - 1) & ~(align_units - 1)


cdef inline bint _fits(pgo_mapped_t* s, size_t u, size_t need, size_t align_units) noexcept nogil:
    cdef size_t a = _aligned(u, align_units)
    return a + need <= u + s.len_at[u]


cdef size_t _find(pgo_mapped_t* s, size_t need, size_t align_units) noexcept nogil:
    # The free extent to carve `need` units aligned to `align_units` from,
    # or NIL.  Bins from ceil(log2(need + align_units - 1)) up hold only
    # extents that fit: take the head of the first non-empty one.  The bins
    # below may hold a fitting extent too; they are searched (a short good
    # fit first, all of them before giving up).
    cdef size_t worst = need + align_units - 1, b, lo_bin = _bin(need), top
    cdef uint64_t mask
    cdef uint32_t u
    cdef int looked
    top = _bin(worst)
    if (<size_t>1 << top) < worst:
        top += 1
    # A fit from need's own bin first: it keeps the large extents whole.
    u = s.bins[lo_bin] if lo_bin < MAPPED_NBINS else NIL
    looked = 0
    while u != NIL and looked < 8:
        if _fits(s, u, need, align_units):
            return u
        u = s.next_free[u]
        looked += 1
    if top < MAPPED_NBINS:
        mask = s.bin_mask >> top
        if mask:
            return s.bins[top + __builtin_ctzll(mask)]
    for b in range(lo_bin, top if top < MAPPED_NBINS else MAPPED_NBINS):
        u = s.bins[b]
        while u != NIL:
            if _fits(s, u, need, align_units):
                return u
            u = s.next_free[u]
    return NIL


cdef int mapped_take_unlocked(pgo_mapped_t* s, size_t n, size_t align, bint py,
                              void** out) noexcept nogil:
    cdef size_t need, align_units, u, a, total, end
    if s.view or _inherited(s):
        # A view, or a forked child's stale copy of a shared pool's free
        # lists: handing out memory here would hand out someone's data.
        s.stats.failed += 1
        return PGO_ERR_NOMEM
    if pgo_bad_align(align):
        s.stats.failed += 1
        return PGO_ERR_ALIGN
    if pgo_add_overflow(n, PGO_CANARY + UNIT - 1, &need) or need >> MAPPED_UNIT_SHIFT > s.nunits:
        s.stats.failed += 1
        return PGO_ERR_TOO_BIG
    need >>= MAPPED_UNIT_SHIFT
    if need == 0:
        need = 1
    align_units = align >> MAPPED_UNIT_SHIFT if align > UNIT else 1
    u = _find(s, need, align_units)
    if u == NIL:
        s.stats.failed += 1
        return PGO_ERR_NOMEM
    total = s.len_at[u]
    end = u + total
    a = _aligned(u, align_units)
    _remove_free(s, u)
    if a > u:
        _insert_free(s, u, a - u)
    if a + need < end:
        _insert_free(s, a + need, end - a - need)
    s.len_at[a] = <uint32_t>need
    _set(s.live, a)
    if py:
        _set(s.pybits, a)
    s.live_units += need
    if s.live_units > s.peak_units:
        s.peak_units = s.live_units
    s.stats.allocs += 1
    s.stats.requested += n
    s.stats.lost += (need << MAPPED_UNIT_SHIFT) - n
    out[0] = s.base + (a << MAPPED_UNIT_SHIFT)
    pgo_vg_alloc(s, out[0], need << MAPPED_UNIT_SHIFT)
    if PGO_DEBUG_FILL:
        memset(out[0], PGO_FILL_ALLOC, need << MAPPED_UNIT_SHIFT)
    return PGO_OK


cdef int mapped_locate(pgo_mapped_t* s, void* p, size_t* unit) noexcept nogil:
    # The live block that starts at p: PGO_OK and its unit, or why not.
    cdef size_t off, u, w
    cdef uint64_t word
    if s.view or not pgo_within(p, s.base, s.size):
        return PGO_ERR_FOREIGN          # a view has no blocks (nor side arrays)
    off = <uintptr_t>p - <uintptr_t>s.base
    u = off >> MAPPED_UNIT_SHIFT
    if (off & (UNIT - 1)) == 0 and _bit(s.live, u):
        unit[0] = u
        return PGO_OK
    # Inside a live block, or nowhere: find the nearest block start at or
    # below p (error path only, so a word-by-word scan is fine).
    w = u >> 6
    word = s.live[w] & ((<uint64_t>2 << (u & 63)) - 1 if (u & 63) != 63 else <uint64_t>-1)
    while True:
        if word:
            u = (w << 6) + 63 - __builtin_clzll(word)
            if u + s.len_at[u] > (off >> MAPPED_UNIT_SHIFT) and (u << MAPPED_UNIT_SHIFT) != off:
                return PGO_ERR_INTERIOR
            break
        if w == 0:
            break
        w -= 1
        word = s.live[w]
    return PGO_ERR_DOUBLE_FREE


cdef void mapped_release(pgo_mapped_t* s, size_t u) noexcept nogil:
    # Free the live block at unit u and merge it with its free neighbours.
    cdef size_t n = s.len_at[u], right, left
    _clear(s.live, u)
    _clear(s.pybits, u)
    s.live_units -= n
    s.stats.frees += 1
    if PGO_DEBUG_FILL and not _inherited(s):
        memset(s.base + (u << MAPPED_UNIT_SHIFT), PGO_FILL_FREE, n << MAPPED_UNIT_SHIFT)
    pgo_vg_free(s, s.base + (u << MAPPED_UNIT_SHIFT))
    right = u + n
    if right < s.nunits and _bit(s.free_head, right):
        n += s.len_at[right]
        _remove_free(s, right)
    if u > 0 and _bit(s.free_tail, u - 1):
        left = u - s.len_at[u - 1]
        n += s.len_at[left]
        _remove_free(s, left)
        u = left
    _insert_free(s, u, n)


cdef int _free_unlocked(void* state, void* p) noexcept nogil:
    # The C API's free: not of a block Python owns.
    cdef pgo_mapped_t* s = <pgo_mapped_t*>state
    cdef size_t u
    cdef int err
    if p == NULL:
        return PGO_OK
    err = mapped_locate(s, p, &u)
    if err != PGO_OK:
        return err
    if _bit(s.pybits, u):
        return PGO_ERR_PY_OWNED
    mapped_release(s, u)
    return PGO_OK


cdef void _reset_free(pgo_mapped_t* s) noexcept nogil:
    # Every unit free, in one extent.
    cdef size_t words = (s.nunits + 63) >> 6, b
    memset(s.live, 0, words * 8)
    memset(s.pybits, 0, words * 8)
    memset(s.free_head, 0, words * 8)
    memset(s.free_tail, 0, words * 8)
    for b in range(MAPPED_NBINS):
        s.bins[b] = NIL
    s.bin_mask = 0
    s.free_units = s.live_units = s.free_extents = 0
    if s.nunits:
        _insert_free(s, 0, s.nunits)


cdef pgo_mapped_t* mapped_create_over(char* base, size_t size, int fd, bint view,
                                      bint threadsafe) except NULL nogil:
    cdef pgo_mapped_t* s = <pgo_mapped_t*>pgo_sys_calloc(1, sizeof(pgo_mapped_t))
    cdef size_t nunits = size >> MAPPED_UNIT_SHIFT, words = (nunits + 64) >> 6
    if s == NULL:
        pgo_raise(PGO_ERR_NOMEM, "MappedPool", sizeof(pgo_mapped_t), 0)
        return NULL
    s.base = base
    s.size = size
    s.nunits = nunits
    s.lo = <size_t>base
    s.hi = <size_t>base + size
    s.fd = fd
    s.view = view
    s.fork_gen = _fork_gen
    if not view:
        # Untouched pages of the side arrays cost no memory.
        s.side_bytes = 3 * 4 * (nunits + 1) + 4 * 8 * words
        s.side = pgo_sys_map(s.side_bytes, False)
        if s.side == NULL:
            pgo_sys_free(s)
            pgo_raise(PGO_ERR_NOMEM, "MappedPool (its side arrays)", 3 * 4 * nunits, 0)
            return NULL
        s.live = <uint64_t*>s.side
        s.pybits = s.live + words
        s.free_head = s.pybits + words
        s.free_tail = s.free_head + words
        s.len_at = <uint32_t*>(s.free_tail + words)
        s.next_free = s.len_at + nunits + 1
        s.prev_free = s.next_free + nunits + 1
        _reset_free(s)
        s.stats.capacity = size
        pgo_vg_create(s)
        pgo_vg_noaccess(base, size)
    pgo_lock_init(&s.lock, threadsafe)
    return s


cdef pgo_mapped_t* mapped_create(size_t capacity, bint huge_pages,
                                 bint threadsafe) except NULL nogil:
    cdef size_t size = (capacity + PGO_PAGE_BYTES - 1) & ~(PGO_PAGE_BYTES - 1)
    cdef char* base
    cdef pgo_mapped_t* s
    if capacity == 0 or capacity > MAX_BYTES:
        pgo_raise(PGO_ERR_TOO_BIG, "MappedPool", capacity, 0)
        return NULL
    base = <char*>pgo_sys_map(size, huge_pages)
    if base == NULL:
        pgo_raise(PGO_ERR_NOMEM, "MappedPool", size, 0)
        return NULL
    s = mapped_create_over(base, size, -1, False, threadsafe)
    if s == NULL:
        pgo_sys_unmap(base, size)
    return s


cdef void mapped_destroy(pgo_mapped_t* s) noexcept nogil:
    if s == NULL:
        return
    if not s.view:
        pgo_vg_destroy(s)
        pgo_sys_unmap(s.side, s.side_bytes)
    pgo_lock_destroy(&s.lock)
    munmap(s.base, s.size)
    if s.fd >= 0:
        close(s.fd)
    pgo_sys_free(s)


cdef int _alloc_c(void* state, size_t n, size_t align, void** out) noexcept nogil:
    return mapped_take_unlocked(<pgo_mapped_t*>state, n, align, False, out)


cdef void* mapped_alloc(pgo_mapped_t* s, size_t n, size_t align) except NULL nogil:
    return pgo_locked_alloc(&s.lock, &s.stats, _alloc_c, s, n, align, "MappedPool")


cdef int mapped_free(pgo_mapped_t* s, void* p) except -1 nogil:
    return pgo_locked_free(&s.lock, &s.stats, _free_unlocked, s, p, "MappedPool")


cdef size_t _trim_unlocked(pgo_mapped_t* s) noexcept nogil:
    cdef size_t b, lo, hi, got = 0
    cdef uint32_t u
    cdef int advice = MADV_REMOVE if s.shared else MADV_DONTNEED
    if _inherited(s):
        return 0
    for b in range(MAPPED_NBINS):
        u = s.bins[b]
        while u != NIL:
            lo = ((<size_t>u << MAPPED_UNIT_SHIFT) + PGO_PAGE_BYTES - 1) & ~(PGO_PAGE_BYTES - 1)
            hi = ((<size_t>u + s.len_at[u]) << MAPPED_UNIT_SHIFT) & ~(PGO_PAGE_BYTES - 1)
            if hi > lo and madvise(s.base + lo, hi - lo, advice) == 0:
                got += hi - lo
            u = s.next_free[u]
    s.trimmed += got
    return got


cdef inline bint _inherited(pgo_mapped_t* s) noexcept nogil:
    # A shared pool in a forked child: the memory is the parent's, live, and
    # this copy of the free lists is stale -- nothing may be written to it.
    return s.shared and s.fork_gen != _fork_gen


cdef size_t mapped_trim(pgo_mapped_t* s) noexcept nogil:
    cdef size_t got
    if s.view or _inherited(s):
        return 0
    pgo_lock(&s.lock, &s.stats)
    got = _trim_unlocked(s)
    pgo_unlock(&s.lock)
    return got


# -- numpy's handler (see pgo_backend_t) ----------------------------------------
# Blocks taken for arrays are Python-owned, as a Block's are: C code cannot
# free them and reset() refuses while they are alive.

cdef int _take_unlocked(void* state, size_t n, size_t align, void** out) noexcept nogil:
    return mapped_take_unlocked(<pgo_mapped_t*>state, n, align, True, out)


cdef bint _holds(void* state, void* p) noexcept nogil:
    cdef pgo_mapped_t* s = <pgo_mapped_t*>state
    return pgo_within(p, s.base, s.size)


cdef int _give_unlocked(void* state, void* p) noexcept nogil:
    cdef pgo_mapped_t* s = <pgo_mapped_t*>state
    cdef size_t u
    cdef int err = mapped_locate(s, p, &u)
    if err == PGO_OK and not _bit(s.pybits, u):
        return PGO_ERR_DOUBLE_FREE
    if err == PGO_OK:
        mapped_release(s, u)
    return err


cdef size_t _span_unlocked(void* state, void* p) noexcept nogil:
    cdef pgo_mapped_t* s = <pgo_mapped_t*>state
    cdef size_t u
    if s.view or mapped_locate(s, p, &u) != PGO_OK:
        return 0
    return (<size_t>s.len_at[u] << MAPPED_UNIT_SHIFT) - PGO_CANARY


cdef int mapped_reset_unlocked(void* state) noexcept nogil:
    cdef pgo_mapped_t* s = <pgo_mapped_t*>state
    cdef size_t u
    if s.view:
        return PGO_OK
    s.stats.frees += s.stats.allocs - s.stats.frees
    if PGO_DEBUG_FILL and not _inherited(s):
        for u in range(s.nunits):
            if _bit(s.live, u):
                memset(s.base + (u << MAPPED_UNIT_SHIFT), PGO_FILL_FREE,
                       <size_t>s.len_at[u] << MAPPED_UNIT_SHIFT)
                pgo_vg_free(s, s.base + (u << MAPPED_UNIT_SHIFT))
    elif s.live_units:
        for u in range(s.nunits):
            if _bit(s.live, u):
                pgo_vg_free(s, s.base + (u << MAPPED_UNIT_SHIFT))
    _reset_free(s)
    s.stats.resets += 1
    s.stats.requested = 0
    s.stats.lost = 0
    return PGO_OK


# -- making the mapping -------------------------------------------------------------

cdef str _os_error(str what):
    cdef int e = errno
    return f"{what}: {strerror(e).decode()} (errno {e})"


cdef char* _map_fd(int fd, size_t size, bint populate) except NULL:
    cdef void* p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                        MAP_SHARED | (MAP_POPULATE if populate else 0), fd, 0)
    if p == MAP_FAILED:
        raise MemoryError(_os_error(f"MappedPool: cannot map {size:,} bytes"))
    return <char*>p


cdef void _prefault(char* base, size_t size) noexcept nogil:
    # Huge pages must be advised before the pages exist, so a huge pool is
    # populated after the advice, not by MAP_POPULATE; kernels before 5.14
    # lack MADV_POPULATE_WRITE, and there a write per page does the same.
    cdef size_t off
    if madvise(base, size, MADV_POPULATE_WRITE) != 0:
        off = 0
        while off < size:
            (<volatile char*>(base + off))[0] = 0
            off += PGO_PAGE_BYTES


cdef tuple memory_of(object obj):
    if isinstance(obj, Block):
        return obj.address, obj.nbytes
    arr = np.asarray(obj)
    return arr.__array_interface__["data"][0], arr.nbytes


cdef class MappedPool(Allocator):
    """Blocks of any size from one memory mapping, which other processes
    can map too: the arrays a process makes here, another sees.

    Args:
        capacity: bytes in the pool (rounded up to whole pages).  It never
            grows: an allocation that finds no free extent large enough
            raises MemoryError naming the largest one.
        shared: back the pool with a memfd, so that another process of the
            same user can ``MappedPool.attach(pool.name)``.  Nothing is
            named in /dev/shm: the memory goes when the last process that
            maps it exits, even by SIGKILL.
        path: back the pool with this file instead (created; an existing
            file is refused): it stays until ``unlink()``, crash or not.
        populate: fault every page in when the pool is made (MAP_POPULATE),
            so that no allocation pays a page fault later.
        huge_pages: advise transparent huge pages (MADV_HUGEPAGE).  For a
            shared pool they apply only where the kernel's
            ``shmem_enabled`` allows advice.
        threadsafe: take a mutex on every operation (see StackAllocator).

    Blocks are 64-byte aligned (up to 4096 on request) and freeing one
    merges it with its free neighbours.  ``offset(array)`` and
    ``view(offset, shape, dtype)`` move arrays between processes;
    ``trim()`` gives the pages of free extents back to the system.
    """

    def __cinit__(self, size_t capacity=0, *, bint shared=False, path=None,
                  bint populate=False, bint huge_pages=False, bint threadsafe=False,
                  attach=None):
        cdef size_t size
        cdef int fd = -1
        cdef char* base = NULL
        cdef str token
        self._name = ""
        self._path = None
        self._populate = populate
        self._huge = huge_pages
        if attach is not None:
            self._attach(attach, threadsafe)
            return
        if capacity == 0:
            raise ValueError("MappedPool needs a capacity of at least 1 byte")
        if capacity > MAX_BYTES:
            raise ValueError(f"MappedPool holds at most {MAX_CAPACITY:,} bytes; "
                             f"capacity {capacity:,} requested")
        if shared and path is not None:
            raise ValueError("MappedPool: shared=True (a memfd) and path= (a file) are two "
                             "ways to share one pool; pass one of them")
        size = (capacity + PGO_PAGE_BYTES - 1) & ~(PGO_PAGE_BYTES - 1)
        if not shared and path is None:
            self._mode = "private"
            self.s = mapped_create(size, huge_pages, threadsafe)
            if populate:
                _prefault(self.s.base, size)
            self._bind_pool()
            return
        if shared:
            self._mode = "memfd"
            token = os.urandom(4).hex()
            fd = memfd_create(f"pgo-mapped-{os.getpid()}-{token}".encode(), MFD_CLOEXEC)
            if fd < 0:
                raise OSError(errno, _os_error("MappedPool: memfd_create failed"))
            self._name = f"pgo-mapped-{os.getpid()}-{fd}-{token}"
        else:
            self._mode = "file"
            self._path = os.fspath(path)
            fd = c_open(os.fsencode(self._path), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            if fd < 0:
                if errno == EEXIST:
                    raise FileExistsError(
                        errno, f"MappedPool: {self._path} exists; attach to it with "
                        f"MappedPool.attach({self._path!r}), or remove it first")
                raise OSError(errno, _os_error(f"MappedPool: cannot create {self._path}"))
            self._name = self._path
        try:
            if ftruncate(fd, size) != 0:
                raise MemoryError(_os_error(f"MappedPool: cannot size the pool to {size:,} bytes"))
            base = _map_fd(fd, size, populate and not huge_pages)
            if huge_pages:
                madvise(base, size, MADV_HUGEPAGE)
                if populate:
                    _prefault(base, size)
            self.s = mapped_create_over(base, size, fd if shared else -1, False, threadsafe)
        except BaseException:
            if base != NULL:
                munmap(base, size)
            close(fd)
            if self._path is not None:
                os.unlink(self._path)
            raise
        self.s.shared = True
        if not shared:
            close(fd)        # the mapping keeps the file open; only a memfd's fd is its name
        self._bind_pool()

    cdef int _attach(self, str name, bint threadsafe) except -1:
        cdef int fd
        cdef size_t size
        cdef char* base = NULL
        cdef struct_stat sb
        cdef str where = name
        m = _NAME.fullmatch(name)
        if m is not None:
            pid, fdno, token = m.groups()
            where = f"/proc/{pid}/fd/{fdno}"
            try:
                target = os.readlink(where)
            except OSError:
                target = None
            if target != f"/memfd:pgo-mapped-{pid}-{token} (deleted)":
                raise FileNotFoundError(
                    2, f"MappedPool.attach: no pool named {name}: the process that made it "
                    f"(pid {pid}) has exited, or dropped or unlinked the pool")
        fd = c_open(os.fsencode(where), O_RDWR | O_CLOEXEC)
        if fd < 0:
            if errno == ENOENT:
                raise FileNotFoundError(errno, f"MappedPool.attach: no pool at {name}")
            raise OSError(errno, _os_error(f"MappedPool.attach: cannot open {name}"))
        try:
            if fstat(fd, &sb) != 0:
                raise OSError(errno, _os_error(f"MappedPool.attach: cannot stat {name}"))
            if m is not None and os.readlink(f"/proc/self/fd/{fd}") != target:
                # The owner closed that fd and opened another file under its
                # number between the check and the open.
                raise FileNotFoundError(
                    2, f"MappedPool.attach: no pool named {name}: the process that made it "
                    f"dropped or unlinked the pool")
            size = <size_t>sb.st_size
            if size == 0 or size % PGO_PAGE_BYTES or size > MAX_BYTES:
                raise ValueError(f"MappedPool.attach: {name} holds {size:,} bytes, not whole "
                                 f"pages up to {MAX_BYTES:,}: it is not a MappedPool")
            base = _map_fd(fd, size, self._populate)
            self.s = mapped_create_over(base, size, -1, True, threadsafe)
        except BaseException:
            if base != NULL:
                munmap(base, size)
            raise
        finally:
            close(fd)          # the mapping keeps the memory
        self.s.shared = True
        self._mode = "attached"
        self._name = name
        self._bind_pool()
        return 0

    cdef void _bind_pool(self) noexcept:
        # A view allocates nothing, so it has no take: the router refuses it.
        cdef pgo_alloc_fn take = _take_unlocked
        if self.s.view:
            take = NULL
        pgo_backend_init(&self._be, self.s, &self.s.lock, &self.s.stats, take, NULL, self.s.size,
                         _holds, _give_unlocked, _span_unlocked, &self.s.lo, &self.s.hi)
        self._bind(<pgo_destroy_fn>mapped_destroy, UNIT, PGO_PAGE_BYTES)

    @staticmethod
    def attach(name, *, bint populate=False, bint threadsafe=False):
        """The pool another process made, by its ``name`` (a memfd pool's
        ``pgo-mapped-...`` or a file pool's path), mapped into this one.

        It is a view: ``view(offset, shape, dtype)`` gives the arrays the
        owner made; allocating raises AllocatorError.  FileNotFoundError
        when the pool is gone (its owner exited or unlinked it).
        """
        return MappedPool(populate=populate, threadsafe=threadsafe, attach=os.fspath(name))

    # -- properties -----------------------------------------------------------------
    @property
    def name(self):
        """What another process passes to ``attach`` ('' for a private pool)."""
        return self._name

    @property
    def mode(self):
        """'private', 'memfd', 'file' or 'attached'."""
        return self._mode

    @property
    def attached(self):
        return bool(self.s.view)

    # -- sharing ----------------------------------------------------------------------
    def offset(self, obj):
        """Where a Block or array of this pool starts, in bytes from the
        pool's start: the same in every process that maps the pool."""
        cdef size_t address, nbytes
        address, nbytes = memory_of(obj)
        if not (self.s.lo <= address and address + nbytes <= self.s.hi):
            raise ValueError(f"{self!r}: the {type(obj).__name__} at {address:#x} "
                             f"({nbytes:,} bytes) is not inside this pool")
        return address - self.s.lo

    def view(self, size_t offset, shape, dtype=float, order="C"):
        """An array over the pool's bytes from ``offset`` (what ``offset()``
        gave in the process that made it).  It keeps the pool mapped."""
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64)) if np.ndim(shape) else int(shape)
        if count < 0:
            raise ValueError(f"view: negative dimensions in {shape!r}")
        nbytes = count * dt.itemsize
        if offset > self.s.size or nbytes > self.s.size - offset:
            raise ValueError(f"{self!r}: {nbytes:,} bytes from offset {offset:,} run past the "
                             f"pool's {self.s.size:,} bytes")
        return np.ndarray(shape, dtype=dt, buffer=self, offset=offset, order=order)

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        # The whole mapping, for view(): the exporter is the pool, so every
        # view holds it (and so the mapping) alive.
        buffer.buf = self.s.base
        buffer.obj = self
        buffer.len = self.s.size
        buffer.readonly = 0
        buffer.itemsize = 1
        buffer.format = NULL
        buffer.ndim = 1
        buffer.shape = NULL
        buffer.strides = NULL
        buffer.suboffsets = NULL
        buffer.internal = NULL
        self._views += 1

    def __releasebuffer__(self, Py_buffer* buffer):
        self._views -= 1

    def unlink(self):
        """Stop other processes from attaching: a file pool's file is
        removed, a memfd pool's name closed.  Arrays, views and processes
        already attached keep the memory."""
        if self._mode == "file":
            os.unlink(self._path)
        elif self._mode == "memfd":
            if self.s.fd >= 0:
                close(self.s.fd)
                self.s.fd = -1
        else:
            raise ValueError(f"{self!r}: only the process that made a shared pool unlinks it")

    def trim(self):
        """Give the whole pages inside free extents back to the system (their
        contents become zero); the bytes given back."""
        cdef size_t got
        pgo_lock_gil_held(self._lock, self._st)
        got = 0 if self.s.view else _trim_unlocked(self.s)
        pgo_unlock(self._lock)
        return got

    # -- the Allocator hooks -------------------------------------------------------------
    cdef int _c_alloc(self, size_t nbytes, size_t align, void** out, size_t* token) noexcept:
        cdef int err = _take_unlocked(self.s, nbytes, align, out)
        if err == PGO_OK:
            token[0] = (<char*>out[0] - self.s.base) >> MAPPED_UNIT_SHIFT
        return err

    cdef int _c_free(self, Block b) noexcept:
        mapped_release(self.s, b.token)
        return PGO_OK

    cdef void _c_dead(self, Block b) noexcept:
        mapped_release(self.s, b.token)

    cdef int _c_reset(self) noexcept:
        return mapped_reset_unlocked(self.s)

    cdef void _sync(self) noexcept:
        self.s.stats.in_use = self.s.live_units << MAPPED_UNIT_SHIFT
        self.s.stats.peak = self.s.peak_units << MAPPED_UNIT_SHIFT

    cdef size_t _canary_len(self, Block b) noexcept:
        return (<size_t>self.s.len_at[b.token] << MAPPED_UNIT_SHIFT) - b.nbytes if PGO_CANARY else 0

    cdef object _where(self, char* p):
        return f"offset {p - self.s.base:,}"

    cdef size_t _largest_free(self) noexcept:
        cdef size_t b, best = 0
        cdef uint32_t u
        if self.s.bin_mask == 0:
            return 0
        b = 63 - __builtin_clzll(self.s.bin_mask)
        u = self.s.bins[b]
        while u != NIL:
            if self.s.len_at[u] > best:
                best = self.s.len_at[u]
            u = self.s.next_free[u]
        return best << MAPPED_UNIT_SHIFT

    def _raise_alloc(self, int code, size_t nbytes, size_t align):
        if self.s.view:
            raise AllocatorError(f"{self!r} is attached to another process's pool: it views "
                                 f"the arrays made there and allocates none")
        if self.s.shared and self.s.fork_gen != _fork_gen:
            raise AllocatorError(
                f"{self!r} was made by the parent of this forked process: both would hand out "
                f"the same shared memory; attach with MappedPool.attach({self._name!r}) and "
                f"allocate in the parent")
        Allocator._raise_alloc(self, code, nbytes, align)

    def _describe_nomem(self, size_t nbytes):
        return (f"{self!r}: no free extent holds {nbytes:,} bytes: "
                f"{self.s.free_units << MAPPED_UNIT_SHIFT:,} of {self.s.size:,} bytes are free "
                f"in {self.s.free_extents:,} extent(s), the largest {self._largest_free():,}")

    def _extra_stats(self):
        return {"mode": self._mode, "name": self._name,
                "free_bytes": self.s.free_units << MAPPED_UNIT_SHIFT,
                "free_extents": self.s.free_extents, "largest_free": self._largest_free(),
                "trimmed_bytes": self.s.trimmed, "populate": self._populate,
                "huge_pages": self._huge}

    def _free_address(self, size_t address):
        """Test-only: run the C-level free on a raw address."""
        cdef int code
        pgo_lock_gil_held(self._lock, self._st)
        code = _free_unlocked(self.s, <void*>address)
        pgo_unlock(self._lock)
        if code != PGO_OK:
            pgo_raise_at(code, "MappedPool", <void*>address)

    def __repr__(self):
        where = f" name={self._name!r}" if self._name else ""
        return (f"<MappedPool {self._mode} capacity={self.s.size:,}{where} "
                f"threadsafe={bool(self.s.lock.enabled)}>")

