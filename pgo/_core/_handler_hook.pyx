"""What every pgo numpy handler shares, in one place that both the router
(``numpy_bridge``) and the profiler's recorder (``recorder``) import, so
that neither imports the other.

- The handler threads take: numpy gives every new thread the default
  handler (its ContextVar starts empty there), so a thread started after
  ``set_thread_handler(capsule)`` sets that handler itself before running
  its target (``threading.Thread`` and what is built on it:
  ``concurrent.futures``, ``multiprocessing.pool.ThreadPool``).  One hook
  for every pgo handler (``install()``, the recorder), so that the last one
  set wins whatever order they were set up in.
- Wrapping handlers: a handler that passes every call on to another one
  (the recorder's) registers how to see through it, so that
  ``pgo.owner()`` finds the allocator behind it.

# NOTE: ownership and threads.  This module holds a strong reference to
# the thread handler capsule (None: numpy's default) and to each registered
# function.  Everything here runs with the GIL; a new thread reads the
# capsule once, in its bootstrap, before its target runs.
"""

cimport numpy as cnp

from pgo._core._npy_handler cimport PyDataMem_GetHandler, PyDataMem_SetHandler

import threading

cnp.import_array()


cdef object _thread_capsule = None   # the handler threads started from now on take
cdef bint _threads_patched = False
cdef list _unwrappers = []


cdef _patch_threads():
    global _threads_patched
    if _threads_patched:
        return
    original = threading.Thread._bootstrap_inner

    def _bootstrap_inner(self):
        capsule = _thread_capsule
        try:
            if capsule is not None:
                PyDataMem_SetHandler(capsule)
        finally:
            original(self)          # whatever happened: Thread.start() waits for it

    threading.Thread._bootstrap_inner = _bootstrap_inner
    _threads_patched = True


def set_thread_handler(capsule):
    """The handler capsule (or None: numpy's default) that threads started
    from now on take; returns the one before."""
    global _thread_capsule
    _patch_threads()
    previous = _thread_capsule
    _thread_capsule = capsule
    return previous


def thread_handler():
    """The handler capsule threads started from now on take (None: numpy's
    default)."""
    return _thread_capsule


def adopt_thread_handler():
    """Give the current context (a thread's, an asyncio task's) the handler
    threads take, when one is set and the context has another; returns
    whether it changed.  For code that runs work in contexts made before
    pgo's handler was set: numpy's handler is a ContextVar, and Dask's
    worker runs each task in a copy of an asyncio task's context made at
    start-up, which ``install()`` and the thread hook never reach."""
    capsule = _thread_capsule
    if capsule is None or PyDataMem_GetHandler() is capsule:
        return False
    PyDataMem_SetHandler(capsule)
    return True


def register_wrapper(inner_handler):
    """Register a wrapping handler's ``inner_handler(capsule)``: the capsule
    ``capsule`` passes its calls to when it is one of that kind, else None."""
    if not callable(inner_handler):
        raise TypeError(f"register_wrapper takes a function, got {type(inner_handler).__name__}")
    if not any(f is inner_handler for f in _unwrappers):
        _unwrappers.append(inner_handler)


def wrapped_handler(capsule):
    """The handler capsule ``capsule`` passes its calls to, when it is a
    registered wrapping handler; else None."""
    for inner_handler in _unwrappers:
        inner = inner_handler(capsule)
        if inner is not None:
            return inner
    return None
