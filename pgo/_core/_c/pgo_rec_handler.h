/* The recording numpy handler: a PyDataMem_Handler capsule that wraps the
   handler in effect when recording starts (numpy's default, or a pgo
   Router's) and forwards every call to it unchanged, adding an event to the
   trace's numpy stream (pgo_trace.h) with the caller's site (pgo_sites.h).

   The callbacks are noexcept C that numpy calls with or without the GIL;
   the capsule functions need the GIL.  A capsule holds a strong reference to
   the capsule it wraps, released when the last array it allocated is gone.
   Linked into the recorder module. */
#ifndef PGO_REC_HANDLER_H
#define PGO_REC_HANDLER_H

#include <Python.h>

#include "pgo_defs.h"

/* A new handler capsule recording for `inner` (a handler capsule; when it
   is a recording one already, for the handler that one wraps, so no event
   is recorded twice).  NULL with ValueError (not a handler capsule) or
   MemoryError set. */
PGO_INTERNAL PyObject *pgo_rec_handler_wrap(PyObject *inner);
/* The capsule a recording capsule passes its calls to (a borrowed
   reference), or NULL, with no exception, when `capsule` is not one. */
PGO_INTERNAL PyObject *pgo_rec_handler_inner(PyObject *capsule);

#endif
