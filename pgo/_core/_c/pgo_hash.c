/* The open-addressed map: see pgo_hash.h. */
#include <stdlib.h>

#include "pgo_hash.h"

int pgo_map_reserve(pgo_map_t *m) {
    uint32_t cap, i;
    uint64_t *k;
    uint32_t *v;
    pgo_map_t grown;
    if (m->cap != 0 && (m->n + 1) * 2 <= m->cap)
        return 0;
    cap = m->cap ? m->cap * 2 : 1024;
    k = calloc(cap, sizeof *k);
    v = calloc(cap, sizeof *v);
    if (!k || !v) {
        free(k);
        free(v);
        return -1;
    }
    grown.keys = k;
    grown.vals = v;
    grown.cap = cap;
    grown.n = m->n;
    for (i = 0; i < m->cap; i++) {
        if (m->vals[i]) {
            uint32_t j = pgo_map_first(&grown, m->keys[i]);
            while (v[j])
                j = pgo_map_next(&grown, j);
            k[j] = m->keys[i];
            v[j] = m->vals[i];
        }
    }
    pgo_map_free(m);
    *m = grown;
    return 0;
}

void pgo_map_free(pgo_map_t *m) {
    free(m->keys);
    free(m->vals);
    m->keys = NULL;
    m->vals = NULL;
    m->cap = m->n = 0;
}
