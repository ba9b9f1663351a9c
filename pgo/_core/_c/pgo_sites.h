/* The recorder's site table.  A site is the innermost Python frame outside
   the excluded path prefixes (numpy, pgo, the standard library), as (code
   object, line); site ids are dense from 2 (0: the caller does not hold
   the GIL, 1: no frame outside the excluded prefixes).

   GIL: the table is only touched with it held.  pgo_site() may be called
   from any thread: without the GIL it answers 0 and touches nothing.  With
   it, it saves and restores any pending exception and creates no Python
   objects except the frame objects CPython materializes on request (as
   sys._getframe does), with the collector off while it does (making one
   could start a collection inside an allocation).  Linked into the recorder module. */
#ifndef PGO_SITES_H
#define PGO_SITES_H

#include <Python.h>
#include <stdint.h>

#include "pgo_defs.h"
#include "pgo_hash.h"

#define PGO_SITES_MAX_PREFIX 64
#define PGO_SITES_MAX_DEPTH 64

typedef struct {
    PyObject *code;        /* strong references, released by pgo_sites_clear */
    PyObject *module;      /* the frame's __name__, or NULL */
    int line;
} pgo_site_t;

typedef struct {
    pgo_site_t *sites;
    uint32_t nsites, cap_sites;
    pgo_map_t index;       /* code address * 31 + line -> site index + 1 */
    pgo_map_t codes;       /* code objects already judged (strong references):
                              excluded (2) or not (1) */
    char *prefix[PGO_SITES_MAX_PREFIX];
    size_t prefix_len[PGO_SITES_MAX_PREFIX];
    int prefix_include[PGO_SITES_MAX_PREFIX];   /* 1: a site after all (the longest match wins) */
    int nprefix;
    PyObject *name_str;    /* "__name__" */
    uint32_t gen;          /* recordings started: tags the line cache */
} pgo_sites_t;

extern PGO_INTERNAL pgo_sites_t pgo_sites;

/* GIL held.  A new recording: no prefixes yet, the line cache emptied.
   0, or -1 with MemoryError set. */
PGO_INTERNAL int pgo_sites_begin(void);
/* GIL held.  Code under path prefix p (n bytes) is excluded, or with
   `is_site` a site after all.  0, or -1 with an exception set (no memory,
   or PGO_SITES_MAX_PREFIX prefixes already). */
PGO_INTERNAL int pgo_sites_add_prefix(const char *p, size_t n, int is_site);
/* The caller's site, or 0 without the GIL, or 1 when every frame is
   excluded.  Leaves the thread's exception state as it found it. */
PGO_INTERNAL uint32_t pgo_site(void);
/* GIL held.  Empties the table and the prefixes, releasing what they hold. */
PGO_INTERNAL void pgo_sites_clear(void);

#endif
