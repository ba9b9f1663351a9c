/* The checksum of trace headers and blocks: four independent lanes (so
   the multiplies overlap) of h = (h ^ word) * K; h ^= h >> 29, each step a
   bijection of h, so any change to one word changes its lane's final
   state; the lanes and the length go through a 64-bit finalizer, truncated
   to 32 bits.  About 8 ns per 48-byte record, where a byte-wise CRC-32 took
   a third of the recorder's time.  n is a multiple of 8.  Readers
   (pgo.bundle) call it through pgo._core.recorder.checksum(). */
#ifndef PGO_CHECKSUM_H
#define PGO_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

#include "pgo_hash.h"

static inline uint32_t pgo_checksum(const void *data, size_t n) {
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

#endif
