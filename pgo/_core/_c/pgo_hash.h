/* Hashing for the recorder's C: a 64-bit finalizer, and the open-addressed
   map (uint64 key -> nonzero uint32 value) behind the site table.  C-only:
   no Cython code declares these. */
#ifndef PGO_HASH_H
#define PGO_HASH_H

#include <stdint.h>

#include "pgo_defs.h"

/* murmur3's 64-bit finalizer: every input bit moves every output bit. */
static inline uint64_t pgo_fmix(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

/* Its first round: enough to spread pointers over a table's slots. */
static inline uint64_t pgo_mix(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33;
    return x;
}

/* Linear probing over a power-of-two number of slots; a slot is taken when
   its value is nonzero.  The user probes from pgo_map_first with
   pgo_map_next (it decides what matches) and counts its inserts in n. */
typedef struct {
    uint64_t *keys;
    uint32_t *vals;
    uint32_t cap, n;
} pgo_map_t;

/* Room for one more entry, the map at most half full (doubling from 1024
   slots): 0, or -1, the map unchanged, when out of memory. */
PGO_INTERNAL int pgo_map_reserve(pgo_map_t *m);
/* Frees the slots; the map is empty after. */
PGO_INTERNAL void pgo_map_free(pgo_map_t *m);

static inline uint32_t pgo_map_first(const pgo_map_t *m, uint64_t key) {
    return (uint32_t)pgo_mix(key) & (m->cap - 1);
}

static inline uint32_t pgo_map_next(const pgo_map_t *m, uint32_t j) {
    return (j + 1) & (m->cap - 1);
}

#endif
