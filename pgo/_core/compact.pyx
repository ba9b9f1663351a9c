"""CompactingAllocator: small blocks (16 B - 16 KiB) whose memory goes back to
the system when frees leave holes in every page, without moving a block.

Design (Mesh: Powers, Tench, Berger and McGregor, PLDI 2019): the blocks
of a size class live in spans of one page or more, carved from a range
mapped ``MAP_SHARED`` from a memfd, each span's pages at the file offset of
their place in the range.  When most blocks are freed in no particular
order, every span keeps a few live ones and no page can go back.
``compact()`` finds spans of a class whose live slots do not overlap,
copies the live blocks of one into the other's pages at the same offsets,
maps the first span's addresses onto the second's file pages
(``mmap(MAP_FIXED)``) and punches the first's pages out of the file
(``fallocate(PUNCH_HOLE)``): two virtual spans, one physical span, every
pointer as it was.  Spans with nothing alive go back whole.  Meshing is a
greedy first fit, fullest spans first, each probing at most
``MAX_PROBES`` candidates, as Mesh's random probing bounds its work.

# NOTE: ownership.  The ``pgo_compact_t``, its memfd, the mapped range and
# the span, heap and page tables belong to the CompactingAllocator object
# (or to the C caller of ``compact_create``); ``compact_destroy`` unmaps
# and closes them.  A Python Block holds its allocator, so the range
# outlives every Block and array made from it.
# NOTE: threads and the GIL.  Every C path is nogil and runs under the
# allocator's lock (threadsafe=True) or relies on its single user (or the
# GIL).  compact() copies live blocks: it is a safe point, where no other
# thread may write into this allocator's blocks.  From Python it holds the
# GIL throughout, so Python code and GIL-holding numpy code in other
# threads wait; nogil code (numpy's loops over big arrays, C extensions)
# must not be writing then.  ``pgo run`` compacts only while the program
# has one thread.
# NOTE: fork.  A MAP_SHARED memfd mapping would stay shared with a forked
# child: parent and child would see each other's writes.  The child
# therefore copies every live span into a new memfd and maps that over the
# range before fork() returns, and the parent waits for it (a pipe), so
# the child's copy is the memory as it was at fork().  (Other threads of
# the parent that write nogil meanwhile: as for compact().)  A child that
# cannot make its copy aborts with a message rather than share memory.
"""

import os

from libc.errno cimport EINTR, ENOMEM, errno
from libc.stdint cimport uint8_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport abort, qsort
from libc.string cimport memcpy, memset, strerror, strlen
from posix.mman cimport MAP_FAILED, MAP_FIXED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap
from posix.stat cimport fstat, struct_stat
from posix.types cimport off_t
from posix.unistd cimport close, ftruncate, read, write

from pgo._core._base cimport (
    Allocator, Block, pgo_fail, pgo_fail_at, pgo_fail_null, pgo_fork_inner, pgo_raise_at,
)
from pgo._core._c.pgo_defs cimport pgo_vg_defined
from pgo._core._memory cimport (
    pgo_sys_alloc, pgo_sys_calloc, pgo_sys_free, pgo_sys_map, pgo_sys_realloc, pgo_sys_unmap,
)
from pgo._core._typedefs cimport (
    PGO_CANARY, PGO_DEBUG_FILL, PGO_ERR_ALIGN, PGO_ERR_DOUBLE_FREE, PGO_ERR_FOREIGN,
    PGO_ERR_INTERIOR, PGO_ERR_NOMEM, PGO_ERR_PY_OWNED, PGO_ERR_TOO_BIG, PGO_FILL_ALLOC,
    PGO_FILL_FREE, PGO_OK, pgo_backend_init, pgo_bad_align, pgo_destroy_fn, pgo_lock, pgo_lock_destroy,
    pgo_lock_gil_held, pgo_lock_init, pgo_unlock, pthread_mutex_init, pthread_mutex_lock,
    pthread_mutex_t, pthread_mutex_unlock, pgo_vg_alloc, pgo_vg_create,
    pgo_vg_destroy, pgo_vg_free, pgo_vg_noaccess, pgo_within,
)

from pgo._errors import AllocatorError

cdef extern from "<sys/mman.h>" nogil:
    int memfd_create(const char* name, unsigned int flags)
    const unsigned int MFD_CLOEXEC
    const int MAP_NORESERVE

cdef extern from "<fcntl.h>" nogil:
    int fallocate(int fd, int mode, off_t offset, off_t length)
    const int FALLOC_FL_PUNCH_HOLE
    const int FALLOC_FL_KEEP_SIZE

cdef extern from "<unistd.h>" nogil:
    ssize_t pwrite(int fd, const void* buf, size_t count, off_t offset)
    int pipe2(int* fds, int flags)
    const int O_CLOEXEC


cdef extern from *:
    int __builtin_ctzll(unsigned long long) nogil
    int __builtin_popcountll(unsigned long long) nogil

cdef enum:
    PAGE = 4096
    NIL = 0xffffffff
    MIN_SLOTS = 8            # a span holds at least this many blocks: one block per
                             # span could never share a page
    MAX_PROBES = 8192        # candidates a span is tried against when meshing

# The range reserved (address space and a sparse file: no memory) when the
# allocator is made; halved while the system refuses, down to MIN_RESERVE.
cdef size_t DEFAULT_RESERVE = (<size_t>16) << 30
cdef size_t MIN_RESERVE = (<size_t>64) << 20

MAX_SMALL = COMPACT_MAX_SMALL

# -- size classes --------------------------------------------------------------------------
# 16-byte steps to 128, then four classes per doubling to 16 KiB (at most
# 25% of a block lost to rounding up).

cdef uint32_t _size_of[COMPACT_NCLASSES]
cdef enum:
    CLASS_INDEX = 1025       # COMPACT_MAX_SMALL / 16 + 1 (a literal: C array bounds)
cdef uint8_t _class_of[CLASS_INDEX]     # by (n + 15) // 16


cdef void _make_classes() noexcept:
    cdef size_t c = 0, size = 16, step, i
    while size <= 128:
        _size_of[c] = size
        c += 1
        size += 16
    step = 32
    while c < COMPACT_NCLASSES:
        _size_of[c] = _size_of[c - 1] + step
        c += 1
        if (_size_of[c - 1] & (_size_of[c - 1] - 1)) == 0:
            step *= 2
    c = 0
    for i in range(CLASS_INDEX):
        while _size_of[c] < i * 16:
            c += 1
        _class_of[i] = c


_make_classes()
CLASS_SIZES = tuple(_size_of[c] for c in range(COMPACT_NCLASSES))


cdef inline size_t _class_for(size_t n, size_t align) noexcept nogil:
    # The smallest class of n (1..COMPACT_MAX_SMALL) bytes or more whose
    # size is a multiple of align (a power of two up to the page): spans
    # start on a page, so its every slot is aligned.  COMPACT_NCLASSES: none.
    cdef size_t c = _class_of[(n + 15) >> 4]
    while c < COMPACT_NCLASSES and _size_of[c] & (align - 1):
        c += 1
    return c


cdef void _init_classes(pgo_compact_t* s) noexcept nogil:
    cdef size_t c, pages, slots, w
    cdef pgo_cclass_t* k
    for c in range(COMPACT_NCLASSES):
        k = &s.classes[c]
        pages = (_size_of[c] * MIN_SLOTS + PAGE - 1) // PAGE
        slots = pages * PAGE // _size_of[c]
        if slots > COMPACT_MAX_SLOTS:
            slots = COMPACT_MAX_SLOTS
        k.size = _size_of[c]
        k.pages = pages
        k.slots = slots
        for w in range(4):
            if slots >= (w + 1) * 64:
                k.full[w] = ~(<uint64_t>0)
            elif slots > w * 64:
                k.full[w] = ((<uint64_t>1) << (slots - w * 64)) - 1
            else:
                k.full[w] = 0
        k.current = NIL
        k.partial = NIL
        k.free_spans = NIL
        k.live = 0


# -- spans and heaps -----------------------------------------------------------------------

cdef inline char* _span_va(pgo_compact_t* s, uint32_t v) noexcept nogil:
    return s.base + <size_t>s.spans[v].first_page * PAGE


cdef inline off_t _span_off(pgo_compact_t* s, uint32_t v) noexcept nogil:
    return <off_t>(<size_t>s.spans[v].first_page * PAGE)


cdef void _punch(pgo_compact_t* s, off_t off, size_t nbytes) noexcept nogil:
    # The file's pages at off go back to the system (reads see zeros).
    # (A memfd supports hole punching on every kernel that has memfds.)
    fallocate(s.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, <off_t>nbytes)


cdef int _grow_tables(pgo_compact_t* s) noexcept nogil:
    # Room for one more span and one more heap record.
    cdef void* t
    cdef size_t cap
    if s.nspans == s.cap_spans:
        cap = s.cap_spans * 2 if s.cap_spans else 256
        t = pgo_sys_realloc(s.spans, cap, sizeof(pgo_cspan_t))
        if t == NULL:
            return PGO_ERR_NOMEM
        s.spans = <pgo_cspan_t*>t
        s.cap_spans = cap
    if s.free_heaps == NIL and s.nheaps == s.cap_heaps:
        cap = s.cap_heaps * 2 if s.cap_heaps else 256
        t = pgo_sys_realloc(s.heaps, cap, sizeof(pgo_cheap_t))
        if t == NULL:
            return PGO_ERR_NOMEM
        s.heaps = <pgo_cheap_t*>t
        s.cap_heaps = cap
    return PGO_OK


cdef int _new_heap(pgo_compact_t* s, size_t c, uint32_t* out) noexcept nogil:
    # A heap of class c on a retired span of the class, or on new pages.
    cdef pgo_cclass_t* k = &s.classes[c]
    cdef size_t span_bytes = <size_t>k.pages * PAGE, i
    cdef uint32_t v, h
    cdef int err
    if s.max_bytes and s.resident + span_bytes > s.max_bytes:
        return PGO_ERR_NOMEM
    err = _grow_tables(s)
    if err != PGO_OK:
        return err
    v = k.free_spans
    if v != NIL and s.spans[v].remapped:
        # Its addresses still map another span's (punched) pages: back onto
        # its own file pages, holes that read as zeros.  Refused (the
        # mapping count): new pages instead, if the range has them.
        if mmap(_span_va(s, v), span_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                s.fd, _span_off(s, v)) == MAP_FAILED:
            v = NIL
        else:
            s.spans[v].remapped = 0
            s.remapped_spans -= 1
    if v != NIL:
        k.free_spans = s.spans[v].next
    else:
        if s.brk_pages + k.pages > s.max_pages:
            return PGO_ERR_NOMEM
        v = <uint32_t>s.nspans
        s.nspans += 1
        s.spans[v].first_page = <uint32_t>s.brk_pages
        s.spans[v].cls = <uint8_t>c
        s.spans[v].remapped = 0
        for i in range(k.pages):
            s.page_span[s.brk_pages + i] = v + 1
        s.brk_pages += k.pages
    memset(s.spans[v].used, 0, sizeof(s.spans[v].used))
    memset(s.spans[v].py, 0, sizeof(s.spans[v].py))
    s.spans[v].next = NIL
    if s.free_heaps != NIL:
        h = s.free_heaps
        s.free_heaps = s.heaps[h].next_partial
    else:
        h = <uint32_t>s.nheaps
        s.nheaps += 1
    memset(&s.heaps[h], 0, sizeof(pgo_cheap_t))
    s.heaps[h].first_span = v
    s.heaps[h].nspans = 1
    s.heaps[h].cls = <uint8_t>c
    s.heaps[h].alive = 1
    s.heaps[h].next_partial = NIL
    s.spans[v].heap = h
    s.resident += span_bytes
    if PGO_DEBUG_FILL:
        memset(_span_va(s, v), PGO_FILL_FREE, span_bytes)
    pgo_vg_noaccess(_span_va(s, v), span_bytes)
    out[0] = h
    return PGO_OK


cdef void _release_heap(pgo_compact_t* s, uint32_t h) noexcept nogil:
    # An empty heap: its pages go back, its spans to the class's free list.
    cdef pgo_cheap_t* hp = &s.heaps[h]
    cdef pgo_cclass_t* k = &s.classes[hp.cls]
    cdef size_t span_bytes = <size_t>k.pages * PAGE
    cdef uint32_t v = hp.first_span, nxt
    _punch(s, _span_off(s, v), span_bytes)
    while v != NIL:
        nxt = s.spans[v].next
        s.spans[v].heap = NIL
        s.spans[v].next = k.free_spans
        k.free_spans = v
        v = nxt
    s.resident -= span_bytes
    s.released_bytes += span_bytes
    hp.alive = 0
    hp.listed = 0
    hp.next_partial = s.free_heaps
    s.free_heaps = h


# -- allocation and free -----------------------------------------------------------------

cdef int _take(pgo_compact_t* s, size_t n, size_t align, bint py, void** out) noexcept nogil:
    # A slot for n bytes aligned to align (the lock held).
    cdef size_t c, w, slot
    cdef uint64_t bits
    cdef pgo_cclass_t* k
    cdef pgo_cheap_t* hp
    cdef uint32_t h, v
    cdef int err
    if pgo_bad_align(align):
        s.stats.failed += 1
        return PGO_ERR_ALIGN
    c = _class_for((n if n else 1) + PGO_CANARY, align) if n <= COMPACT_MAX_SMALL - PGO_CANARY \
        else COMPACT_NCLASSES
    if c == COMPACT_NCLASSES:
        s.stats.failed += 1
        return PGO_ERR_TOO_BIG
    k = &s.classes[c]
    h = k.current
    if h == NIL or s.heaps[h].live == k.slots:
        # The next heap with a free slot (a heap is in the list at most
        # once, flagged `listed`), else a new one.
        h = k.partial
        while h != NIL and s.heaps[h].live == k.slots:
            s.heaps[h].listed = 0
            h = s.heaps[h].next_partial
        if h != NIL:
            k.partial = s.heaps[h].next_partial
            s.heaps[h].listed = 0
        else:
            k.partial = NIL
            err = _new_heap(s, c, &h)
            if err != PGO_OK:
                s.stats.failed += 1
                return err
        k.current = h
    hp = &s.heaps[h]
    slot = 0
    for w in range(4):
        bits = ~hp.used[w] & k.full[w]
        if bits:
            slot = w * 64 + <size_t>__builtin_ctzll(bits)
            break
    v = hp.first_span
    hp.used[slot >> 6] |= (<uint64_t>1) << (slot & 63)
    s.spans[v].used[slot >> 6] |= (<uint64_t>1) << (slot & 63)
    if py:
        s.spans[v].py[slot >> 6] |= (<uint64_t>1) << (slot & 63)
    hp.live += 1
    k.live += 1
    s.live_bytes += k.size
    if s.live_bytes > s.peak_live:
        s.peak_live = s.live_bytes
    s.stats.allocs += 1
    s.stats.requested += n
    s.stats.lost += k.size - n
    out[0] = _span_va(s, v) + slot * k.size
    pgo_vg_alloc(s, out[0], k.size)
    if PGO_DEBUG_FILL:
        memset(out[0], PGO_FILL_ALLOC, k.size)
    return PGO_OK


cdef int _locate(pgo_compact_t* s, const void* p, uint32_t* span, size_t* slot) noexcept nogil:
    cdef size_t off, page
    cdef uint32_t v
    cdef pgo_cclass_t* k
    if not pgo_within(p, s.base, s.brk_pages * PAGE):
        return PGO_ERR_FOREIGN
    page = (<uintptr_t>p - <uintptr_t>s.base) // PAGE
    v = s.page_span[page]
    if v == 0:
        return PGO_ERR_FOREIGN
    v -= 1
    k = &s.classes[s.spans[v].cls]
    off = <uintptr_t>p - <uintptr_t>_span_va(s, v)
    if off % k.size or off // k.size >= k.slots:
        return PGO_ERR_INTERIOR
    span[0] = v
    slot[0] = off // k.size
    return PGO_OK


cdef int _give(pgo_compact_t* s, void* p, bint py) noexcept nogil:
    # A free (the lock held); py: from a Python Block or an array.
    cdef uint32_t v, h
    cdef size_t slot
    cdef uint64_t bit
    cdef pgo_cclass_t* k
    cdef pgo_cheap_t* hp
    cdef int err
    cdef bint owned
    if p == NULL:
        return PGO_OK
    err = _locate(s, p, &v, &slot)
    if err != PGO_OK:
        return err
    bit = (<uint64_t>1) << (slot & 63)
    h = s.spans[v].heap
    if h == NIL or not (s.spans[v].used[slot >> 6] & bit):
        return PGO_ERR_DOUBLE_FREE
    owned = (s.spans[v].py[slot >> 6] & bit) != 0
    if owned != py:
        # C code freeing a Python-owned block; or numpy giving back a block
        # C code owns (it never made it: gone already).
        return PGO_ERR_DOUBLE_FREE if py else PGO_ERR_PY_OWNED
    k = &s.classes[s.spans[v].cls]
    hp = &s.heaps[h]
    s.spans[v].used[slot >> 6] &= ~bit
    s.spans[v].py[slot >> 6] &= ~bit
    hp.used[slot >> 6] &= ~bit
    hp.live -= 1
    k.live -= 1
    s.live_bytes -= k.size
    s.stats.frees += 1
    if PGO_DEBUG_FILL:
        memset(p, PGO_FILL_FREE, k.size)
    pgo_vg_free(s, p)
    if hp.live == k.slots - 1 and not hp.listed and h != k.current:
        hp.listed = 1
        hp.next_partial = k.partial
        k.partial = h
    return PGO_OK


# -- compaction ------------------------------------------------------------------------------

cdef int _cmp_desc(const void* a, const void* b) noexcept nogil:
    cdef uint64_t x = (<const uint64_t*>a)[0], y = (<const uint64_t*>b)[0]
    return -1 if x > y else (1 if x < y else 0)


# Test hook: the k-th mapping meshing makes from now fails as if the
# system refused it (ENOMEM: vm.max_map_count reached); -1: none.
cdef int _fail_map_at = -1


def _inject_map_failure(int k):
    global _fail_map_at
    _fail_map_at = k


cdef void* _map_span(pgo_compact_t* s, char* va, size_t nbytes, off_t off) noexcept nogil:
    global _fail_map_at
    if _fail_map_at >= 0:
        _fail_map_at -= 1
        if _fail_map_at < 0:
            errno = ENOMEM
            return MAP_FAILED
    return mmap(va, nbytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, s.fd, off)


cdef int _mesh(pgo_compact_t* s, uint32_t src, uint32_t dst) noexcept nogil:
    # src's live blocks into dst's pages, src's spans onto dst's pages; -1
    # (nothing changed) when the system refuses a mapping.
    cdef pgo_cheap_t* sp = &s.heaps[src]
    cdef pgo_cheap_t* dp = &s.heaps[dst]
    cdef pgo_cclass_t* k = &s.classes[sp.cls]
    cdef size_t span_bytes = <size_t>k.pages * PAGE, w, slot
    cdef char* dva = _span_va(s, dp.first_span)
    cdef char* sva = _span_va(s, sp.first_span)
    cdef off_t dst_off = _span_off(s, dp.first_span), src_off = _span_off(s, sp.first_span)
    cdef uint64_t bits
    cdef uint32_t v, u, tail
    for w in range(4):
        bits = sp.used[w]
        while bits:
            slot = w * 64 + <size_t>__builtin_ctzll(bits)
            bits &= bits - 1
            pgo_vg_defined(dva + slot * k.size, k.size)
            memcpy(dva + slot * k.size, sva + slot * k.size, k.size)
    v = sp.first_span
    while v != NIL:
        if _map_span(s, _span_va(s, v), span_bytes, dst_off) == MAP_FAILED:
            # Back onto src's pages, which still hold every block.
            u = sp.first_span
            while u != v:
                mmap(_span_va(s, u), span_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                     s.fd, src_off)
                u = s.spans[u].next
            s.mesh_failures += 1
            return -1
        v = s.spans[v].next
    v = sp.first_span
    tail = v
    while v != NIL:
        s.spans[v].heap = dst
        if not s.spans[v].remapped:
            s.spans[v].remapped = 1
            s.remapped_spans += 1
        tail = v
        v = s.spans[v].next
    s.spans[tail].next = s.spans[dp.first_span].next
    s.spans[dp.first_span].next = sp.first_span
    for w in range(4):
        dp.used[w] |= sp.used[w]
    dp.live += sp.live
    dp.nspans += sp.nspans
    _punch(s, src_off, span_bytes)
    s.resident -= span_bytes
    s.released_bytes += span_bytes
    s.meshes += sp.nspans
    sp.alive = 0
    sp.listed = 0
    sp.next_partial = s.free_heaps
    s.free_heaps = src
    return 0


cdef inline bint _disjoint(pgo_cheap_t* a, pgo_cheap_t* b) noexcept nogil:
    return not ((a.used[0] & b.used[0]) | (a.used[1] & b.used[1])
                | (a.used[2] & b.used[2]) | (a.used[3] & b.used[3]))


cdef int _compact_unlocked(pgo_compact_t* s, pgo_compact_result_t* r) noexcept nogil:
    cdef size_t c, i, j, n, nd, probes, start, found, moved
    cdef uint32_t h
    cdef uint64_t* keys = NULL
    cdef uint32_t* dsts = NULL
    cdef pgo_cclass_t* k
    cdef pgo_cheap_t* hp
    cdef bint stop = False
    cdef uint64_t released0 = s.released_bytes
    memset(r, 0, sizeof(pgo_compact_result_t))
    r.resident_before = s.resident
    r.live_bytes = s.live_bytes
    if s.nheaps:
        keys = <uint64_t*>pgo_sys_alloc(s.nheaps * sizeof(uint64_t), 16)
        dsts = <uint32_t*>pgo_sys_alloc(s.nheaps * sizeof(uint32_t), 16)
        if keys == NULL or dsts == NULL:
            pgo_sys_free(keys)
            pgo_sys_free(dsts)
            return PGO_ERR_NOMEM
    for c in range(COMPACT_NCLASSES):
        k = &s.classes[c]
        n = 0
        for i in range(s.nheaps):
            hp = &s.heaps[i]
            if not hp.alive or hp.cls != c:
                continue
            if i == k.current:
                k.current = NIL          # a safe point: no heap is special
            if hp.live == 0:
                _release_heap(s, <uint32_t>i)
                r.emptied += 1
            elif hp.live < k.slots:
                keys[n] = ((<uint64_t>hp.live) << 32) | i
                n += 1
        if stop or n < 2:
            continue
        # Fullest first: each next span tries the spans kept so far.
        qsort(keys, n, sizeof(uint64_t), _cmp_desc)
        nd = 0
        for i in range(n):
            h = <uint32_t>(keys[i] & 0xffffffffu)
            hp = &s.heaps[h]
            probes = nd if nd < MAX_PROBES else MAX_PROBES
            start = nd - probes
            # Best fit: the fullest span it fits into.
            found = nd
            for j in range(start, nd):
                if (_disjoint(hp, &s.heaps[dsts[j]])
                        and s.heaps[dsts[j]].nspans + hp.nspans <= COMPACT_MAX_MESH
                        and (found == nd or s.heaps[dsts[j]].live > s.heaps[dsts[found]].live)):
                    found = j
            if found == nd:
                dsts[nd] = h
                nd += 1
                continue
            moved = hp.nspans
            if _mesh(s, h, dsts[found]) != 0:
                stop = True          # the system refuses mappings: keep what is done
                break
            r.meshed += moved
            if s.heaps[dsts[found]].live == k.slots:
                dsts[found] = dsts[nd - 1]
                nd -= 1
    pgo_sys_free(keys)
    pgo_sys_free(dsts)
    # The lists of heaps with free slots, afresh.
    for c in range(COMPACT_NCLASSES):
        s.classes[c].partial = NIL
    for i in range(s.nheaps):
        hp = &s.heaps[i]
        hp.listed = 0
        k = &s.classes[hp.cls]
        if hp.alive and hp.live < k.slots:
            hp.listed = 1
            hp.next_partial = k.partial
            k.partial = <uint32_t>i
    s.compactions += 1
    r.released_bytes = s.released_bytes - released0
    r.resident_after = s.resident
    return PGO_OK


cdef void _reset_unlocked(pgo_compact_t* s) noexcept nogil:
    # Every heap goes back; spans stay with their classes for reuse.
    cdef size_t i, c
    for c in range(COMPACT_NCLASSES):
        s.classes[c].current = NIL
        s.classes[c].partial = NIL
        s.classes[c].live = 0
    for i in range(s.nheaps):
        if s.heaps[i].alive:
            if PGO_DEBUG_FILL:
                memset(_span_va(s, s.heaps[i].first_span), PGO_FILL_FREE,
                       <size_t>s.classes[s.heaps[i].cls].pages * PAGE)
            _release_heap(s, <uint32_t>i)
    s.stats.frees += s.stats.allocs - s.stats.frees
    s.live_bytes = 0
    s.stats.resets += 1
    s.stats.requested = 0
    s.stats.lost = 0


# -- the C API -----------------------------------------------------------------------------

cdef void* compact_alloc(pgo_compact_t* s, size_t n) except NULL nogil:
    cdef void* p = NULL
    cdef int err
    pgo_lock(&s.lock, &s.stats)
    err = _take(s, n, 16, False, &p)
    pgo_unlock(&s.lock)
    if err != PGO_OK:
        return pgo_fail_null(err, "CompactingAllocator", n, 16)
    return p


cdef int compact_free(pgo_compact_t* s, void* p) except -1 nogil:
    cdef int err
    pgo_lock(&s.lock, &s.stats)
    err = _give(s, p, False)
    pgo_unlock(&s.lock)
    if err != PGO_OK:
        return pgo_fail_at(err, "CompactingAllocator", p)
    return 0


cdef int compact_compact(pgo_compact_t* s, pgo_compact_result_t* out) except -1 nogil:
    cdef int err
    pgo_lock(&s.lock, &s.stats)
    err = _compact_unlocked(s, out)
    pgo_unlock(&s.lock)
    if err != PGO_OK:
        return pgo_fail(err, "CompactingAllocator.compact", 0, 0)
    return 0


# -- numpy's handler (see pgo_backend_t) ------------------------------------------------------

cdef int _be_take(void* state, size_t n, size_t align, void** out) noexcept nogil:
    return _take(<pgo_compact_t*>state, n, align, True, out)


cdef bint _be_holds(void* state, void* p) noexcept nogil:
    # base and reserve never change: no lock needed.
    cdef pgo_compact_t* s = <pgo_compact_t*>state
    return pgo_within(p, s.base, s.reserve)


cdef int _be_give(void* state, void* p) noexcept nogil:
    return _give(<pgo_compact_t*>state, p, True)


cdef size_t _be_span(void* state, void* p) noexcept nogil:
    cdef pgo_compact_t* s = <pgo_compact_t*>state
    cdef uint32_t v
    cdef size_t slot
    if _locate(s, p, &v, &slot) != PGO_OK or s.spans[v].heap == NIL \
            or not (s.spans[v].py[slot >> 6] & ((<uint64_t>1) << (slot & 63))):
        return 0
    return s.classes[s.spans[v].cls].size - PGO_CANARY


# -- fork ------------------------------------------------------------------------------------

cdef pthread_mutex_t _registry
pthread_mutex_init(&_registry, NULL)
cdef pgo_compact_t* _allocators = NULL
cdef int _fork_pipe[2]


cdef void _die(const char* why) noexcept nogil:
    cdef const char* head = b"pgo: CompactingAllocator: in a forked child, "
    cdef const char* tail = b": the child would share the parent's memory; aborting\n"
    write(2, head, strlen(head))
    write(2, why, strlen(why))
    write(2, tail, strlen(tail))
    abort()


cdef void _privatize(pgo_compact_t* s) noexcept nogil:
    # In the child: the live spans into a memfd of its own, mapped over the range.
    cdef int fd = memfd_create(b"pgo-compact", MFD_CLOEXEC)
    cdef size_t i, span_bytes, done
    cdef ssize_t got
    cdef pgo_cheap_t* hp
    cdef uint32_t v
    if fd < 0 or ftruncate(fd, <off_t>s.reserve) != 0:
        _die(b"cannot make a memfd")
    for i in range(s.nheaps):
        hp = &s.heaps[i]
        if not hp.alive:
            continue
        span_bytes = <size_t>s.classes[hp.cls].pages * PAGE
        done = 0
        while done < span_bytes:
            got = pwrite(fd, _span_va(s, hp.first_span) + done, span_bytes - done,
                         _span_off(s, hp.first_span) + <off_t>done)
            if got < 0 and errno == EINTR:
                continue
            if got <= 0:
                _die(b"cannot copy a span")
            done += <size_t>got
    if mmap(s.base, s.reserve, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | MAP_NORESERVE,
            fd, 0) == MAP_FAILED:
        _die(b"cannot map its copy")
    s.remapped_spans = 0
    for i in range(s.nspans):
        s.spans[i].remapped = 0
        if s.spans[i].heap != NIL and s.heaps[s.spans[i].heap].first_span != i:
            if mmap(_span_va(s, <uint32_t>i), <size_t>s.classes[s.spans[i].cls].pages * PAGE,
                    PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd,
                    _span_off(s, s.heaps[s.spans[i].heap].first_span)) == MAP_FAILED:
                _die(b"cannot map a meshed span")
            s.spans[i].remapped = 1
            s.remapped_spans += 1
    close(s.fd)
    s.fd = fd


cdef void _fork_locks(bint take) noexcept nogil:
    # The mutexes of threadsafe allocators made from C (the Python registry
    # takes the others'), so that no thread is mid-operation in the state
    # the child copies.
    cdef pgo_compact_t* s = _allocators
    while s != NULL:
        if s.fork_locks:
            if take:
                pthread_mutex_lock(&s.lock.mutex)
            else:
                pthread_mutex_unlock(&s.lock.mutex)
        s = <pgo_compact_t*>s.next_allocator


cdef void _fork_prepare() noexcept nogil:
    pthread_mutex_lock(&_registry)
    _fork_locks(True)
    # Close-on-exec: a process spawned meanwhile (posix_spawn skips the fork
    # handlers) must not hold the write end the parent waits on.
    if _allocators == NULL or pipe2(_fork_pipe, O_CLOEXEC) != 0:
        _fork_pipe[0] = -1
        _fork_pipe[1] = -1


cdef void _fork_parent() noexcept nogil:
    cdef char b
    if _fork_pipe[0] >= 0:
        close(_fork_pipe[1])
        while read(_fork_pipe[0], &b, 1) < 0 and errno == EINTR:
            pass
        close(_fork_pipe[0])
    _fork_locks(False)
    pthread_mutex_unlock(&_registry)


cdef void _fork_child() noexcept nogil:
    # (Without a pipe -- pipe() refused in prepare -- the parent does not
    # wait: the copy may see its writes after fork(), never share memory.)
    cdef pgo_compact_t* s = _allocators
    if _fork_pipe[0] >= 0:
        close(_fork_pipe[0])
    while s != NULL:
        _privatize(s)
        s = <pgo_compact_t*>s.next_allocator
    if _fork_pipe[1] >= 0:
        write(_fork_pipe[1], b"x", 1)
        close(_fork_pipe[1])
    _fork_locks(False)
    pthread_mutex_unlock(&_registry)


if pgo_fork_inner(_fork_prepare, _fork_parent, _fork_child) != 0:
    raise MemoryError("pgo: cannot install the CompactingAllocator's fork handlers")


# -- making and destroying ---------------------------------------------------------------------

cdef pgo_compact_t* compact_create(size_t max_bytes, size_t fragmentation_percent,
                                   bint threadsafe) except NULL:
    global _allocators
    cdef pgo_compact_t* s = <pgo_compact_t*>pgo_sys_calloc(1, sizeof(pgo_compact_t))
    cdef size_t reserve = DEFAULT_RESERVE
    cdef void* base = MAP_FAILED
    if s == NULL:
        raise MemoryError(f"CompactingAllocator: cannot allocate its {sizeof(pgo_compact_t):,} "
                          f"bytes of state")
    s.fd = memfd_create(b"pgo-compact", MFD_CLOEXEC)
    if s.fd < 0:
        e = errno
        pgo_sys_free(s)
        raise OSError(e, f"CompactingAllocator: memfd_create failed: {strerror(e).decode()}")
    # Address space and a sparse file, no memory: halve while refused (a
    # `ulimit -v`, valgrind).
    while True:
        if ftruncate(s.fd, <off_t>reserve) == 0:
            base = mmap(NULL, reserve, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, s.fd, 0)
            if base != MAP_FAILED:
                break
        if reserve // 2 < MIN_RESERVE:
            e = errno
            close(s.fd)
            pgo_sys_free(s)
            raise MemoryError(f"CompactingAllocator: cannot map {MIN_RESERVE:,} bytes of "
                              f"address space: {strerror(e).decode()}")
        reserve //= 2
    s.base = <char*>base
    s.reserve = reserve
    s.page_span_bytes = reserve // PAGE * sizeof(uint32_t)
    s.page_span = <uint32_t*>pgo_sys_map(s.page_span_bytes, False)
    if s.page_span == NULL:
        munmap(base, reserve)
        close(s.fd)
        n = s.page_span_bytes
        pgo_sys_free(s)
        raise MemoryError(f"CompactingAllocator: cannot map its page table "
                          f"({n:,} bytes)")
    s.max_bytes = (max_bytes + PAGE - 1) & ~(<size_t>PAGE - 1)       # whole pages
    s.max_pages = reserve // PAGE
    if s.max_pages > 0xfffffff0u:
        s.max_pages = 0xfffffff0u
    s.free_heaps = NIL
    s.fragmentation_percent = fragmentation_percent
    s.lo = <size_t>s.base
    s.hi = <size_t>s.base + reserve
    _init_classes(s)
    pgo_lock_init(&s.lock, threadsafe)
    s.fork_locks = threadsafe           # (the Python class clears it: see there)
    # Held only without the GIL (destroy and fork take it holding the GIL).
    with nogil:
        pthread_mutex_lock(&_registry)
        s.next_allocator = _allocators
        _allocators = s
        pthread_mutex_unlock(&_registry)
    pgo_vg_create(s)
    return s


cdef void compact_destroy(pgo_compact_t* s) noexcept nogil:
    global _allocators
    cdef pgo_compact_t** link
    if s == NULL:
        return
    pthread_mutex_lock(&_registry)
    link = &_allocators
    while link[0] != NULL and link[0] != s:
        link = <pgo_compact_t**>&link[0].next_allocator
    if link[0] == s:
        link[0] = <pgo_compact_t*>s.next_allocator
    pthread_mutex_unlock(&_registry)
    pgo_vg_destroy(s)
    pgo_lock_destroy(&s.lock)
    munmap(s.base, s.reserve)
    close(s.fd)
    pgo_sys_unmap(s.page_span, s.page_span_bytes)
    pgo_sys_free(s.spans)
    pgo_sys_free(s.heaps)
    pgo_sys_free(s)


cdef dict _result(pgo_compact_result_t* r):
    return {"meshed_spans": r.meshed, "emptied_spans": r.emptied,
            "released_bytes": r.released_bytes, "resident_before": r.resident_before,
            "resident_after": r.resident_after, "live_bytes": r.live_bytes}


cdef class CompactingAllocator(Allocator):
    """Blocks of 1 B to 16 KiB whose pages go back to the system when frees
    leave them mostly empty, without moving any block (Mesh's meshing).

    Args:
        max_bytes: most bytes of resident spans (rounded up to whole
            pages; a span is one page or more), 0 for no limit but the
            16 GiB range reserved up front (address space and a sparse
            memfd: memory is used page by page as blocks are written).
        fragmentation_percent: ``maybe_compact()`` compacts when the
            resident bytes exceed this percent of the live bytes (> 100).
        threadsafe: take a mutex on every operation (see StackAllocator).

    Blocks come in 36 size classes (16-byte steps to 128 B, then four per
    doubling), 16-byte aligned, each class in spans of at least 8 blocks.
    ``compact()`` merges spans whose live blocks sit at different offsets
    onto one physical span and gives back the pages of the rest and of
    empty spans: memory comes back without a pointer changing, arrays and
    Blocks stay valid.  It copies live blocks: call it where no other
    thread writes into this allocator's blocks.  Each meshed span is a
    mapping of its own (``vm.max_map_count``, 65,530 by default, bounds
    them; a refused mapping stops the compaction where it is, counted in
    ``stats()["mesh_failures"]``).
    """

    def __cinit__(self, size_t max_bytes=0, *, size_t fragmentation_percent=150,
                  bint threadsafe=False):
        if fragmentation_percent <= 100:
            raise ValueError(f"fragmentation_percent must be over 100 (resident bytes above "
                             f"live ones), got {fragmentation_percent}")
        self.s = compact_create(max_bytes, fragmentation_percent, threadsafe)
        self.s.fork_locks = False       # Allocator.__init__ registers the mutex
        pgo_backend_init(&self._be, self.s, &self.s.lock, &self.s.stats, _be_take, NULL,
                         COMPACT_MAX_SMALL - PGO_CANARY, _be_holds, _be_give, _be_span,
                         &self.s.lo, &self.s.hi)
        self._bind(<pgo_destroy_fn>compact_destroy, 16, PAGE)

    @staticmethod
    def class_size(size_t nbytes, size_t align=16):
        """The block size a request of `nbytes` aligned to `align` takes
        (ValueError when no class holds it)."""
        cdef size_t c = COMPACT_NCLASSES
        if pgo_bad_align(align):
            raise ValueError(f"alignment must be a power of two from 1 to 4096, got {align}")
        if nbytes <= COMPACT_MAX_SMALL - PGO_CANARY:
            c = _class_for((nbytes if nbytes else 1) + PGO_CANARY, align)
        if c == COMPACT_NCLASSES:
            raise ValueError(f"CompactingAllocator serves at most "
                             f"{COMPACT_MAX_SMALL - PGO_CANARY:,} bytes (aligned to {align})")
        return _size_of[c]

    @property
    def resident_bytes(self):
        """Bytes of the spans that hold pages (what the allocator adds to RSS
        at most)."""
        return self.s.resident

    @property
    def file_bytes(self):
        """Bytes of memory the memfd holds: the pages written and not given
        back.  (A meshed page is mapped at two addresses or more, and the
        kernel's RSS counts it once per address touched; PSS, and this,
        count it once.)"""
        cdef struct_stat st
        if fstat(self.s.fd, &st) != 0:
            raise OSError(errno, "CompactingAllocator: fstat of its memfd failed")
        return <size_t>st.st_blocks * 512

    @property
    def live_bytes(self):
        """Bytes of the blocks handed out (whole classes)."""
        return self.s.live_bytes

    def compact(self):
        """Mesh spans and give back pages; returns what it did.

        A safe point: no other thread may write into this allocator's blocks
        while it runs (it holds the GIL throughout)."""
        cdef pgo_compact_result_t r
        cdef int err
        pgo_lock_gil_held(self._lock, self._st)
        err = _compact_unlocked(self.s, &r)
        pgo_unlock(self._lock)
        if err != PGO_OK:
            raise MemoryError("CompactingAllocator.compact: cannot allocate its work tables")
        return _result(&r)

    def maybe_compact(self):
        """compact() when resident bytes exceed fragmentation_percent of the
        live bytes (and a MiB); else None."""
        resident, live = self.s.resident, self.s.live_bytes
        if resident < (1 << 20) or resident * 100 <= self.s.fragmentation_percent * live:
            return None
        return self.compact()

    # -- the Allocator hooks -------------------------------------------------------------
    cdef int _c_alloc(self, size_t nbytes, size_t align, void** out, size_t* token) noexcept:
        return _take(self.s, nbytes, align, True, out)

    cdef int _c_free(self, Block b) noexcept:
        return _give(self.s, b.ptr, True)

    cdef void _c_dead(self, Block b) noexcept:
        _give(self.s, b.ptr, True)

    cdef int _c_reset(self) noexcept:
        _reset_unlocked(self.s)
        return PGO_OK

    cdef void _sync(self) noexcept:
        self.s.stats.in_use = self.s.live_bytes
        self.s.stats.peak = self.s.peak_live
        self.s.stats.capacity = self.s.resident

    # The span tables grow (realloc) under the lock, from any thread with
    # threadsafe=True: read them under it too.
    cdef size_t _canary_len(self, Block b) noexcept:
        cdef uint32_t v
        cdef size_t slot, size = 0
        if not PGO_CANARY:
            return 0
        pgo_lock_gil_held(self._lock, self._st)
        if _locate(self.s, b.ptr, &v, &slot) == PGO_OK:
            size = self.s.classes[self.s.spans[v].cls].size
        pgo_unlock(self._lock)
        return size - b.nbytes if size else 0

    cdef object _where(self, char* p):
        cdef uint32_t v
        cdef size_t slot, size = 0
        pgo_lock_gil_held(self._lock, self._st)
        if _locate(self.s, p, &v, &slot) == PGO_OK:
            size = self.s.classes[self.s.spans[v].cls].size
        pgo_unlock(self._lock)
        if not size:
            return f"address {<uintptr_t>p:#x}"
        return f"span {v} slot {slot}, {size}-byte class"

    def _describe_nomem(self, size_t nbytes):
        limit = (f"max_bytes={self.s.max_bytes:,} reached" if self.s.max_bytes
                 and self.s.resident + PAGE > self.s.max_bytes
                 else "the reserved range is full or the system refused more")
        return (f"{self!r}: cannot allocate {nbytes:,} bytes: {self.s.resident:,} bytes "
                f"resident, {limit}")

    def _raise_alloc(self, int code, size_t nbytes, size_t align):
        if code == PGO_ERR_TOO_BIG:
            raise ValueError(f"{self!r} serves blocks of at most "
                             f"{COMPACT_MAX_SMALL - PGO_CANARY:,} bytes; {nbytes:,} requested "
                             f"(alignment {align}): route larger arrays to another allocator")
        Allocator._raise_alloc(self, code, nbytes, align)

    def _extra_stats(self):
        cdef size_t heaps = 0, i
        pgo_lock_gil_held(self._lock, self._st)
        for i in range(self.s.nheaps):
            heaps += self.s.heaps[i].alive
        pgo_unlock(self._lock)
        return {"resident_bytes": self.s.resident, "live_bytes": self.s.live_bytes,
                "file_bytes": self.file_bytes,
                "spans": self.s.nspans, "physical_spans": heaps,
                "meshed_spans": self.s.remapped_spans, "meshes": self.s.meshes,
                "compactions": self.s.compactions, "released_bytes": self.s.released_bytes,
                "mesh_failures": self.s.mesh_failures,
                "fragmentation_percent": self.s.fragmentation_percent,
                "max_bytes": self.s.max_bytes}

    def _free_address(self, size_t address):
        """Test-only: run the C-level free on a raw address."""
        cdef int code
        pgo_lock_gil_held(self._lock, self._st)
        code = _give(self.s, <void*>address, False)
        pgo_unlock(self._lock)
        if code != PGO_OK:
            pgo_raise_at(code, "CompactingAllocator", <void*>address)

    def _alloc_address(self, size_t nbytes):
        """Test-only: the C-level allocation (a block no Python Block owns)."""
        cdef void* p = NULL
        cdef int code
        pgo_lock_gil_held(self._lock, self._st)
        code = _take(self.s, nbytes, 16, False, &p)
        pgo_unlock(self._lock)
        if code != PGO_OK:
            self._raise_alloc(code, nbytes, 16)
        return <uintptr_t>p

    def __repr__(self):
        return (f"<CompactingAllocator resident={self.s.resident:,} live={self.s.live_bytes:,} "
                f"max_bytes={self.s.max_bytes:,} threadsafe={bool(self.s.lock.enabled)}>")
