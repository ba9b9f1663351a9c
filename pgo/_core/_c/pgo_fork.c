/* The fork registry: see pgo_fork.h. */
#include <pthread.h>
#include <stdlib.h>

#include "pgo_fork.h"

static pthread_mutex_t pgo_fork_registry = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t **pgo_fork_mutexes;
static size_t pgo_fork_n, pgo_fork_cap;

/* Inner hooks: an allocator family's own mutexes, taken after every
   registered allocator mutex (which its callers may hold while they wait
   for those) and let go before them. */
#define PGO_FORK_MAX_INNER 8
static struct {
    pgo_fork_fn prepare, parent, child;
} pgo_fork_inner[PGO_FORK_MAX_INNER];
static size_t pgo_fork_ninner;

static void pgo_fork_prepare(void) {
    pthread_mutex_lock(&pgo_fork_registry);
    for (size_t i = 0; i < pgo_fork_n; i++)
        pthread_mutex_lock(pgo_fork_mutexes[i]);
    for (size_t i = 0; i < pgo_fork_ninner; i++)
        pgo_fork_inner[i].prepare();
}

static void pgo_fork_unlock_all(void) {
    for (size_t i = pgo_fork_n; i > 0; i--)
        pthread_mutex_unlock(pgo_fork_mutexes[i - 1]);
    pthread_mutex_unlock(&pgo_fork_registry);
}

static void pgo_fork_parent(void) {
    for (size_t i = pgo_fork_ninner; i > 0; i--)
        pgo_fork_inner[i - 1].parent();
    pgo_fork_unlock_all();
}

static void pgo_fork_child(void) {
    for (size_t i = pgo_fork_ninner; i > 0; i--)
        pgo_fork_inner[i - 1].child();
    pgo_fork_unlock_all();
}

int pgo_fork_hooks(void) {
    return pthread_atfork(pgo_fork_prepare, pgo_fork_parent, pgo_fork_child);
}

int pgo_fork_add_inner(pgo_fork_fn prepare, pgo_fork_fn parent, pgo_fork_fn child) {
    int rc = 0;
    pthread_mutex_lock(&pgo_fork_registry);
    if (pgo_fork_ninner == PGO_FORK_MAX_INNER) {
        rc = -1;
    } else {
        pgo_fork_inner[pgo_fork_ninner].prepare = prepare;
        pgo_fork_inner[pgo_fork_ninner].parent = parent;
        pgo_fork_inner[pgo_fork_ninner].child = child;
        pgo_fork_ninner++;
    }
    pthread_mutex_unlock(&pgo_fork_registry);
    return rc;
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
