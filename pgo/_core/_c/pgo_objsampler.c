/* The Python object sampler: see pgo_objsampler.h. */
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "pgo_hash.h"
#include "pgo_objsampler.h"
#include "pgo_sites.h"
#include "pgo_trace.h"

/* `busy` keeps the sampler's own allocations (frame objects) from being
   sampled. */
typedef struct {
    PyMemAllocatorEx orig_obj, orig_mem;
    int hooked;
    int busy;
    int64_t countdown;
    double rate;
    uint64_t rng;
    uintptr_t *set;          /* sampled live blocks: open addressing, 1 = tombstone */
    uint32_t cap, n, used;
} pgo_objs_t;

static pgo_objs_t pgo_objs;

static inline uint64_t pgo_rand(void) {
    uint64_t x = pgo_objs.rng;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    return pgo_objs.rng = x;
}

static int64_t pgo_next_gap(void) {
    double u = ((double)(pgo_rand() >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    double g = -log(u) * pgo_objs.rate;
    return g < 1.0 ? 1 : (int64_t)g;
}

static int pgo_set_grow(void) {
    uint32_t cap = pgo_objs.cap ? pgo_objs.cap * 2 : 4096, i;
    uintptr_t *t;
    if (pgo_objs.n * 4 < pgo_objs.cap)   /* mostly tombstones: same size, rehash */
        cap = pgo_objs.cap;
    t = calloc(cap, sizeof *t);
    if (t == NULL)
        return -1;
    for (i = 0; i < pgo_objs.cap; i++) {
        uintptr_t k = pgo_objs.set[i];
        if (k > 1) {
            uint32_t j = (uint32_t)pgo_mix(k) & (cap - 1);
            while (t[j]) j = (j + 1) & (cap - 1);
            t[j] = k;
        }
    }
    free(pgo_objs.set);
    pgo_objs.set = t;
    pgo_objs.cap = cap;
    pgo_objs.used = pgo_objs.n;
    return 0;
}

static int pgo_set_add(void *p) {
    uint32_t j;
    if ((pgo_objs.used + 1) * 2 > pgo_objs.cap && pgo_set_grow() != 0)
        return -1;
    j = (uint32_t)pgo_mix((uintptr_t)p) & (pgo_objs.cap - 1);
    while (pgo_objs.set[j] > 1) j = (j + 1) & (pgo_objs.cap - 1);
    if (pgo_objs.set[j] == 0)
        pgo_objs.used++;
    pgo_objs.set[j] = (uintptr_t)p;
    pgo_objs.n++;
    return 0;
}

static inline int pgo_set_remove(void *p) {
    uint32_t j = (uint32_t)pgo_mix((uintptr_t)p) & (pgo_objs.cap - 1);
    uintptr_t k;
    while ((k = pgo_objs.set[j]) != 0) {
        if (k == (uintptr_t)p) {
            pgo_objs.set[j] = 1;
            pgo_objs.n--;
            return 1;
        }
        j = (j + 1) & (pgo_objs.cap - 1);
    }
    return 0;
}

static void pgo_obj_sample(void *p, size_t n) {
    uint32_t site;
    pgo_objs.busy = 1;
    site = pgo_site();
    pgo_objs.countdown = pgo_next_gap();
    if (pgo_set_add(p) == 0)
        pgo_stream_event(&pgo_trace.obj, PGO_EV_ALLOC, p, NULL, n, site);
    pgo_objs.busy = 0;
}

/* An allocation of n bytes moves the countdown: 1 when it samples one. */
static inline int pgo_obj_due(size_t n) {
    return pgo_trace.obj.on && !pgo_objs.busy && (pgo_objs.countdown -= (int64_t)n) <= 0;
}

static void *pgo_obj_malloc(void *ctx, size_t n) {
    PyMemAllocatorEx *o = (PyMemAllocatorEx *)ctx;
    void *p = o->malloc(o->ctx, n);
    if (p != NULL && pgo_obj_due(n))
        pgo_obj_sample(p, n);
    return p;
}

static void *pgo_obj_calloc(void *ctx, size_t nelem, size_t elsize) {
    PyMemAllocatorEx *o = (PyMemAllocatorEx *)ctx;
    void *p = o->calloc(o->ctx, nelem, elsize);
    /* nelem * elsize: the calloc that succeeded checked it. */
    if (p != NULL && pgo_obj_due(nelem * elsize))
        pgo_obj_sample(p, nelem * elsize);
    return p;
}

static void *pgo_obj_realloc(void *ctx, void *ptr, size_t n) {
    PyMemAllocatorEx *o = (PyMemAllocatorEx *)ctx;
    int was = ptr != NULL && pgo_objs.n && pgo_set_remove(ptr);
    void *q = o->realloc(o->ctx, ptr, n);
    if (q == NULL) {
        if (was)
            pgo_set_add(ptr);       /* untouched, still sampled */
        return NULL;
    }
    if (was) {
        if (pgo_set_add(q) == 0)
            pgo_stream_event(&pgo_trace.obj, PGO_EV_REALLOC, q, ptr, n, 0);
        else
            pgo_stream_event(&pgo_trace.obj, PGO_EV_FREE, ptr, NULL, 0, 0);
    } else if (pgo_obj_due(n)) {
        pgo_obj_sample(q, n);
    }
    return q;
}

static void pgo_obj_free(void *ctx, void *p) {
    PyMemAllocatorEx *o = (PyMemAllocatorEx *)ctx;
    if (p != NULL && pgo_objs.n && pgo_set_remove(p))
        pgo_stream_event(&pgo_trace.obj, PGO_EV_FREE, p, NULL, 0, 0);
    o->free(o->ctx, p);
}

void pgo_objs_start(double rate, uint64_t seed) {
    PyMemAllocatorEx h;
    pgo_objs.rate = rate;
    pgo_objs.rng = seed | 1;
    pgo_objs.countdown = pgo_next_gap();
    if (pgo_objs.hooked)
        return;
    PyMem_GetAllocator(PYMEM_DOMAIN_OBJ, &pgo_objs.orig_obj);
    PyMem_GetAllocator(PYMEM_DOMAIN_MEM, &pgo_objs.orig_mem);
    h.malloc = pgo_obj_malloc; h.calloc = pgo_obj_calloc;
    h.realloc = pgo_obj_realloc; h.free = pgo_obj_free;
    h.ctx = &pgo_objs.orig_obj;
    PyMem_SetAllocator(PYMEM_DOMAIN_OBJ, &h);
    h.ctx = &pgo_objs.orig_mem;
    PyMem_SetAllocator(PYMEM_DOMAIN_MEM, &h);
    pgo_objs.hooked = 1;
}

void pgo_objs_stop(void) {
    PyMemAllocatorEx cur_obj, cur_mem;
    free(pgo_objs.set);
    pgo_objs.set = NULL;
    pgo_objs.cap = pgo_objs.n = pgo_objs.used = 0;
    if (!pgo_objs.hooked)
        return;
    PyMem_GetAllocator(PYMEM_DOMAIN_OBJ, &cur_obj);
    PyMem_GetAllocator(PYMEM_DOMAIN_MEM, &cur_mem);
    if (cur_obj.malloc == pgo_obj_malloc && cur_mem.malloc == pgo_obj_malloc) {
        PyMem_SetAllocator(PYMEM_DOMAIN_OBJ, &pgo_objs.orig_obj);
        PyMem_SetAllocator(PYMEM_DOMAIN_MEM, &pgo_objs.orig_mem);
        pgo_objs.hooked = 0;
    }
}

size_t pgo_objs_live(void) { return pgo_objs.n; }
