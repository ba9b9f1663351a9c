/* The recording numpy handler: see pgo_rec_handler.h. */
#include <Python.h>
#include <numpy/ndarraytypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "pgo_rec_handler.h"
#include "pgo_sample.h"
#include "pgo_sites.h"
#include "pgo_trace.h"

typedef struct {
    PyDataMem_Handler handler;
    PyDataMemAllocator inner;      /* the handler this one records for */
    PyObject *keep;                /* the inner handler's capsule: a strong reference */
} pgo_rec_handler_t;

/* An event the address sampling will drop needs no site (read racily: at
   worst a kept event gets site 0 while the level changes). */
static inline uint32_t pgo_site_if_kept(void *p) {
    if (pgo_sample_keep(pgo_trace.np.level, (uint64_t)(uintptr_t)p))
        return pgo_site();
    return 0;
}

static void *pgo_r_malloc(void *ctx, size_t size) {
    pgo_rec_handler_t *h = (pgo_rec_handler_t *)ctx;
    void *p = h->inner.malloc(h->inner.ctx, size);
    if (p != NULL && pgo_trace.np.on)
        pgo_stream_event(&pgo_trace.np, PGO_EV_ALLOC, p, NULL, size, pgo_site_if_kept(p));
    return p;
}

static void *pgo_r_calloc(void *ctx, size_t nelem, size_t elsize) {
    pgo_rec_handler_t *h = (pgo_rec_handler_t *)ctx;
    void *p = h->inner.calloc(h->inner.ctx, nelem, elsize);
    if (p != NULL && pgo_trace.np.on)
        /* The inner calloc checked nelem * elsize for overflow before p. */
        pgo_stream_event(&pgo_trace.np, PGO_EV_CALLOC, p, NULL, nelem * elsize,
                         pgo_site_if_kept(p));
    return p;
}

static void *pgo_r_realloc(void *ctx, void *ptr, size_t new_size) {
    pgo_rec_handler_t *h = (pgo_rec_handler_t *)ctx;
    void *p = h->inner.realloc(h->inner.ctx, ptr, new_size);
    if (p != NULL && pgo_trace.np.on)
        pgo_stream_event(&pgo_trace.np, PGO_EV_REALLOC, p, ptr, new_size,
                         pgo_sample_keep(pgo_trace.np.level, (uint64_t)(uintptr_t)ptr)
                         ? pgo_site() : pgo_site_if_kept(p));
    return p;
}

static void pgo_r_free(void *ctx, void *ptr, size_t size) {
    pgo_rec_handler_t *h = (pgo_rec_handler_t *)ctx;
    if (ptr != NULL && pgo_trace.np.on)
        /* Before the free: once given back, the address may be handed out
           again by another thread and its alloc recorded first. */
        pgo_stream_event(&pgo_trace.np, PGO_EV_FREE, ptr, NULL, size, 0);
    h->inner.free(h->inner.ctx, ptr, size);
}

static void pgo_rec_handler_destroy(PyObject *capsule) {
    /* With the GIL, once the last array whose data this handler allocated
       is gone: the inner handler may now go too. */
    pgo_rec_handler_t *h = PyCapsule_GetPointer(capsule, "mem_handler");
    if (h == NULL) {
        PyErr_WriteUnraisable(capsule);
        return;
    }
    Py_DECREF(h->keep);
    free(h);
}

static PyDataMem_Handler *pgo_handler_of(PyObject *capsule) {
    if (!PyCapsule_IsValid(capsule, "mem_handler"))
        return NULL;
    return PyCapsule_GetPointer(capsule, "mem_handler");
}

PyObject *pgo_rec_handler_inner(PyObject *capsule) {
    PyDataMem_Handler *hd = pgo_handler_of(capsule);
    if (hd == NULL || hd->allocator.malloc != pgo_r_malloc)
        return NULL;
    return ((pgo_rec_handler_t *)hd)->keep;
}

PyObject *pgo_rec_handler_wrap(PyObject *inner) {
    PyDataMem_Handler *hd = pgo_handler_of(inner);
    pgo_rec_handler_t *h;
    PyObject *capsule;
    if (hd == NULL) {
        PyErr_SetString(PyExc_ValueError,
                        "the current numpy handler is not a valid handler capsule");
        return NULL;
    }
    if (hd->allocator.malloc == pgo_r_malloc) {
        /* A recorder's handler left in place (a forked child recording
           anew): wrap what it wraps, or every event would be recorded twice. */
        inner = ((pgo_rec_handler_t *)hd)->keep;
        hd = PyCapsule_GetPointer(inner, "mem_handler");
    }
    h = calloc(1, sizeof *h);
    if (h == NULL) {
        PyErr_SetString(PyExc_MemoryError, "recorder: cannot allocate its handler");
        return NULL;
    }
    snprintf(h->handler.name, sizeof h->handler.name, "pgo-recorder:%.100s", hd->name);
    h->handler.version = 1;
    h->handler.allocator.ctx = h;
    h->handler.allocator.malloc = pgo_r_malloc;
    h->handler.allocator.calloc = pgo_r_calloc;
    h->handler.allocator.realloc = pgo_r_realloc;
    h->handler.allocator.free = pgo_r_free;
    h->inner = hd->allocator;
    h->keep = inner;
    Py_INCREF(inner);
    capsule = PyCapsule_New(h, "mem_handler", pgo_rec_handler_destroy);
    if (capsule == NULL) {
        Py_DECREF(inner);
        free(h);
    }
    return capsule;
}
