/* The numpy router's system path: what a request no allocator serves gets.

   Every block from it starts with a 16-byte header (so data stays 16-byte
   aligned) saying that it is a system block and, for a small one, its
   bucket: a free then needs neither the size numpy passes (untrusted) nor
   malloc_usable_size.  Small blocks (requests under PGO_SMALL_BLOCK_BYTES;
   bucket b serves 16*(b-1)+1 .. 16*b bytes) are kept for reuse in a
   per-thread cache, which needs no lock and no GIL.  numpy caches under
   1 KiB; pgo goes further because its header would push requests just
   under 1 KiB past glibc's own per-thread cache (1032 bytes).  At most 7
   blocks per bucket: about 3.7 MB per thread at worst, numpy's own bound.
   Blocks of PGO_HUGEPAGE_MIN_BYTES and more are advised MADV_HUGEPAGE when
   asked to, as numpy's default handler does.

   The hot paths are static inline (they are inlined into the router's
   callbacks); a thread's first use of the cache, its release at thread
   exit and the test hook are in pgo_sys_path.c, linked into numpy_bridge.
   Nothing here raises, needs the GIL or touches the Python C-API. */
#ifndef PGO_SYS_PATH_H
#define PGO_SYS_PATH_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "pgo_defs.h"
#include "pgo_memory.h"

#define PGO_SC_BUCKETS (PGO_SMALL_BLOCK_BYTES / 16 + 1)
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

/* The calling thread's cache: NULL before its first use, PGO_SMALL_GONE
   once released at thread exit.  initial-exec: one 8-byte slot, read with
   a single instruction instead of a __tls_get_addr call on every small
   allocation and free. */
#define PGO_SMALL_GONE ((pgo_small_cache_t *)1)
extern __thread pgo_small_cache_t *pgo_tls_small
    __attribute__((tls_model("initial-exec"))) PGO_INTERNAL;

/* The calling thread's first use: makes its cache (NULL if out of memory
   or after the thread's cache was released). */
PGO_INTERNAL pgo_small_cache_t *pgo_small_make(void);

/* For tests: the calling thread's cached block count. */
PGO_INTERNAL size_t pgo_small_count(void);

static inline pgo_small_cache_t *pgo_small_get(void) {
    pgo_small_cache_t *c = pgo_tls_small;
    if (pgo_likely(c != NULL))
        return c == PGO_SMALL_GONE ? NULL : c;
    return pgo_small_make();
}

/* What numpy's default handler does for blocks of 4 MiB and more. */
static inline void pgo_advise_huge(void *p, size_t n) {
    uintptr_t a, e;
    if (p == NULL || n < PGO_HUGEPAGE_MIN_BYTES)
        return;
    a = ((uintptr_t)p + PGO_PAGE_BYTES - 1) & ~(uintptr_t)(PGO_PAGE_BYTES - 1);
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
    if (n < PGO_SMALL_BLOCK_BYTES && small_cache) {
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
    if (pgo_unlikely(h->magic != PGO_SYS_MAGIC))
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

#endif
