/* The trace writer: see pgo_trace.h. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

#include "pgo_checksum.h"
#include "pgo_sample.h"
#include "pgo_trace.h"

pgo_trace_t pgo_trace;
static __thread uint32_t pgo_trace_tid __attribute__((tls_model("initial-exec")));

static inline uint32_t pgo_tid(void) {
    if (pgo_unlikely(pgo_trace_tid == 0))
        pgo_trace_tid = (uint32_t)syscall(SYS_gettid);
    return pgo_trace_tid;
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
static void pgo_stream_write_block(pgo_stream_t *r) {
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

/* Under lock: takes one event, applying the budget. */
static void pgo_stream_put(pgo_stream_t *r, uint8_t kind, uint64_t addr, uint64_t old,
                           uint64_t size, uint32_t site, uint64_t t) {
    pgo_event_t *e;
    r->seen++;
    if (!pgo_sample_keep(r->level, addr) && !(old && pgo_sample_keep(r->level, old)))
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
        if (!pgo_sample_keep(r->level, addr) && !(old && pgo_sample_keep(r->level, old)))
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
        pgo_stream_write_block(r);
}

void pgo_stream_event(pgo_stream_t *st, uint8_t kind, void *addr, void *old, size_t size,
                      uint32_t site) {
    uint64_t t;
    if (!__atomic_load_n(&st->on, __ATOMIC_RELAXED))
        return;
    t = pgo_now_ns();
    pthread_mutex_lock(&pgo_trace.lock);
    if (st->on)
        pgo_stream_put(st, kind, (uint64_t)(uintptr_t)addr, (uint64_t)(uintptr_t)old,
                       (uint64_t)size, site, t);
    pthread_mutex_unlock(&pgo_trace.lock);
}

/* Under lock. */
static void pgo_stream_begin(pgo_stream_t *st, int fd, uint64_t max_events) {
    st->on = 0;
    st->fd = fd;
    st->n = 0;
    st->seq = 0;
    st->seen = st->recorded = st->written = st->write_errors = 0;
    st->max_events = max_events;
    st->level = 0;
    st->level_from[0] = 0;
    st->quota = max_events / 2;
}

void pgo_trace_begin(uint64_t t0, int np_fd, uint64_t np_max_events, int obj_fd,
                     uint64_t obj_max_events) {
    pthread_mutex_lock(&pgo_trace.lock);
    pgo_trace.t0 = t0;
    pgo_stream_begin(&pgo_trace.np, np_fd, np_max_events);
    pgo_stream_begin(&pgo_trace.obj, obj_fd, obj_max_events);
    pthread_mutex_unlock(&pgo_trace.lock);
}

void pgo_trace_switch(int np_on, int obj_on) {
    pthread_mutex_lock(&pgo_trace.lock);
    pgo_trace.np.on = np_on;
    pgo_trace.obj.on = obj_on;
    pthread_mutex_unlock(&pgo_trace.lock);
}

void pgo_trace_flush(void) {
    pthread_mutex_lock(&pgo_trace.lock);
    pgo_stream_write_block(&pgo_trace.np);
    pgo_stream_write_block(&pgo_trace.obj);
    pthread_mutex_unlock(&pgo_trace.lock);
}

void pgo_trace_finish(void) {
    pthread_mutex_lock(&pgo_trace.lock);
    pgo_trace.np.on = 0;
    pgo_trace.obj.on = 0;
    pgo_stream_write_block(&pgo_trace.np);
    pgo_stream_write_block(&pgo_trace.obj);
    pthread_mutex_unlock(&pgo_trace.lock);
}

static void pgo_stream_stats(const pgo_stream_t *st, pgo_stream_stats_t *out) {
    out->on = st->on;
    out->blocks = st->seq;
    out->level = st->level;
    out->seen = st->seen;
    out->recorded = st->recorded;
    out->written = st->written;
    out->write_errors = st->write_errors;
    out->max_events = st->max_events;
    memcpy(out->level_from, st->level_from, sizeof out->level_from);
}

void pgo_trace_snapshot(pgo_stream_stats_t *np, pgo_stream_stats_t *obj) {
    pthread_mutex_lock(&pgo_trace.lock);
    pgo_stream_stats(&pgo_trace.np, np);
    pgo_stream_stats(&pgo_trace.obj, obj);
    pthread_mutex_unlock(&pgo_trace.lock);
}

void pgo_trace_header(unsigned char *out, uint64_t t0) {
    uint32_t words[4] = {PGO_TRACE_VERSION, PGO_TRACE_HEADER_BYTES, sizeof(pgo_event_t),
                         PGO_REC_BLOCK};
    uint32_t crc, zero = 0;
    memcpy(out, "PGOTRACE", 8);
    memcpy(out + 8, words, sizeof words);
    memcpy(out + 24, &t0, 8);
    crc = pgo_checksum(out, 32);
    memcpy(out + 32, &crc, 4);
    memcpy(out + 36, &zero, 4);
}

void pgo_trace_footer(unsigned char *out, uint32_t blocks, uint64_t written) {
    memcpy(out, "PGOE", 4);
    memcpy(out + 4, &blocks, 4);
    memcpy(out + 8, &written, 8);
}

/* -- fork ------------------------------------------------------------------ */

static void pgo_trace_prepare(void) { pthread_mutex_lock(&pgo_trace.lock); }
static void pgo_trace_parent(void) { pthread_mutex_unlock(&pgo_trace.lock); }
static void pgo_trace_child(void) {
    /* The file is the parent's: the child records nothing into it.  The
       buffered events are the parent's too (it writes them itself). */
    pgo_trace.np.on = pgo_trace.obj.on = 0;
    pgo_trace.np.fd = pgo_trace.obj.fd = -1;
    pgo_trace.np.n = pgo_trace.obj.n = 0;
    pgo_trace_tid = 0;
    pthread_mutex_unlock(&pgo_trace.lock);
}

int pgo_trace_init(void) {
    pgo_trace.np.fd = pgo_trace.obj.fd = -1;
    if (pthread_mutex_init(&pgo_trace.lock, NULL) != 0)
        return -1;
    return pthread_atfork(pgo_trace_prepare, pgo_trace_parent, pgo_trace_child);
}
