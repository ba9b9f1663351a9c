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
typedef void (*pgo_fork_fn)(void);
/* An allocator family's own fork handlers, run inside the registry's:
   prepare after every registered mutex is taken (in the order added),
   parent / child before they are let go (in reverse).  0, or -1 when the
   table (8) is full. */
PGO_INTERNAL int pgo_fork_add_inner(pgo_fork_fn prepare, pgo_fork_fn parent,
                                    pgo_fork_fn child);
/* 0, or -1 when out of memory. */
PGO_INTERNAL int pgo_fork_register(pthread_mutex_t *m);
PGO_INTERNAL void pgo_fork_unregister(pthread_mutex_t *m);

#endif
