/* The recorder's Python object sampler: a hook on PyMem_Malloc and
   PyObject_Malloc.  Every allocation is forwarded; about one per `rate`
   bytes allocated (exponentially distributed gaps, as Go's and tcmalloc's
   heap profilers do) is sampled: its site and size recorded in the trace's
   objects stream (pgo_trace.h), its address kept in a set so that its free
   is recorded too.  A block of n bytes is sampled with probability
   1 - exp(-n/rate); readers weight it by the inverse.

   GIL: these allocator domains are only used with the GIL held, which
   guards this state; every function here needs it.  Linked into the
   recorder module. */
#ifndef PGO_OBJSAMPLER_H
#define PGO_OBJSAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "pgo_defs.h"

/* Hooks PYMEM_DOMAIN_OBJ and PYMEM_DOMAIN_MEM (once: later starts reuse
   the hooks, which stay inert while not recording). */
PGO_INTERNAL void pgo_objs_start(double rate, uint64_t seed);
/* Forgets the sampled blocks; takes the hooks out when nobody
   (tracemalloc) hooked on top of them since, else they stay, inert. */
PGO_INTERNAL void pgo_objs_stop(void);
/* Sampled blocks not freed yet. */
PGO_INTERNAL size_t pgo_objs_live(void);

#endif
