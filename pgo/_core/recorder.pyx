"""The recording numpy handler and the Python object sampler: every data
allocation and free, streamed to a binary event trace, then passed on to
the handler that was in effect; Python objects sampled by bytes allocated.

Design: one recorder per process (``start`` refuses a second).  The handler
wraps the numpy handler current when recording starts (numpy's default, or
a pgo Router under ``pgo run``) and forwards every call to it unchanged, so
the program's memory behaves as before; it only adds a 48-byte event to a
block buffer.  A full block is written to the trace file by whichever
thread filled it, with write(2), under the recorder's mutex; ``flush``
writes a partial one (the profiler calls it periodically, so a process
killed with SIGKILL loses at most the last interval).  This module is the
Python face; the jobs are C, each with its header in ``_c/``:

- ``pgo_trace``: the trace writer (streams, blocks, header and footer; the
  format is described there, and ``pgo.bundle`` reads and validates it),
  with ``pgo_checksum`` (the block checksum) and ``pgo_sample`` (which
  sample level keeps an address);
- ``pgo_sites``: the site table (frame walk, path prefixes, site ids);
- ``pgo_rec_handler``: the numpy handler capsule wrapping the inner one;
- ``pgo_objsampler``: the PyMem/PyObject hook sampling Python objects.

Sites: the innermost Python frame outside numpy, pgo and the standard
library (path prefixes given to ``start``), as (code object, line).  It is
found only when the calling thread holds the GIL (numpy calls some
allocators without it: those events get site 0); a frame chain that never
leaves those prefixes gets site 1.  Site ids are dense from 2; ``sites()``
resolves them to module, qualified name, file and line.

Sampling: ``max_events`` bounds the trace.  The first half of the budget is
exact; then each further level keeps the events whose address hashes into
1/4**level of the space (an allocation and the free of the same block are
kept or dropped together) for half of the remaining budget, up to level 30:
level L covers about max_events * 2**(L-1) events, so the budget stretches
over runs of any length.  Each record carries its level, so a reader can
weight it by 4**level; ``pass_level`` says up to which level an address is
kept.

# NOTE: threads and the GIL.  The numpy callbacks are ``noexcept nogil``.
# The frame walk (site lookup) runs only when PyGILState_Check() says this
# thread holds the GIL, saves and restores any pending exception, and
# creates no Python objects except the frame objects CPython materializes
# on request (as sys._getframe does), with the collector off meanwhile: a
# collection started there could traverse a container whose allocation
# called us halfway through its change.  The site table is touched only with
# the GIL held; the event buffer, counters and file only under the trace's
# lock (a pthread mutex, never held while calling into Python: ``stats``
# copies the counters out first).  The recorder owns the trace files from
# ``start`` to ``stop``, and its handler capsule holds the handler it wraps.
# fork(): pthread_atfork takes the lock around fork; the child's recorder
# is switched off (its file is the parent's) until the profiler starts a
# new one there.
"""

from libc.stdint cimport uint32_t, uint64_t

from pgo._core._c.pgo_checksum cimport pgo_checksum
from pgo._core._c.pgo_objsampler cimport pgo_objs_live, pgo_objs_start, pgo_objs_stop
from pgo._core._c.pgo_rec_handler cimport pgo_rec_handler_inner, pgo_rec_handler_wrap
from pgo._core._c.pgo_sample cimport pgo_sample_pass_level
from pgo._core._c.pgo_sites cimport (
    PGO_SITES_MAX_PREFIX, pgo_site_t, pgo_sites, pgo_sites_add_prefix, pgo_sites_begin,
    pgo_sites_clear,
)
from pgo._core._c.pgo_trace cimport (
    PGO_REC_BLOCK, PGO_TRACE_FOOTER_BYTES, PGO_TRACE_HEADER_BYTES, pgo_event_t, pgo_now_ns,
    pgo_stream_stats_t, pgo_trace, pgo_trace_begin, pgo_trace_finish, pgo_trace_flush,
    pgo_trace_footer, pgo_trace_header, pgo_trace_init, pgo_trace_snapshot, pgo_trace_switch,
)
from pgo._core._npy_handler cimport PyDataMem_GetHandler, PyDataMem_SetHandler
cimport numpy as cnp

import os
import threading

from pgo._core._handler_hook import register_wrapper, set_thread_handler, thread_handler

cnp.import_array()


if pgo_trace_init() != 0:
    raise ImportError("pgo.recorder: cannot set up its lock and fork handlers")

HEADER_SIZE = PGO_TRACE_HEADER_BYTES
RECORD_SIZE = sizeof(pgo_event_t)
BLOCK_RECORDS = PGO_REC_BLOCK


def inner_handler(capsule):
    """The handler capsule a recorder's capsule passes its calls to, or
    None when ``capsule`` is not a recorder's."""
    inner = pgo_rec_handler_inner(capsule)
    return None if inner == NULL else <object>inner


register_wrapper(inner_handler)


cdef object _state = None            # (capsule, previous handler, paths, previous
                                     # handler of new threads) while started
_lock = threading.Lock()


def checksum(const unsigned char[::1] data not None):
    """The trace checksum of ``data`` (its length a multiple of 8): what
    the recorder stores for its header and for each block."""
    if data.shape[0] % 8:
        raise ValueError(f"checksum: length {data.shape[0]} is not a multiple of 8")
    if data.shape[0] == 0:
        return pgo_checksum(NULL, 0)
    return pgo_checksum(&data[0], data.shape[0])


def pass_level(uint64_t addr):
    """The deepest sample level that still keeps events at address ``addr``
    (every level up to it does; 0 to 32)."""
    return pgo_sample_pass_level(addr)


def start(numpy_path=None, *, objects_path=None, max_events=1_000_000,
          objects_max_events=1_000_000, sample_bytes=32768, exclude=(), exceptions=(),
          seed=0x5EED):
    """Record into new trace files (each must not exist; None: not recorded):

    - ``numpy_path``: every numpy data allocation, realloc and free;
    - ``objects_path``: Python objects (PyObject_Malloc and PyMem_Malloc),
      sampled about once per ``sample_bytes`` allocated, and the frees of
      the sampled blocks.

    ``max_events`` / ``objects_max_events`` bound each trace (sampling by
    address beyond half of it; see the module docstring).  ``exclude``:
    path prefixes of code that is not a site; ``exceptions``: prefixes inside
    those that are sites after all (the longest matching prefix decides;
    at most 64 in all).  ``seed`` makes
    the object sampling repeatable.

    Raises:
        RuntimeError: a recorder is already running in this process.
    """
    global _state
    cdef unsigned char head[PGO_TRACE_HEADER_BYTES]
    if numpy_path is None and objects_path is None:
        raise ValueError("nothing to record: give numpy_path, objects_path or both")
    for name, value in (("max_events", max_events), ("objects_max_events", objects_max_events)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"{name} must be an int >= 2, got {value!r}")
    if isinstance(sample_bytes, bool) or not isinstance(sample_bytes, int) or sample_bytes < 1:
        raise ValueError(f"sample_bytes must be an int >= 1, got {sample_bytes!r}")
    prefixes = ([(os.fsencode(p), 0) for p in exclude]
                + [(os.fsencode(p), 1) for p in exceptions])
    if len(prefixes) > PGO_SITES_MAX_PREFIX:
        raise ValueError(f"at most {PGO_SITES_MAX_PREFIX} exclude and exception prefixes, "
                         f"got {len(prefixes)}")
    with _lock:
        if _state is not None or pgo_trace.np.on or pgo_trace.obj.on:
            raise RuntimeError("a recorder is already running in this process")
        t0 = pgo_now_ns()
        pgo_trace_header(head, t0)
        fds = []
        try:
            for path in (numpy_path, objects_path):
                if path is None:
                    fds.append(-1)
                    continue
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                fds.append(fd)
                os.write(fd, head[:PGO_TRACE_HEADER_BYTES])
            capsule = pgo_rec_handler_wrap(PyDataMem_GetHandler()) if numpy_path is not None else None
        except BaseException:
            for fd, path in zip(fds, (numpy_path, objects_path)):
                if fd >= 0:
                    os.close(fd)
                    os.unlink(path)
            raise
        pgo_sites_begin()
        for prefix, is_site in prefixes:
            pgo_sites_add_prefix(prefix, len(prefix), is_site)
        pgo_trace_begin(t0, fds[0], max_events, fds[1], objects_max_events)
        if objects_path is not None:
            pgo_objs_start(<double>sample_bytes, <uint64_t>seed)
        previous = thread_previous = None
        if capsule is not None:
            # Threads started while recording take the recorder's handler.
            thread_previous = set_thread_handler(capsule)
            previous = PyDataMem_SetHandler(capsule)
        _state = (capsule, previous, numpy_path, objects_path, thread_previous)
        pgo_trace_switch(fds[0] >= 0, fds[1] >= 0)


def flush():
    """Write the buffered events to the traces now (partial blocks)."""
    with nogil:
        pgo_trace_flush()


def sites():
    """The site table so far: a list of (site id, module, qualified name,
    file, line), ids from 2 (0: no GIL, 1: no frame outside the excluded
    prefixes)."""
    out = []
    cdef uint32_t i
    cdef pgo_site_t* s
    for i in range(pgo_sites.nsites):
        s = &pgo_sites.sites[i]
        code = <object>s.code
        module = <object>s.module if s.module != NULL else None
        out.append((i + 2, module, code.co_qualname, code.co_filename, s.line))
    return out


cdef dict _stream_stats(pgo_stream_stats_t* st):
    return {"seen": st.seen, "recorded": st.recorded, "written": st.written,
            "write_errors": st.write_errors, "level": st.level, "max_events": st.max_events,
            "level_from": [st.level_from[i] for i in range(st.level + 1)],
            "blocks": st.blocks, "recording": bool(st.on)}


def stats():
    """Counters per trace (``numpy``, ``objects``): events seen, recorded,
    written; the sample level and the record index where each level began;
    write errors.  ``sampled_live``: sampled Python blocks not yet freed."""
    cdef pgo_stream_stats_t np_stats, obj_stats
    pgo_trace_snapshot(&np_stats, &obj_stats)
    out = {"numpy": _stream_stats(&np_stats), "objects": _stream_stats(&obj_stats)}
    out["sampled_live"] = pgo_objs_live()
    return out


def running():
    """True while a recorder started in this process has not been stopped."""
    return _state is not None


def stop():
    """Stop recording: put back the numpy handler from before ``start`` (in
    this thread) and the Python allocators, write the last blocks and the
    footers, close the files.

    Arrays allocated while recording keep working (their frees are passed
    on, unrecorded).  Returns ``stats()`` as of the stop, with ``sites``.
    """
    global _state
    cdef unsigned char foot[PGO_TRACE_FOOTER_BYTES]
    with _lock:
        if _state is None:
            raise RuntimeError("no recorder is running")
        capsule, previous, numpy_path, objects_path, thread_previous = _state
        _state = None
        if capsule is not None:
            if thread_handler() is capsule:
                set_thread_handler(thread_previous)
            if PyDataMem_GetHandler() is capsule:
                PyDataMem_SetHandler(previous)
        table = sites()
        with nogil:
            pgo_trace_finish()
        result = stats()
        if objects_path is not None:
            pgo_objs_stop()
        fds = {"numpy": pgo_trace.np.fd, "objects": pgo_trace.obj.fd}
        pgo_trace.np.fd = pgo_trace.obj.fd = -1
        for key, fd in fds.items():
            if fd >= 0:
                pgo_trace_footer(foot, result[key]["blocks"], result[key]["written"])
                try:
                    os.write(fd, foot[:PGO_TRACE_FOOTER_BYTES])
                finally:
                    os.close(fd)
        pgo_sites_clear()
        result["sites"] = table
        return result


def abandon_after_fork():
    """In a forked child: forget the parent's recorder (the C side already
    stopped recording in pthread_atfork); a new one may then start."""
    global _state
    if _state is not None and thread_handler() is _state[0]:
        set_thread_handler(_state[4])
    _state = None
    pgo_trace.np.fd = -1
    pgo_trace.obj.fd = -1
    pgo_objs_stop()
    pgo_sites_clear()
