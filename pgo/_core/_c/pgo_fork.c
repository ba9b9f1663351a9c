/* The fork registry: see pgo_fork.h. */
#include <pthread.h>
#include <stdlib.h>

#include "pgo_fork.h"

static pthread_mutex_t pgo_fork_registry = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t **pgo_fork_mutexes;
static size_t pgo_fork_n, pgo_fork_cap;

static void pgo_fork_prepare(void) {
    pthread_mutex_lock(&pgo_fork_registry);
    for (size_t i = 0; i < pgo_fork_n; i++)
        pthread_mutex_lock(pgo_fork_mutexes[i]);
}

static void pgo_fork_release(void) {
    for (size_t i = pgo_fork_n; i > 0; i--)
        pthread_mutex_unlock(pgo_fork_mutexes[i - 1]);
    pthread_mutex_unlock(&pgo_fork_registry);
}

int pgo_fork_hooks(void) {
    return pthread_atfork(pgo_fork_prepare, pgo_fork_release, pgo_fork_release);
}

int pgo_fork_register(pthread_mutex_t *m) {
    int rc = 0;
    pthread_mutex_lock(&pgo_fork_registry);
    if (pgo_fork_n == pgo_fork_cap) {
        size_t cap = pgo_fork_cap ? 2 * pgo_fork_cap : 16;
        pthread_mutex_t **a = realloc(pgo_fork_mutexes, cap * sizeof(*a));
        if (a == NULL) {
            rc = -1;
            goto out;
        }
        pgo_fork_mutexes = a;
        pgo_fork_cap = cap;
    }
    pgo_fork_mutexes[pgo_fork_n++] = m;
out:
    pthread_mutex_unlock(&pgo_fork_registry);
    return rc;
}

void pgo_fork_unregister(pthread_mutex_t *m) {
    pthread_mutex_lock(&pgo_fork_registry);
    for (size_t i = 0; i < pgo_fork_n; i++) {
        if (pgo_fork_mutexes[i] == m) {
            pgo_fork_mutexes[i] = pgo_fork_mutexes[--pgo_fork_n];
            break;
        }
    }
    pthread_mutex_unlock(&pgo_fork_registry);
}
