"""System memory for pgo's allocators.

Design: every block of memory an allocator reserves (a stack's buffer, an
arena chunk, a slab, a bitmap) comes from these four functions and goes back
through ``pgo_sys_free``.  Buffers of 4 MiB and more are aligned to 2 MiB and
advised ``MADV_HUGEPAGE`` (madvise's result is ignored: it is advice, and a
kernel without transparent huge pages simply declines).  They never raise: they return NULL and the caller
turns that into ``MemoryError`` naming the byte count.  ``n * size`` is
checked for overflow before anything is asked of the system.

Out-of-memory injection (``_inject_oom``) is a test-only entry point: it makes
a chosen future call fail, so that every growth path's failure handling can be
tested without exhausting the machine.

# NOTE: ownership.  What these functions return belongs to the caller (an
# allocator's struct), which gives it back with the matching free, unmap or
# unreserve; nothing is kept here.
# NOTE: threads and the GIL.  Every function is nogil and as thread-safe as
# the system calls under it.  The out-of-memory countdown is a plain C
# global read without the GIL; it is only set by tests, between
# operations, never concurrently with allocation.
"""

from libc.stdint cimport uintptr_t
from libc.stdlib cimport calloc, free, realloc
from posix.mman cimport (
    MADV_HUGEPAGE, MAP_ANONYMOUS, MAP_FAILED, MAP_NORESERVE, MAP_PRIVATE,
    PROT_NONE, PROT_READ, PROT_WRITE, madvise, mmap, mprotect, munmap,
)
from posix.stdlib cimport posix_memalign

from pgo._core._c.pgo_memory cimport PGO_HUGE_PAGE_BYTES, PGO_HUGEPAGE_MIN_BYTES, PGO_PAGE_BYTES
from pgo._core._typedefs cimport pgo_mul_overflow

cdef long _oom_countdown = -1


cdef inline bint _injected_failure() noexcept nogil:
    global _oom_countdown
    if _oom_countdown < 0:
        return False
    if _oom_countdown == 0:
        _oom_countdown = -1
        return True
    _oom_countdown -= 1
    return False


cdef void* pgo_sys_alloc(size_t nbytes, size_t align) noexcept nogil:
    cdef void* p = NULL
    if _injected_failure():
        return NULL
    if align < sizeof(void*):
        align = sizeof(void*)
    if nbytes >= PGO_HUGEPAGE_MIN_BYTES and align < PGO_HUGE_PAGE_BYTES:
        # Big buffers start on a huge-page boundary and ask for huge pages, as
        # numpy's default handler does for its arrays: without it, touching
        # fresh memory costs one page fault per 4 KiB instead of per 2 MiB.
        align = PGO_HUGE_PAGE_BYTES
    if posix_memalign(&p, align, nbytes if nbytes else 1) != 0:
        return NULL
    if nbytes >= PGO_HUGEPAGE_MIN_BYTES:
        madvise(p, nbytes & ~(PGO_HUGE_PAGE_BYTES - 1), MADV_HUGEPAGE)
    return p


cdef void* pgo_sys_calloc(size_t count, size_t size) noexcept nogil:
    cdef size_t total
    if pgo_mul_overflow(count, size, &total) or _injected_failure():
        return NULL
    return calloc(count if count else 1, size if size else 1)


cdef void* pgo_sys_realloc(void* p, size_t count, size_t size) noexcept nogil:
    cdef size_t total
    if pgo_mul_overflow(count, size, &total) or _injected_failure():
        return NULL
    return realloc(p, total if total else 1)


cdef void pgo_sys_free(void* p) noexcept nogil:
    free(p)


cdef char* pgo_sys_reserve(size_t nbytes, size_t min_bytes, size_t align, size_t* got,
                           void** raw, size_t* raw_len) noexcept nogil:
    cdef void* p = MAP_FAILED
    cdef uintptr_t a
    if align < PGO_PAGE_BYTES:
        align = PGO_PAGE_BYTES
    if min_bytes > nbytes:
        min_bytes = nbytes
    # One injected failure fails the whole call, as one refusal of the
    # smallest size would.
    if _injected_failure() or nbytes > (<size_t>-1) - align:
        return NULL
    while True:
        p = mmap(NULL, nbytes + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        if p != MAP_FAILED or nbytes <= min_bytes:
            break
        nbytes = nbytes // 2 if nbytes // 2 > min_bytes else min_bytes
    if p == MAP_FAILED:
        return NULL
    raw[0] = p
    raw_len[0] = nbytes + align
    got[0] = nbytes
    a = (<uintptr_t>p + align - 1) & ~(<uintptr_t>align - 1)
    return <char*>a


cdef int pgo_sys_commit(char* p, size_t nbytes) noexcept nogil:
    # 0, or -1 when the system refuses (or a failure was injected).
    if _injected_failure():
        return -1
    if mprotect(p, nbytes, PROT_READ | PROT_WRITE) != 0:
        return -1
    if nbytes >= PGO_HUGEPAGE_MIN_BYTES:
        madvise(p, nbytes, MADV_HUGEPAGE)
    return 0


cdef void* pgo_sys_map(size_t nbytes, bint huge) noexcept nogil:
    # Fresh zero pages straight from the kernel: page aligned, and for
    # `huge` buffers of 4 MiB and more 2 MiB aligned and advised huge pages
    # (the head and tail of an over-sized mapping are unmapped).
    cdef void* p
    cdef uintptr_t a, end, raw_end
    cdef size_t slack = PGO_HUGE_PAGE_BYTES if huge and nbytes >= PGO_HUGEPAGE_MIN_BYTES else 0
    if _injected_failure() or nbytes == 0 or nbytes > (<size_t>-1) - PGO_HUGE_PAGE_BYTES - PGO_PAGE_BYTES:
        return NULL
    nbytes = (nbytes + PGO_PAGE_BYTES - 1) & ~(PGO_PAGE_BYTES - 1)
    p = mmap(NULL, nbytes + slack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if p == MAP_FAILED:
        return NULL
    if slack:
        a = (<uintptr_t>p + PGO_HUGE_PAGE_BYTES - 1) & ~(<uintptr_t>PGO_HUGE_PAGE_BYTES - 1)
        end = a + nbytes
        raw_end = <uintptr_t>p + nbytes + slack
        if a > <uintptr_t>p:
            munmap(p, a - <uintptr_t>p)
        if raw_end > end:
            munmap(<void*>end, raw_end - end)
        p = <void*>a
        madvise(p, nbytes, MADV_HUGEPAGE)
    return p


cdef void pgo_sys_unmap(void* p, size_t nbytes) noexcept nogil:
    if p != NULL:
        munmap(p, (nbytes + PGO_PAGE_BYTES - 1) & ~(PGO_PAGE_BYTES - 1))


cdef void pgo_sys_unreserve(void* raw, size_t raw_len) noexcept nogil:
    if raw != NULL:
        munmap(raw, raw_len)


def _inject_oom(long after=0):
    """Test-only: make the system allocation after `after` more succeed fail.

    ``_inject_oom(0)`` fails the very next one; ``_inject_oom(-1)`` disarms.
    """
    global _oom_countdown
    _oom_countdown = after


def _oom_armed():
    """Test-only: True while an injected failure is still pending."""
    return _oom_countdown >= 0
