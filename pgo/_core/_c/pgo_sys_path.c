/* The per-thread small-block cache's slow paths: see pgo_sys_path.h. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "pgo_sys_path.h"

__thread pgo_small_cache_t *pgo_tls_small __attribute__((tls_model("initial-exec")));
static pthread_key_t pgo_small_key;
static pthread_once_t pgo_small_once = PTHREAD_ONCE_INIT;

static void pgo_small_destroy(void *arg) {
    /* Thread exit: the cached blocks go back to malloc.  Frees later in
       this thread's exit (other keys' destructors) bypass the cache. */
    pgo_small_cache_t *c = (pgo_small_cache_t *)arg;
    for (size_t b = 0; b < PGO_SC_BUCKETS; b++)
        for (size_t i = 0; i < c->b[b].n; i++)
            free(c->b[b].p[i]);
    free(c);
    pgo_tls_small = PGO_SMALL_GONE;
}

static void pgo_small_key_init(void) {
    pthread_key_create(&pgo_small_key, pgo_small_destroy);
}

pgo_small_cache_t *pgo_small_make(void) {
    pgo_small_cache_t *c = pgo_tls_small;
    if (c != NULL)
        return c == PGO_SMALL_GONE ? NULL : c;
    pthread_once(&pgo_small_once, pgo_small_key_init);
    if (posix_memalign((void **)&c, 64, sizeof(*c)) != 0)
        return NULL;
    memset(c, 0, sizeof(*c));
    if (pthread_setspecific(pgo_small_key, c) != 0) {
        free(c);
        return NULL;
    }
    pgo_tls_small = c;
    return c;
}

size_t pgo_small_count(void) {
    pgo_small_cache_t *c = pgo_tls_small;
    size_t k = 0;
    if (c == NULL || c == PGO_SMALL_GONE)
        return 0;
    for (size_t b = 0; b < PGO_SC_BUCKETS; b++)
        k += c->b[b].n;
    return k;
}
