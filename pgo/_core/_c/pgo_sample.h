/* The trace's sampling by address.  Level 0 keeps every event; level L
   keeps the events whose address hashes into 4**-L of the space (its hash's
   top 2L bits zero), so each level covers twice the events of the one
   before with half the records, and an allocation and the free of the same
   block are kept or dropped together.  pgo.bundle.pass_level
   is the Python side of pgo_sample_pass_level (pinned by a test through
   pgo._core.recorder.pass_level). */
#ifndef PGO_SAMPLE_H
#define PGO_SAMPLE_H

#include <stdint.h>

static inline uint64_t pgo_sample_hash(uint64_t addr) {
    return (addr >> 4) * 0x9E3779B97F4A7C15ull;
}

/* 1 when sample level `level` (0..32) keeps events at addr. */
static inline int pgo_sample_keep(uint32_t level, uint64_t addr) {
    if (level == 0)
        return 1;
    return (pgo_sample_hash(addr) >> (64 - 2 * level)) == 0;
}

/* The deepest level that still keeps events at addr (every level up to it
   does): 0..32. */
static inline uint32_t pgo_sample_pass_level(uint64_t addr) {
    uint64_t h = pgo_sample_hash(addr);
    return h == 0 ? 32 : (uint32_t)__builtin_clzll(h) / 2;
}

#endif
