/* The recorder's trace writer: two event streams (numpy data, Python
   objects), each buffering records into blocks and writing every full
   block to its trace file with write(2), applying its event budget
   (pgo_sample.h) on the way.  The trace format (little-endian; pgo.bundle
   reads and validates it):

    header  40 B  b"PGOTRACE", u32 version, u32 header size, u32 record
                  size, u32 records per block at most, u64 t0 (monotonic ns),
                  u32 checksum of the 32 bytes before it, u32 zero
    block   16 B  b"PGOB", u32 count, u32 sequence number, u32 checksum of
                  the records (pgo_checksum.h); then count records of 48 B
    footer  16 B  b"PGOE", u32 blocks written, u64 records written
    record  48 B  u64 t_ns, u64 addr, u64 size, u64 old addr (realloc),
                  u32 site, u32 thread id, u8 kind, u8 sample level, 6 pad

   Every stream field is under pgo_trace.lock (a pthread mutex, never held
   while calling into Python), except `on`, also read racily as a hint.
   Nothing here needs the GIL.  fork(): pthread_atfork (pgo_trace_init)
   takes the lock around fork; the child's streams are switched off (their
   files are the parent's).  Linked into the recorder module. */
#ifndef PGO_TRACE_H
#define PGO_TRACE_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

#include "pgo_defs.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the trace format is little-endian, and records are written as they lie in memory"
#endif

#define PGO_TRACE_VERSION 1
#define PGO_TRACE_HEADER_BYTES 40
#define PGO_TRACE_FOOTER_BYTES 16
#define PGO_REC_BLOCK 4096          /* records per block at most */
#define PGO_REC_MAX_LEVEL 30

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

_Static_assert(sizeof(pgo_event_t) == 48, "a trace record is 48 bytes");
_Static_assert(sizeof(pgo_block_hdr_t) == 16, "a block header is 16 bytes");

/* One trace file and its budget. */
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

/* A stream's counters, copied out under the lock (see pgo_trace_snapshot). */
typedef struct {
    int on;
    uint32_t blocks, level;
    uint64_t seen, recorded, written, write_errors, max_events;
    uint64_t level_from[PGO_REC_MAX_LEVEL + 2];
} pgo_stream_stats_t;

typedef struct {
    pthread_mutex_t lock;
    uint64_t t0;
    pgo_stream_t np;       /* numpy data: every event */
    pgo_stream_t obj;      /* Python objects: sampled allocations and their frees */
} pgo_trace_t;

extern PGO_INTERNAL pgo_trace_t pgo_trace;

static inline uint64_t pgo_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Once: the lock and the fork handlers.  0, or -1. */
PGO_INTERNAL int pgo_trace_init(void);
/* A new recording from t0: each stream off, empty, writing to its fd
   (-1: none) within max_events. */
PGO_INTERNAL void pgo_trace_begin(uint64_t t0, int np_fd, uint64_t np_max_events,
                                  int obj_fd, uint64_t obj_max_events);
/* Switches each stream on (1) or off (0). */
PGO_INTERNAL void pgo_trace_switch(int np_on, int obj_on);
/* Writes the buffered events (partial blocks) of both streams. */
PGO_INTERNAL void pgo_trace_flush(void);
/* Both streams off, their last blocks written. */
PGO_INTERNAL void pgo_trace_finish(void);
PGO_INTERNAL void pgo_trace_snapshot(pgo_stream_stats_t *np, pgo_stream_stats_t *obj);
/* The 40 header bytes of a trace started at t0, and a stream's 16 footer
   bytes. */
PGO_INTERNAL void pgo_trace_header(unsigned char *out, uint64_t t0);
PGO_INTERNAL void pgo_trace_footer(unsigned char *out, uint32_t blocks, uint64_t written);
/* One event into st (when on), stamped now and with the calling thread;
   takes the lock. */
PGO_INTERNAL void pgo_stream_event(pgo_stream_t *st, uint8_t kind, void *addr, void *old,
                                   size_t size, uint32_t site);

#endif
