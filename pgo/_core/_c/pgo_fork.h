/* fork() safety for pgo's allocators: a registry of the mutexes of
   Python-made threadsafe allocators, each taken just before fork() and let
   go just after it, in parent and child alike (pthread_atfork handlers,
   installed by pgo_fork_hooks).  See the NOTE in _base.pyx for why this
   runs inside fork() itself.  Linked into _base; callable without the GIL. */
#ifndef PGO_FORK_H
#define PGO_FORK_H

#include <pthread.h>

#include "pgo_defs.h"

/* Installs the pthread_atfork handlers: 0, or pthread_atfork's error. */
PGO_INTERNAL int pgo_fork_hooks(void);
/* 0, or -1 when out of memory. */
PGO_INTERNAL int pgo_fork_register(pthread_mutex_t *m);
PGO_INTERNAL void pgo_fork_unregister(pthread_mutex_t *m);

#endif
