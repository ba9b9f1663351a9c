"""The recording numpy handler: every data allocation and free, streamed to
a binary event trace, then passed on to the handler that was in effect.

Design: one recorder per process (``start`` refuses a second).  The handler
wraps the numpy handler current when recording starts (numpy's default, or
a pgo Router under ``pgo run``) and forwards every call to it unchanged, so
the program's memory behaves as before; it only adds a 48-byte event to a
block buffer.  A full block is written to the trace file by whichever
thread filled it, with write(2), under the recorder's mutex; ``flush``
writes a partial one (the profiler calls it periodically, so a process
killed with SIGKILL loses at most the last interval).

The trace format (little-endian; ``pgo.bundle`` reads and validates it):

    header  40 B  b"PGOTRACE", u32 version, u32 header size, u32 record
                  size, u32 records per block at most, u64 t0 (monotonic ns),
                  u32 checksum of the 32 bytes before it, u32 zero
    block   16 B  b"PGOB", u32 count, u32 sequence number, u32 checksum of
                  the records (pgo.bundle.block_checksum); then count
                  records of 48 B
    footer  16 B  b"PGOE", u32 blocks written, u64 records written
    record  48 B  u64 t_ns, u64 addr, u64 size, u64 old addr (realloc),
                  u32 site, u32 thread id, u8 kind, u8 sample level, 6 pad

Sites: the innermost Python frame outside numpy, pgo and the standard
library (path prefixes given to ``start``), as (code object, line).  It is
found only when the calling thread holds the GIL (numpy calls some
allocators without it: those events get site 0); a frame chain that never
leaves those prefixes gets site 1.  Site ids are dense from 2; ``sites()``
resolves them to module, qualified name, file and line.

Sampling: ``max_events`` bounds the trace.  The first half of the budget is
exact; then each further level keeps the events whose address hashes into
1/4**level of the space (an allocation and the free of the same block are
kept or dropped together) for half of the remaining budget, up to level 30:
level L covers about max_events * 2**(L-1) events, so the budget stretches
over runs of any length.  Each record carries its level, so a reader can
weight it by 4**level.

# NOTE: threads and the GIL.  The numpy callbacks are ``noexcept nogil``.
# The frame walk (site lookup) runs only when PyGILState_Check() says this
# thread holds the GIL, saves and restores any pending exception, and
# creates no Python objects except the frame objects CPython materializes
# on request (as sys._getframe does).  The site table is touched only with
# the GIL held; the event buffer, counters and file only under
# ``rec.lock`` (a pthread mutex, never held while calling into Python).
# fork(): pthread_atfork takes the lock around fork; the child's recorder
# is switched off (its file is the parent's) until the profiler starts a
# new one there.
"""

from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_IsValid, PyCapsule_New
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport strncpy
cimport numpy as cnp

from pgo._core._npy_handler cimport (
    PyDataMem_GetHandler, PyDataMem_Handler, PyDataMem_SetHandler, PyDataMemAllocator,
)

import threading

from pgo._core import numpy_bridge

cnp.import_array()


cdef extern from *:
    """
    #include <Python.h>
    #include <frameobject.h>
    #include <errno.h>
    #include <math.h>
    #include <pthread.h>
    #include <stdint.h>
    #include <stdlib.h>
    #include <string.h>
    #include <time.h>
    #include <unistd.h>
    #include <sys/syscall.h>

    #define PGO_REC_BLOCK 4096
    #define PGO_REC_MAX_LEVEL 30
    #define PGO_REC_MAX_PREFIX 64
    #define PGO_REC_MAX_DEPTH 64

    enum { PGO_EV_ALLOC = 1, PGO_EV_CALLOC = 2, PGO_EV_REALLOC = 3, PGO_EV_FREE = 4 };

    typedef struct {
        uint64_t t_ns, addr, size, old;
        uint32_t site, tid;
        uint8_t kind, level, pad[6];
    } pgo_event_t;

    typedef struct {
        char magic[4];
        uint32_t count, seq, crc;     /* crc: pgo_checksum of the records */
    } pgo_block_hdr_t;

    typedef struct {
        PyObject *code;        /* strong references, released by pgo_rec_clear_sites */
        PyObject *module;      /* the frame's __name__, or NULL */
        int line;
    } pgo_site_t;

    /* One trace file and its budget.  Fields under pgo_rec.lock. */
    typedef struct {
        int on;                /* recording (read racily as a hint; decided under lock) */
        int fd;
        uint32_t n;            /* records in buf */
        uint32_t seq;          /* blocks written */
        uint64_t seen, recorded, written, write_errors;
        uint64_t max_events, quota;
        uint32_t level;
        uint64_t level_from[PGO_REC_MAX_LEVEL + 2];   /* record index where each level began */
        pgo_event_t buf[PGO_REC_BLOCK];
    } pgo_stream_t;

    typedef struct {
        pthread_mutex_t lock;
        uint64_t t0;
        pgo_stream_t np;       /* numpy data: every event */
        pgo_stream_t obj;      /* Python objects: sampled allocations and their frees */
        /* site table: GIL only */
        pgo_site_t *sites;
        uint32_t nsites, cap_sites;
        uint64_t *site_keys;   /* open addressing: code ptr ^ line hash -> index + 1 */
        uint32_t *site_vals;
        uint32_t key_cap;
        /* code objects already judged: excluded (2) or not (1) */
        uintptr_t *code_keys;
        uint8_t *code_vals;
        uint32_t code_cap, ncodes;
        char *prefix[PGO_REC_MAX_PREFIX];
        size_t prefix_len[PGO_REC_MAX_PREFIX];
        int prefix_include[PGO_REC_MAX_PREFIX];   /* 1: a site after all (the longest match wins) */
        int nprefix;
        PyObject *name_str;    /* "__name__" */
        uint32_t gen;          /* recordings started: tags the lasti cache */
    } pgo_rec_t;

    static pgo_rec_t pgo_rec;
    static __thread uint32_t pgo_rec_tid __attribute__((tls_model("initial-exec")));

    /* The checksum of trace headers and blocks: four independent lanes
       (so the multiplies overlap) of h = (h ^ word) * K; h ^= h >> 29,
       each step a bijection of h, so any change to one word changes its
       lane's final state; the lanes and the length go through a 64-bit
       finalizer, truncated to 32 bits.  About 8 ns per 48-byte record,
       where a byte-wise CRC-32 took a third of the recorder's time.
       n is a multiple of 8.  Readers call it through checksum(). */
    static inline uint64_t pgo_fmix(uint64_t x) {
        x ^= x >> 33; x *= 0xff51afd7ed558ccdull;
        x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull;
        x ^= x >> 33;
        return x;
    }

    static uint32_t pgo_checksum(const void *data, size_t n) {
        const uint64_t *w = (const uint64_t *)data;
        const uint64_t K = 0x9E3779B97F4A7C15ull;
        uint64_t h0 = 1, h1 = 2, h2 = 3, h3 = 4, r;
        size_t i = 0, nw = n / 8;
        for (; i + 4 <= nw; i += 4) {
            h0 = (h0 ^ w[i]) * K;     h0 ^= h0 >> 29;
            h1 = (h1 ^ w[i + 1]) * K; h1 ^= h1 >> 29;
            h2 = (h2 ^ w[i + 2]) * K; h2 ^= h2 >> 29;
            h3 = (h3 ^ w[i + 3]) * K; h3 ^= h3 >> 29;
        }
        for (; i < nw; i++) {
            h0 = (h0 ^ w[i]) * K; h0 ^= h0 >> 29;
        }
        r = pgo_fmix((uint64_t)n);
        r = pgo_fmix(r ^ h0) * K;
        r = pgo_fmix(r ^ h1) * K;
        r = pgo_fmix(r ^ h2) * K;
        r = pgo_fmix(r ^ h3);
        return (uint32_t)r;
    }

    static inline uint64_t pgo_now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    }

    static inline uint32_t pgo_tid(void) {
        if (__builtin_expect(pgo_rec_tid == 0, 0))
            pgo_rec_tid = (uint32_t)syscall(SYS_gettid);
        return pgo_rec_tid;
    }

    static int pgo_write_all(int fd, const void *p, size_t n) {
        const char *c = (const char *)p;
        while (n) {
            ssize_t k = write(fd, c, n);
            if (k < 0) {
                if (errno == EINTR)
                    continue;
                return -1;
            }
            c += k;
            n -= (size_t)k;
        }
        return 0;
    }

    /* Under lock. */
    static void pgo_rec_write_block(pgo_stream_t *r) {
        pgo_block_hdr_t h;
        if (r->n == 0 || r->fd < 0) {
            r->n = 0;
            return;
        }
        memcpy(h.magic, "PGOB", 4);
        h.count = r->n;
        h.seq = r->seq;
        h.crc = pgo_checksum(r->buf, sizeof(pgo_event_t) * r->n);
        if (pgo_write_all(r->fd, &h, sizeof h) != 0
                || pgo_write_all(r->fd, r->buf, sizeof(pgo_event_t) * r->n) != 0) {
            /* Disk full or similar: stop recording rather than write a
               corrupt trace; the profiler reports write_errors. */
            r->write_errors++;
            r->on = 0;
        } else {
            r->written += r->n;
            r->seq++;
        }
        r->n = 0;
    }

    static inline int pgo_rec_keep(uint32_t level, uint64_t addr) {
        uint64_t h;
        if (level == 0)
            return 1;
        /* 4**-level of the address space: each level covers twice the
           events of the one before with half the records. */
        h = (addr >> 4) * 0x9E3779B97F4A7C15ull;
        return (h >> (64 - 2 * level)) == 0;
    }

    /* Called with the lock held: takes one event, applying the budget. */
    static void pgo_rec_put(pgo_stream_t *r, uint8_t kind, uint64_t addr, uint64_t old,
                            uint64_t size, uint32_t site, uint64_t t) {
        pgo_event_t *e;
        r->seen++;
        if (!pgo_rec_keep(r->level, addr) && !(old && pgo_rec_keep(r->level, old)))
            return;
        while (r->quota == 0) {
            if (r->level >= PGO_REC_MAX_LEVEL) {
                r->on = 0;       /* budget spent at the deepest level */
                return;
            }
            r->level++;
            r->level_from[r->level] = r->recorded;
            r->quota = r->max_events >> (r->level + 1);
            if (r->quota == 0)
                r->quota = r->level >= PGO_REC_MAX_LEVEL ? 0 : 1;
            if (!pgo_rec_keep(r->level, addr) && !(old && pgo_rec_keep(r->level, old)))
                return;
        }
        r->quota--;
        e = &r->buf[r->n++];
        e->t_ns = t;
        e->addr = addr;
        e->size = size;
        e->old = old;
        e->site = site;
        e->tid = pgo_tid();
        e->kind = kind;
        e->level = (uint8_t)r->level;
        memset(e->pad, 0, sizeof e->pad);
        r->recorded++;
        if (r->n == PGO_REC_BLOCK)
            pgo_rec_write_block(r);
    }

    static void pgo_rec_event(pgo_stream_t *st, uint8_t kind, void *addr, void *old, size_t size,
                              uint32_t site) {
        uint64_t t;
        if (!__atomic_load_n(&st->on, __ATOMIC_RELAXED))
            return;
        t = pgo_now_ns();
        pthread_mutex_lock(&pgo_rec.lock);
        if (st->on)
            pgo_rec_put(st, kind, (uint64_t)(uintptr_t)addr, (uint64_t)(uintptr_t)old,
                        (uint64_t)size, site, t);
        pthread_mutex_unlock(&pgo_rec.lock);
    }

    /* -- sites (GIL held) -------------------------------------------------- */

    static inline uint64_t pgo_mix(uint64_t x) {
        x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33;
        return x;
    }

    static int pgo_code_grow(pgo_rec_t *r) {
        uint32_t cap = r->code_cap ? r->code_cap * 2 : 1024, i;
        uintptr_t *k = calloc(cap, sizeof *k);
        uint8_t *v = calloc(cap, 1);
        if (!k || !v) { free(k); free(v); return -1; }
        for (i = 0; i < r->code_cap; i++) {
            if (r->code_keys[i]) {
                uint32_t j = (uint32_t)pgo_mix(r->code_keys[i]) & (cap - 1);
                while (k[j]) j = (j + 1) & (cap - 1);
                k[j] = r->code_keys[i];
                v[j] = r->code_vals[i];
            }
        }
        free(r->code_keys); free(r->code_vals);
        r->code_keys = k; r->code_vals = v; r->code_cap = cap;
        return 0;
    }

    /* 1: this code object's file is under an excluded prefix (numpy, pgo,
       the standard library, or not a file at all: "<frozen ...>"). */
    static int pgo_code_excluded(pgo_rec_t *r, PyCodeObject *co) {
        uintptr_t key = (uintptr_t)co;
        uint32_t j;
        int ex = 0;
        Py_ssize_t len;
        const char *fn;
        if (r->code_cap == 0 || (r->ncodes + 1) * 2 > r->code_cap)
            if (pgo_code_grow(r) != 0)
                return 0;
        j = (uint32_t)pgo_mix(key) & (r->code_cap - 1);
        while (r->code_keys[j]) {
            if (r->code_keys[j] == key)
                return r->code_vals[j] == 2;
            j = (j + 1) & (r->code_cap - 1);
        }
        fn = PyUnicode_AsUTF8AndSize(co->co_filename, &len);
        if (fn == NULL) {
            PyErr_Clear();
        } else if (len > 0 && fn[0] == '<') {
            ex = strncmp(fn, "<stdin>", 7) != 0 && strncmp(fn, "<string>", 8) != 0;
        } else {
            /* The longest matching prefix decides: site-packages/ is a site
               (include) inside the standard library's lib/ (exclude), and
               numpy/ (exclude) inside site-packages/. */
            size_t best = 0;
            for (int i = 0; i < r->nprefix; i++)
                if ((size_t)len >= r->prefix_len[i] && r->prefix_len[i] > best
                        && memcmp(fn, r->prefix[i], r->prefix_len[i]) == 0) {
                    best = r->prefix_len[i];
                    ex = !r->prefix_include[i];
                }
        }
        /* The code object is keyed by address: keep it alive so that the
           address is never reused by another one while we record. */
        Py_INCREF(co);
        r->code_keys[j] = key;
        r->code_vals[j] = ex ? 2 : 1;
        r->ncodes++;
        return ex;
    }

    static int pgo_site_grow(pgo_rec_t *r) {
        uint32_t cap = r->key_cap ? r->key_cap * 2 : 1024, i;
        uint64_t *k = calloc(cap, sizeof *k);
        uint32_t *v = calloc(cap, sizeof *v);
        if (!k || !v) { free(k); free(v); return -1; }
        for (i = 0; i < r->key_cap; i++) {
            if (r->site_vals[i]) {
                uint32_t j = (uint32_t)pgo_mix(r->site_keys[i]) & (cap - 1);
                while (v[j]) j = (j + 1) & (cap - 1);
                k[j] = r->site_keys[i];
                v[j] = r->site_vals[i];
            }
        }
        free(r->site_keys); free(r->site_vals);
        r->site_keys = k; r->site_vals = v; r->key_cap = cap;
        return 0;
    }

    static uint32_t pgo_site_id(pgo_rec_t *r, PyFrameObject *f, PyCodeObject *co, int line) {
        uint64_t key = (uint64_t)(uintptr_t)co * 31 + (uint64_t)(uint32_t)line;
        uint32_t j, idx;
        pgo_site_t *s;
        if (r->key_cap == 0 || (r->nsites + 1) * 2 > r->key_cap)
            if (pgo_site_grow(r) != 0)
                return 0;
        j = (uint32_t)pgo_mix(key) & (r->key_cap - 1);
        while (r->site_vals[j]) {
            idx = r->site_vals[j] - 1;
            if (r->site_keys[j] == key && r->sites[idx].code == (PyObject *)co
                    && r->sites[idx].line == line)
                return idx + 2;
            j = (j + 1) & (r->key_cap - 1);
        }
        if (r->nsites == r->cap_sites) {
            uint32_t cap = r->cap_sites ? r->cap_sites * 2 : 256;
            pgo_site_t *ns = realloc(r->sites, cap * sizeof *ns);
            if (!ns)
                return 0;
            r->sites = ns;
            r->cap_sites = cap;
        }
        s = &r->sites[r->nsites];
        s->code = (PyObject *)co;
        Py_INCREF(co);
        s->line = line;
        s->module = NULL;
        {
            PyObject *g = PyFrame_GetGlobals(f);
            if (g != NULL) {
                PyObject *m = PyDict_Check(g) ? PyDict_GetItemWithError(g, r->name_str) : NULL;
                if (m != NULL && PyUnicode_Check(m)) {
                    Py_INCREF(m);
                    s->module = m;
                }
                Py_DECREF(g);
            }
            PyErr_Clear();
        }
        r->site_keys[j] = key;
        r->site_vals[j] = ++r->nsites;
        return r->nsites + 1;
    }

    #define PGO_LASTI_CACHE 4096
    typedef struct {
        uintptr_t code;
        int lasti;
        uint32_t site;
        uint32_t gen;          /* pgo_rec.gen when filled: a new recording empties it */
    } pgo_lasti_slot_t;
    static pgo_lasti_slot_t pgo_lasti_cache[PGO_LASTI_CACHE];

    /* The caller's site, or 0 without the GIL, or 1 when every frame is
       excluded.  Leaves the thread's exception state as it found it. */
    static uint32_t pgo_rec_site(void) {
        pgo_rec_t *r = &pgo_rec;
        PyObject *et, *ev, *tb;
        PyFrameObject *f;
        uint32_t id = 1;
        if (!PyGILState_Check())
            return 0;
        PyErr_Fetch(&et, &ev, &tb);
        f = PyEval_GetFrame();
        Py_XINCREF(f);
        for (int depth = 0; f != NULL && depth < PGO_REC_MAX_DEPTH; depth++) {
            PyCodeObject *co = PyFrame_GetCode(f);
            PyFrameObject *back;
            if (!pgo_code_excluded(r, co)) {
                /* Line numbers cost a scan of the line table: a small
                   direct-mapped cache by instruction offset skips it. */
                int lasti = PyFrame_GetLasti(f);
                uint64_t key = (uint64_t)(uintptr_t)co ^ ((uint64_t)(uint32_t)lasti << 40);
                pgo_lasti_slot_t *slot = &pgo_lasti_cache[pgo_mix(key) & (PGO_LASTI_CACHE - 1)];
                if (slot->code == (uintptr_t)co && slot->lasti == lasti && slot->gen == r->gen) {
                    id = slot->site;
                } else {
                    id = pgo_site_id(r, f, co, PyFrame_GetLineNumber(f));
                    slot->code = (uintptr_t)co;
                    slot->lasti = lasti;
                    slot->site = id;
                    slot->gen = r->gen;
                }
                Py_DECREF(co);
                break;
            }
            Py_DECREF(co);
            back = PyFrame_GetBack(f);
            Py_DECREF(f);
            f = back;
        }
        Py_XDECREF(f);
        PyErr_Clear();
        PyErr_Restore(et, ev, tb);
        return id;
    }

    static void pgo_rec_clear_sites(pgo_rec_t *r) {
        for (uint32_t i = 0; i < r->nsites; i++) {
            Py_XDECREF(r->sites[i].code);
            Py_XDECREF(r->sites[i].module);
        }
        for (uint32_t i = 0; i < r->code_cap; i++)
            if (r->code_keys[i])
                Py_DECREF((PyObject *)r->code_keys[i]);
        free(r->sites); free(r->site_keys); free(r->site_vals);
        free(r->code_keys); free(r->code_vals);
        r->sites = NULL; r->site_keys = NULL; r->site_vals = NULL;
        r->code_keys = NULL; r->code_vals = NULL;
        r->nsites = r->cap_sites = r->key_cap = r->code_cap = r->ncodes = 0;
        for (int i = 0; i < r->nprefix; i++)
            free(r->prefix[i]);
        r->nprefix = 0;
    }

    /* -- Python objects: a sampling hook on PyMem/PyObject_Malloc ---------- */

    /* Every allocation is forwarded; about one per `rate` bytes allocated
       (exponentially distributed gaps, as Go's and tcmalloc's heap
       profilers do) is sampled: its site and size recorded, its address
       kept in a set so that its free is recorded too.  A block of n bytes
       is sampled with probability 1 - exp(-n/rate); readers weight it by
       the inverse.  These domains are only used with the GIL held, which
       guards this state; `busy` keeps the sampler's own allocations (frame
       objects) from being sampled. */
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
        site = pgo_rec_site();
        pgo_objs.countdown = pgo_next_gap();
        if (pgo_set_add(p) == 0)
            pgo_rec_event(&pgo_rec.obj, PGO_EV_ALLOC, p, NULL, n, site);
        pgo_objs.busy = 0;
    }

    static void *pgo_obj_malloc(void *ctx, size_t n) {
        PyMemAllocatorEx *o = (PyMemAllocatorEx *)ctx;
        void *p = o->malloc(o->ctx, n);
        if (p != NULL && pgo_rec.obj.on && !pgo_objs.busy
                && (pgo_objs.countdown -= (int64_t)n) <= 0)
            pgo_obj_sample(p, n);
        return p;
    }

    static void *pgo_obj_calloc(void *ctx, size_t nelem, size_t elsize) {
        PyMemAllocatorEx *o = (PyMemAllocatorEx *)ctx;
        void *p = o->calloc(o->ctx, nelem, elsize);
        /* nelem * elsize: the calloc that succeeded checked it. */
        if (p != NULL && pgo_rec.obj.on && !pgo_objs.busy
                && (pgo_objs.countdown -= (int64_t)(nelem * elsize)) <= 0)
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
                pgo_rec_event(&pgo_rec.obj, PGO_EV_REALLOC, q, ptr, n, 0);
            else
                pgo_rec_event(&pgo_rec.obj, PGO_EV_FREE, ptr, NULL, 0, 0);
        } else if (pgo_rec.obj.on && !pgo_objs.busy
                   && (pgo_objs.countdown -= (int64_t)n) <= 0) {
            pgo_obj_sample(q, n);
        }
        return q;
    }

    static void pgo_obj_free(void *ctx, void *p) {
        PyMemAllocatorEx *o = (PyMemAllocatorEx *)ctx;
        if (p != NULL && pgo_objs.n && pgo_set_remove(p))
            pgo_rec_event(&pgo_rec.obj, PGO_EV_FREE, p, NULL, 0, 0);
        o->free(o->ctx, p);
    }

    /* GIL held.  Hooks PYMEM_DOMAIN_OBJ and PYMEM_DOMAIN_MEM (once: later
       starts reuse the hooks, which stay inert while not recording). */
    static void pgo_objs_start(double rate, uint64_t seed) {
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

    /* GIL held.  Takes the hooks out when nobody (tracemalloc) hooked on
       top of them since; otherwise they stay, inert. */
    static void pgo_objs_stop(void) {
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

    static size_t pgo_objs_live(void) { return pgo_objs.n; }

    /* -- fork --------------------------------------------------------------- */

    static void pgo_rec_prepare(void) { pthread_mutex_lock(&pgo_rec.lock); }
    static void pgo_rec_parent(void) { pthread_mutex_unlock(&pgo_rec.lock); }
    static void pgo_rec_child(void) {
        /* The file is the parent's: the child records nothing into it.  The
           buffered events are the parent's too (it writes them itself). */
        pgo_rec.np.on = pgo_rec.obj.on = 0;
        pgo_rec.np.fd = pgo_rec.obj.fd = -1;
        pgo_rec.np.n = pgo_rec.obj.n = 0;
        pgo_rec_tid = 0;
        pthread_mutex_unlock(&pgo_rec.lock);
    }

    static int pgo_rec_init(void) {
        pgo_rec.np.fd = pgo_rec.obj.fd = -1;
        if (pthread_mutex_init(&pgo_rec.lock, NULL) != 0)
            return -1;
        return pthread_atfork(pgo_rec_prepare, pgo_rec_parent, pgo_rec_child);
    }
    """
    ctypedef struct pgo_event_t:
        pass
    ctypedef struct pgo_site_t:
        PyObject* code
        PyObject* module
        int line
    ctypedef struct pgo_stream_t:
        int on
        int fd
        uint32_t n
        uint32_t seq
        uint64_t seen, recorded, written, write_errors
        uint64_t max_events, quota
        uint32_t level
        uint64_t level_from[32]
    ctypedef struct pgo_rec_t:
        uint64_t t0
        pgo_stream_t np
        pgo_stream_t obj
        pgo_site_t* sites
        uint32_t nsites
        char* prefix[64]
        size_t prefix_len[64]
        int prefix_include[64]
        int nprefix
        PyObject* name_str
        uint32_t gen
    pgo_rec_t pgo_rec
    bint pgo_rec_keep(uint32_t level, uint64_t addr) noexcept nogil
    const int PGO_REC_BLOCK
    const int PGO_REC_MAX_LEVEL
    const int PGO_REC_MAX_PREFIX
    const int PGO_EV_ALLOC, PGO_EV_CALLOC, PGO_EV_REALLOC, PGO_EV_FREE
    int pgo_rec_init()
    void pgo_rec_event(pgo_stream_t* st, uint8_t kind, void* addr, void* old, size_t size,
                       uint32_t site) noexcept nogil
    uint32_t pgo_rec_site() noexcept nogil
    void pgo_rec_write_block(pgo_stream_t* r) noexcept nogil
    void pgo_rec_clear_sites(pgo_rec_t* r)
    void pgo_objs_start(double rate, uint64_t seed)
    void pgo_objs_stop()
    size_t pgo_objs_live()
    uint64_t pgo_now_ns() noexcept nogil
    uint32_t pgo_checksum(const void* data, size_t n) noexcept nogil
    void pgo_rec_lock "pthread_mutex_lock"(void* m) noexcept nogil
    void pgo_rec_unlock "pthread_mutex_unlock"(void* m) noexcept nogil
    void* pgo_rec_lockp "(&pgo_rec.lock)"


if pgo_rec_init() != 0:
    raise ImportError("pgo.recorder: cannot set up its lock and fork handlers")

HEADER_SIZE = 40
RECORD_SIZE = 48
BLOCK_RECORDS = PGO_REC_BLOCK


# -- numpy's callbacks ------------------------------------------------------------

ctypedef struct rec_capsule_t:
    PyDataMem_Handler handler
    PyDataMemAllocator inner       # the handler this one records for
    PyObject* keep                 # the inner handler's capsule: a strong reference


cdef inline uint32_t _site_if_kept(void* p) noexcept nogil:
    # An event the address sampling will drop needs no site (read racily:
    # at worst a kept event gets site 0 while the level changes).
    if pgo_rec_keep(pgo_rec.np.level, <uint64_t>p):
        return pgo_rec_site()
    return 0


cdef void* _r_malloc(void* ctx, size_t size) noexcept nogil:
    cdef rec_capsule_t* h = <rec_capsule_t*>ctx
    cdef void* p = h.inner.malloc(h.inner.ctx, size)
    if p != NULL and pgo_rec.np.on:
        pgo_rec_event(&pgo_rec.np, PGO_EV_ALLOC, p, NULL, size, _site_if_kept(p))
    return p


cdef void* _r_calloc(void* ctx, size_t nelem, size_t elsize) noexcept nogil:
    cdef rec_capsule_t* h = <rec_capsule_t*>ctx
    cdef void* p = h.inner.calloc(h.inner.ctx, nelem, elsize)
    if p != NULL and pgo_rec.np.on:
        # The inner calloc checked nelem * elsize for overflow before p.
        pgo_rec_event(&pgo_rec.np, PGO_EV_CALLOC, p, NULL, nelem * elsize, _site_if_kept(p))
    return p


cdef void* _r_realloc(void* ctx, void* ptr, size_t new_size) noexcept nogil:
    cdef rec_capsule_t* h = <rec_capsule_t*>ctx
    cdef void* p = h.inner.realloc(h.inner.ctx, ptr, new_size)
    if p != NULL and pgo_rec.np.on:
        pgo_rec_event(&pgo_rec.np, PGO_EV_REALLOC, p, ptr, new_size,
                      pgo_rec_site() if pgo_rec_keep(pgo_rec.np.level, <uint64_t>ptr)
                      else _site_if_kept(p))
    return p


cdef void _r_free(void* ctx, void* ptr, size_t size) noexcept nogil:
    cdef rec_capsule_t* h = <rec_capsule_t*>ctx
    if ptr != NULL and pgo_rec.np.on:
        # Before the free: once given back, the address may be handed out
        # again by another thread and its alloc recorded first.
        pgo_rec_event(&pgo_rec.np, PGO_EV_FREE, ptr, NULL, size, 0)
    h.inner.free(h.inner.ctx, ptr, size)


cdef void _rec_capsule_destructor(object capsule) noexcept:
    # With the GIL, once the last array whose data this handler allocated is
    # gone: the inner handler may now go too.
    cdef rec_capsule_t* h = <rec_capsule_t*>PyCapsule_GetPointer(capsule, "mem_handler")
    if h == NULL:
        return
    Py_DECREF(<object>h.keep)
    free(h)


def _wrapped(capsule):
    """The handler capsule a recorder's capsule passes its calls to, or
    None when ``capsule`` is not a recorder's."""
    cdef PyDataMem_Handler* hd
    if not PyCapsule_IsValid(capsule, "mem_handler"):
        return None
    hd = <PyDataMem_Handler*>PyCapsule_GetPointer(capsule, "mem_handler")
    if hd.allocator.malloc != _r_malloc:
        return None
    return <object>(<rec_capsule_t*>hd).keep


cdef object _wrap(object inner):
    cdef PyDataMem_Handler* hd
    cdef rec_capsule_t* h
    if not PyCapsule_IsValid(inner, "mem_handler"):
        raise ValueError("the current numpy handler is not a valid handler capsule")
    hd = <PyDataMem_Handler*>PyCapsule_GetPointer(inner, "mem_handler")
    if hd.allocator.malloc == _r_malloc:
        # A recorder's handler left in place (a forked child recording
        # anew): wrap what it wraps, or every event would be recorded twice.
        inner = <object>(<rec_capsule_t*>hd).keep
        hd = <PyDataMem_Handler*>PyCapsule_GetPointer(inner, "mem_handler")
    h = <rec_capsule_t*>calloc(1, sizeof(rec_capsule_t))
    if h == NULL:
        raise MemoryError("recorder: cannot allocate its handler")
    name = b"pgo-recorder:" + bytes(hd.name)[:100]
    strncpy(h.handler.name, name, 126)
    h.handler.version = 1
    h.handler.allocator.ctx = h
    h.handler.allocator.malloc = _r_malloc
    h.handler.allocator.calloc = _r_calloc
    h.handler.allocator.realloc = _r_realloc
    h.handler.allocator.free = _r_free
    h.inner = hd.allocator
    h.keep = <PyObject*>inner
    Py_INCREF(inner)
    try:
        return PyCapsule_New(h, "mem_handler", _rec_capsule_destructor)
    except BaseException:
        Py_DECREF(inner)
        free(h)
        raise


# -- Python API ---------------------------------------------------------------------

cdef object _state = None            # (capsule, previous handler, paths, previous
                                     # handler of new threads) while started
_lock = threading.Lock()


def _header(uint64_t t0):
    head = (b"PGOTRACE" + (1).to_bytes(4, "little") + HEADER_SIZE.to_bytes(4, "little")
            + RECORD_SIZE.to_bytes(4, "little") + BLOCK_RECORDS.to_bytes(4, "little")
            + t0.to_bytes(8, "little"))
    return head + checksum(head).to_bytes(4, "little") + bytes(4)


def checksum(const unsigned char[::1] data not None):
    """The trace checksum of ``data`` (its length a multiple of 8): what
    the recorder stores for its header and for each block."""
    if data.shape[0] % 8:
        raise ValueError(f"checksum: length {data.shape[0]} is not a multiple of 8")
    if data.shape[0] == 0:
        return pgo_checksum(NULL, 0)
    return pgo_checksum(&data[0], data.shape[0])


def start(numpy_path=None, *, objects_path=None, max_events=1_000_000,
          objects_max_events=1_000_000, sample_bytes=32768, exclude=(), exceptions=(),
          seed=0x5EED):
    """Record into new trace files (each must not exist; None: not recorded):

    - ``numpy_path``: every numpy data allocation, realloc and free;
    - ``objects_path``: Python objects (PyObject_Malloc and PyMem_Malloc),
      sampled about once per ``sample_bytes`` allocated, and the frees of
      the sampled blocks.

    ``max_events`` / ``objects_max_events`` bound each trace (sampling by
    address beyond half of it; see the module docstring).  ``exclude``:
    path prefixes of code that is not a site; ``exceptions``: prefixes inside
    those that are sites after all (the longest matching prefix decides;
    at most 64 in all).  ``seed`` makes
    the object sampling repeatable.

    Raises:
        RuntimeError: a recorder is already running in this process.
    """
    global _state
    import os
    if numpy_path is None and objects_path is None:
        raise ValueError("nothing to record: give numpy_path, objects_path or both")
    for name, value in (("max_events", max_events), ("objects_max_events", objects_max_events)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"{name} must be an int >= 2, got {value!r}")
    if isinstance(sample_bytes, bool) or not isinstance(sample_bytes, int) or sample_bytes < 1:
        raise ValueError(f"sample_bytes must be an int >= 1, got {sample_bytes!r}")
    prefixes = ([(os.fsencode(p), 0) for p in exclude]
                + [(os.fsencode(p), 1) for p in exceptions])
    if len(prefixes) > PGO_REC_MAX_PREFIX:
        raise ValueError(f"at most {PGO_REC_MAX_PREFIX} exclude and exception prefixes, "
                         f"got {len(prefixes)}")
    with _lock:
        if _state is not None or pgo_rec.np.on or pgo_rec.obj.on:
            raise RuntimeError("a recorder is already running in this process")
        t0 = pgo_now_ns()
        fds = []
        try:
            for path in (numpy_path, objects_path):
                if path is None:
                    fds.append(-1)
                    continue
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                fds.append(fd)
                os.write(fd, _header(t0))
            capsule = _wrap(PyDataMem_GetHandler()) if numpy_path is not None else None
        except BaseException:
            for fd, path in zip(fds, (numpy_path, objects_path)):
                if fd >= 0:
                    os.close(fd)
                    os.unlink(path)
            raise
        _set_prefixes(prefixes)
        pgo_rec.gen += 1
        pgo_rec.t0 = t0
        _begin(&pgo_rec.np, fds[0], max_events)
        _begin(&pgo_rec.obj, fds[1], objects_max_events)
        if objects_path is not None:
            pgo_objs_start(<double>sample_bytes, <uint64_t>seed)
        previous = thread_previous = None
        if capsule is not None:
            # Threads started while recording take the recorder's handler.
            thread_previous = numpy_bridge._set_thread_handler(capsule)
            previous = PyDataMem_SetHandler(capsule)
        _state = (capsule, previous, numpy_path, objects_path, thread_previous)
        pgo_rec_lock(pgo_rec_lockp)
        pgo_rec.np.on = fds[0] >= 0
        pgo_rec.obj.on = fds[1] >= 0
        pgo_rec_unlock(pgo_rec_lockp)


cdef _set_prefixes(list prefixes):
    cdef bytes p
    cdef int inc
    cdef char* c
    if pgo_rec.name_str == NULL:
        name = "__name__"
        Py_INCREF(name)
        pgo_rec.name_str = <PyObject*>name
    pgo_rec.nprefix = 0
    for p, inc in prefixes:
        c = <char*>calloc(len(p) + 1, 1)
        if c == NULL:
            raise MemoryError()
        for i in range(len(p)):
            c[i] = p[i]
        pgo_rec.prefix[pgo_rec.nprefix] = c
        pgo_rec.prefix_len[pgo_rec.nprefix] = len(p)
        pgo_rec.prefix_include[pgo_rec.nprefix] = inc
        pgo_rec.nprefix += 1


cdef _begin(pgo_stream_t* st, int fd, uint64_t max_events):
    pgo_rec_lock(pgo_rec_lockp)
    st.on = 0
    st.fd = fd
    st.n = 0
    st.seq = 0
    st.seen = st.recorded = st.written = st.write_errors = 0
    st.max_events = max_events
    st.level = 0
    st.level_from[0] = 0
    st.quota = max_events // 2
    pgo_rec_unlock(pgo_rec_lockp)


def flush():
    """Write the buffered events to the traces now (partial blocks)."""
    with nogil:
        pgo_rec_lock(pgo_rec_lockp)
        pgo_rec_write_block(&pgo_rec.np)
        pgo_rec_write_block(&pgo_rec.obj)
        pgo_rec_unlock(pgo_rec_lockp)


def sites():
    """The site table so far: a list of (site id, module, qualified name,
    file, line), ids from 2 (0: no GIL, 1: no frame outside the excluded
    prefixes)."""
    out = []
    cdef uint32_t i
    cdef pgo_site_t* s
    for i in range(pgo_rec.nsites):
        s = &pgo_rec.sites[i]
        code = <object>s.code
        module = <object>s.module if s.module != NULL else None
        out.append((i + 2, module, code.co_qualname, code.co_filename, s.line))
    return out


cdef dict _stream_stats(pgo_stream_t* st):
    return {"seen": st.seen, "recorded": st.recorded, "written": st.written,
            "write_errors": st.write_errors, "level": st.level, "max_events": st.max_events,
            "level_from": [st.level_from[i] for i in range(st.level + 1)],
            "blocks": st.seq, "recording": bool(st.on)}


def stats():
    """Counters per trace (``numpy``, ``objects``): events seen, recorded,
    written; the sample level and the record index where each level began;
    write errors.  ``sampled_live``: sampled Python blocks not yet freed."""
    pgo_rec_lock(pgo_rec_lockp)
    try:
        out = {"numpy": _stream_stats(&pgo_rec.np), "objects": _stream_stats(&pgo_rec.obj)}
    finally:
        pgo_rec_unlock(pgo_rec_lockp)
    out["sampled_live"] = pgo_objs_live()
    return out


def running():
    """True while a recorder started in this process has not been stopped."""
    return _state is not None


def stop():
    """Stop recording: put back the numpy handler from before ``start`` (in
    this thread) and the Python allocators, write the last blocks and the
    footers, close the files.

    Arrays allocated while recording keep working (their frees are passed
    on, unrecorded).  Returns ``stats()`` as of the stop, with ``sites``.
    """
    global _state
    import os
    with _lock:
        if _state is None:
            raise RuntimeError("no recorder is running")
        capsule, previous, numpy_path, objects_path, thread_previous = _state
        _state = None
        if capsule is not None:
            if numpy_bridge._thread_handler() is capsule:
                numpy_bridge._set_thread_handler(thread_previous)
            if PyDataMem_GetHandler() is capsule:
                PyDataMem_SetHandler(previous)
        table = sites()
        with nogil:
            pgo_rec_lock(pgo_rec_lockp)
            pgo_rec.np.on = 0
            pgo_rec.obj.on = 0
            pgo_rec_write_block(&pgo_rec.np)
            pgo_rec_write_block(&pgo_rec.obj)
            pgo_rec_unlock(pgo_rec_lockp)
        result = stats()
        if objects_path is not None:
            pgo_objs_stop()
        fds = {"numpy": pgo_rec.np.fd, "objects": pgo_rec.obj.fd}
        pgo_rec.np.fd = pgo_rec.obj.fd = -1
        for key, fd in fds.items():
            if fd >= 0:
                footer = (b"PGOE" + int(result[key]["blocks"]).to_bytes(4, "little")
                          + int(result[key]["written"]).to_bytes(8, "little"))
                try:
                    os.write(fd, footer)
                finally:
                    os.close(fd)
        pgo_rec_clear_sites(&pgo_rec)
        result["sites"] = table
        return result


def abandon_after_fork():
    """In a forked child: forget the parent's recorder (the C side already
    stopped recording in pthread_atfork); a new one may then start."""
    global _state
    if _state is not None and numpy_bridge._thread_handler() is _state[0]:
        numpy_bridge._set_thread_handler(_state[4])
    _state = None
    pgo_rec.np.fd = -1
    pgo_rec.obj.fd = -1
    pgo_objs_stop()
    pgo_rec_clear_sites(&pgo_rec)
