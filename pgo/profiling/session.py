"""The in-process profiler: collectors started inside the profiled process,
writing one bundle directory.

Collectors (each can be switched off):
- ``events``: numpy data allocations and frees from the recording handler
  (``pgo._core.recorder``), every one, streamed to ``events.trace``.
- ``objects``: Python objects (PyObject_Malloc / PyMem_Malloc), sampled
  about once per ``sample_bytes`` allocated, with the free of each sampled
  block, streamed to ``objects.trace``: sites, sizes and exact lifetimes of
  the sampled blocks at a cost of a few percent.
- ``tracemalloc`` (off by default: it cost 1.3-5.9x on the benchmark's
  programs): exact allocation sites of Python objects and numpy data (domain
  389047), reduced in this process to JSON (never pickled): live bytes and
  counts per site in periodic snapshots, and per site its peak.  The
  snapshot interval adapts so that snapshots take at most about 5% of the
  run (a snapshot copies every live trace).
- ``gc``: every collection's generation, pause and yield (``gc.callbacks``),
  and the thresholds in force.

A background thread takes the snapshots and flushes the trace, so a process
killed with SIGKILL leaves everything up to its last flush.

Only one profiler runs per process: ``start`` raises ``ProfilerError`` while
another is running.  After ``fork()`` the child's copy is inert (it writes
nothing into the parent's bundle) unless ``follow_children`` starts a new
one there, in ``children/PID/``.
"""

from __future__ import annotations

import array
import atexit
import gc
import os
import platform
import socket
import sys
import sysconfig
import threading
import time
import tracemalloc
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pgo import bundle as fmt
from pgo._errors import ProfilerError
from pgo._version import __version__
from pgo.profiling.options import Options

# The profiler's thread writes the buffered trace records this often.
FLUSH_INTERVAL_S = 0.25

NUMPY_DOMAIN = 389047
MAX_PAUSES = 1_000_000


def site_prefixes() -> tuple[list[str], list[str]]:
    """(exclude, include): code under an exclude prefix is not an allocation
    site (numpy, pgo, the standard library: the innermost frame outside
    them is), unless a longer include prefix holds it (site-packages inside
    the standard library's folder; pgo's example targets inside pgo)."""
    import site
    pgo_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    exclude = {os.path.dirname(np.__file__), pgo_dir}
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib"):
        if paths.get(key):
            exclude.add(paths[key])
    include = {os.path.join(pgo_dir, "targets")}
    for key in ("purelib", "platlib"):
        if paths.get(key):
            include.add(paths[key])
    include.update(site.getsitepackages())
    if site.ENABLE_USER_SITE and site.getusersitepackages():
        include.add(site.getusersitepackages())

    def both(ps: set[str]) -> list[str]:
        return sorted({p.rstrip(os.sep) + os.sep for p in ps}
                      | {os.path.realpath(p) + os.sep for p in ps})
    return both(exclude), both(include)


def excluded_prefixes() -> list[str]:
    return site_prefixes()[0]


_active: Profiler | None = None
_active_lock = threading.Lock()


def active() -> Profiler | None:
    """The profiler running in this process, if any."""
    return _active


@dataclass
class _GCState:
    thresholds: tuple
    stats0: list
    start_ns: int = 0
    t: array.array = field(default_factory=lambda: array.array("d"))
    gen: array.array = field(default_factory=lambda: array.array("b"))
    dur: array.array = field(default_factory=lambda: array.array("q"))
    collected: array.array = field(default_factory=lambda: array.array("q"))
    uncollectable: array.array = field(default_factory=lambda: array.array("q"))
    dropped: int = 0
    total_ns: int = 0
    callback_ns: int = 0
    paused: bool = False      # pgo's own collection: not the program's


class Profiler:
    """Collectors writing one bundle directory (which must exist and be
    empty of profile parts).  ``start()``, then ``stop()``; ``stop`` writes
    every part and the manifest (``complete: true``)."""

    def __init__(self, directory: os.PathLike | str, options: Options | None = None, *,
                 command: list[str] | None = None, target: dict | None = None) -> None:
        self.dir = Path(directory)
        self.options = options or Options()
        self.command = list(command or sys.argv)
        self.target = target or {}
        self.pid = os.getpid()
        self._started = False
        self._stopped = False
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()           # one snapshot / flush at a time
        self._warnings: list[str] = []
        self._site_ids: dict[tuple, int] = {}
        self._site_peak: dict[int, list[int]] = {}   # id -> [peak bytes, peak count, seen, final b, final c]
        self._snapshots: list[dict] = []
        self._snapshot_s = 0.0
        self._flush_s = 0.0
        self._interval = self.options.snapshot_interval
        self._snap_cost = 5e-9          # seconds per byte of tracemalloc memory, learned
        self._last_snap = time.perf_counter()
        self._recorder_stats: dict | None = None
        self._gc: _GCState | None = None
        self._own_tracemalloc = False
        self._tracemalloc_peak = 0
        self._pgo_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
        self._event_sites_n = -1
        self._forks = 0

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> Profiler:
        global _active
        with _active_lock:
            if self._started:
                raise ProfilerError("this profiler was already started")
            if _active is not None and _active.pid == os.getpid():
                raise ProfilerError(f"a profiler is already running in this process "
                                    f"(writing {_active.dir}); stop it first")
            _active = self
        try:
            self._start()
        except BaseException:
            with _active_lock:
                _active = None
            self._teardown()
            raise
        return self

    def _start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._started = True
        self.t0_wall = time.time()
        self.t0 = time.perf_counter()
        self._t0_perf_ns = time.perf_counter_ns()
        self.t0_ns = time.monotonic_ns()
        self._write_manifest(complete=False)
        o = self.options
        if o.gc:
            self._gc = _GCState(thresholds=gc.get_threshold(), stats0=gc.get_stats())
            gc.callbacks.append(self._gc_callback)
        if o.events or o.objects:
            from pgo._core import recorder
            if recorder.running():
                raise ProfilerError("the event recorder is already running in this process")
            exclude, exceptions = site_prefixes()
            recorder.start(os.fspath(self.dir / fmt.EVENTS) if o.events else None,
                           objects_path=os.fspath(self.dir / fmt.OBJECTS) if o.objects else None,
                           max_events=o.max_events, objects_max_events=o.objects_max_events,
                           sample_bytes=o.sample_bytes, exclude=exclude,
                           exceptions=exceptions,
                           seed=os.getpid())
        if o.tracemalloc:
            if tracemalloc.is_tracing():
                self._warnings.append("tracemalloc was already tracing; its traceback depth "
                                      f"({tracemalloc.get_traceback_limit()}) is kept")
            else:
                tracemalloc.start(o.nframes)
                self._own_tracemalloc = True
        if o.follow_children:
            os.register_at_fork(after_in_child=_after_fork_in_child)
        else:
            os.register_at_fork(after_in_parent=self._forked)
        self._thread = threading.Thread(target=self._background, name="pgo-profiler", daemon=True)
        self._thread.start()

    def _forked(self) -> None:
        # Without follow_children a forked child records nothing (its
        # recorder is switched off in pthread_atfork): the manifest says so.
        if self._started and not self._stopped:
            self._forks += 1

    def stop(self, exit_code: int | None = None) -> None:
        """Stop every collector and write the bundle.  Idempotent; a no-op in
        a forked child that did not start its own profiler."""
        global _active
        if not self._started or self._stopped or os.getpid() != self.pid:
            return
        self._stopped = True
        self._stop_event.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        duration = time.perf_counter() - self.t0
        try:
            if self.options.tracemalloc and tracemalloc.is_tracing():
                self._snapshot(final=True)
            self._finish_events()
            self._finish_gc(duration)
            if self.options.tracemalloc:
                self._tracemalloc_peak = tracemalloc.get_traced_memory()[1]
                self._write_allocations()
        finally:
            self._teardown()
            with _active_lock:
                if _active is self:
                    _active = None
        self._write_manifest(complete=True, duration=duration, exit_code=exit_code)

    def _teardown(self) -> None:
        self._remove_gc_callback()
        if self._own_tracemalloc and tracemalloc.is_tracing():
            tracemalloc.stop()
            self._own_tracemalloc = False
        if self._recording():
            from pgo._core import recorder
            if recorder.running() and self._recorder_stats is None:
                self._recorder_stats = recorder.stop()

    def _remove_gc_callback(self) -> None:
        if self._gc is not None:
            try:
                gc.callbacks.remove(self._gc_callback)
            except ValueError:
                pass

    def _recording(self) -> bool:
        return self.options.events or self.options.objects

    # -- background: snapshots and flushes -------------------------------------------

    def _background(self) -> None:
        next_snap = time.perf_counter() + self._interval

        def pause() -> float:
            # Every 0.25 s (the flush: what a SIGKILL leaves), sooner for a
            # tracemalloc snapshot that is due.  Without snapshots, next_snap
            # never moves, and this thread woke every 10 ms (a partial trace
            # block and a GIL handoff each time).
            if not self.options.tracemalloc:
                return FLUSH_INTERVAL_S
            return min(FLUSH_INTERVAL_S, max(0.01, next_snap - time.perf_counter()))

        while not self._stop_event.wait(pause()):
            try:
                now = time.perf_counter()
                if self.options.tracemalloc and now >= next_snap and tracemalloc.is_tracing():
                    # A snapshot's cost grows with the live traces, which
                    # tracemalloc's own memory tracks: predict it, and wait
                    # until it fits in the snapshots' share of the run.
                    predicted = self._snap_cost * tracemalloc.get_tracemalloc_memory()
                    wait = predicted / max(self.options.snapshot_budget, 1e-3)
                    if now - self._last_snap < wait:
                        next_snap = self._last_snap + wait
                        self._flush()
                        continue
                    mem = tracemalloc.get_tracemalloc_memory()
                    took = self._snapshot()
                    self._last_snap = time.perf_counter()
                    if mem > 0:
                        self._snap_cost = max(self._snap_cost * 0.5, took / mem)
                    self._interval = max(self.options.snapshot_interval,
                                         took / max(self.options.snapshot_budget, 1e-3))
                    next_snap = self._last_snap + self._interval
                self._flush()
            except Exception as e:        # never kill the program being profiled
                self._warnings.append(f"profiler thread: {type(e).__name__}: {e}")
                return

    def _flush(self) -> None:
        if not self._recording():
            return
        from pgo._core import recorder
        # CPU time of this thread: waiting for the GIL is not overhead.
        t = time.thread_time()
        with self._lock:
            if not recorder.running():
                return
            recorder.flush()
            table = recorder.sites()
            if len(table) != self._event_sites_n:
                self._event_sites_n = len(table)
                fmt.write_json(self.dir / fmt.EVENT_SITES, fmt.event_sites_document(table))
        self._flush_s += time.thread_time() - t

    def _snapshot(self, final: bool = False) -> float:
        t = time.perf_counter()
        # The snapshot makes a tuple per live trace: with the collector on,
        # those would trigger (and slow) the program's collections and show
        # up in its GC profile.  It is off for the snapshot's duration only.
        gc_was = gc.isenabled()
        gc.disable()
        try:
            return self._snapshot_locked(final, t)
        finally:
            if gc_was:
                gc.enable()

    def _snapshot_locked(self, final: bool, t: float) -> float:
        with self._lock:
            snap = tracemalloc.take_snapshot()
            t_s = time.monotonic_ns() / 1e9 - self.t0_ns / 1e9
            raw = getattr(snap.traces, "_traces", None)
            if raw is None:                       # not CPython's layout: the slow way
                raw = [(tr.domain, tr.size, tuple(
                    (f.filename, f.lineno) for f in reversed(tr.traceback)), 0)
                    for tr in snap.traces]
            groups: dict[tuple, list[int]] = {}
            pgo_dir = self._pgo_dir
            for trace in raw:
                domain, size, frames = trace[0], trace[1], trace[2]
                if domain != 0 and domain != NUMPY_DOMAIN:
                    continue
                if frames and frames[0][0].startswith(pgo_dir):
                    continue                      # the profiler's own objects
                key = (domain, frames)
                g = groups.get(key)
                if g is None:
                    groups[key] = [size, 1]
                else:
                    g[0] += size
                    g[1] += 1
            del raw, snap
            total = 0
            live = []
            for key, (b, n) in groups.items():
                sid = self._site_ids.get(key)
                if sid is None:
                    sid = self._site_ids[key] = len(self._site_ids) + 1
                    self._site_peak[sid] = [0, 0, 0, 0, 0]
                p = self._site_peak[sid]
                if b > p[0]:
                    p[0] = b
                if n > p[1]:
                    p[1] = n
                p[2] += 1
                total += b
                live.append((b, sid, n))
            if final:
                for sid, p in self._site_peak.items():
                    p[3] = p[4] = 0
                for b, sid, n in live:
                    self._site_peak[sid][3] = b
                    self._site_peak[sid][4] = n
            # Keep the sites that matter in each snapshot: the 200 largest
            # and any holding 0.1% of the traced bytes.
            live.sort(reverse=True)
            keep = [row for i, row in enumerate(live) if i < 200 or row[0] * 1000 >= total]
            self._snapshots.append({"t_s": round(max(t_s, 0.0), 6), "traced_bytes": total,
                                    "live": [[sid, b, n] for b, sid, n in keep]})
        took = time.perf_counter() - t
        self._snapshot_s += took
        return took

    # -- GC -------------------------------------------------------------------------

    def freeze_own_heap(self) -> None:
        """Collect and freeze what exists before the program's first line:
        pgo's start-up objects (and numpy's, which the recorder needs) would
        otherwise sit in the program's heap for every full collection to
        scan; frozen, the collector sees what it would without pgo.  That
        collection is pgo's: it stays out of the GC record (its pause, and
        the per-generation counts start after it), or a 20 ms program would
        read "GC took 17%"."""
        st = self._gc
        if st is not None:
            st.paused = True
        try:
            gc.collect()
            gc.freeze()
        finally:
            if st is not None:
                st.paused = False
                st.stats0 = gc.get_stats()

    def _gc_callback(self, phase: str, info: dict) -> None:
        st = self._gc
        if st is None or st.paused:
            return
        now = time.perf_counter_ns()
        if phase == "start":
            st.start_ns = now
            return
        dur = now - st.start_ns if st.start_ns else 0
        st.total_ns += dur
        if len(st.dur) < MAX_PAUSES:
            st.t.append(max(0.0, (now - dur - self._t0_perf_ns) / 1e9))
            st.gen.append(info.get("generation", 0))
            st.dur.append(dur)
            st.collected.append(info.get("collected", 0))
            st.uncollectable.append(info.get("uncollectable", 0))
        else:
            st.dropped += 1
        st.callback_ns += time.perf_counter_ns() - now

    def _finish_gc(self, duration: float) -> None:
        st = self._gc
        if st is None:
            return
        stats1 = gc.get_stats()
        gens = [{k: max(0, after[k] - before[k]) for k in fmt.GC_COUNTS}
                for before, after in zip(st.stats0, stats1)]
        fmt.write_json(self.dir / fmt.GC, fmt.gc_document(
            thresholds=list(st.thresholds),
            thresholds_at_end=list(gc.get_threshold()),
            enabled_at_end=gc.isenabled(),
            freeze_count_at_end=gc.get_freeze_count(),
            generations=gens,
            pauses={"t_s": [round(x, 6) for x in st.t], "generation": list(st.gen),
                    "duration_ns": list(st.dur), "collected": list(st.collected),
                    "uncollectable": list(st.uncollectable)},
            pauses_dropped=st.dropped,
            total_pause_ns=st.total_ns,
            wall_s=round(duration, 6),
        ))

    # -- events ---------------------------------------------------------------------

    def _finish_events(self) -> None:
        if not self._recording():
            return
        from pgo._core import recorder
        with self._lock:
            if recorder.running():
                self._recorder_stats = recorder.stop()
        if self._recorder_stats is not None:
            fmt.write_json(self.dir / fmt.EVENT_SITES,
                           fmt.event_sites_document(self._recorder_stats["sites"]))

    # -- writing --------------------------------------------------------------------

    def _write_allocations(self) -> None:
        sites = []
        by_id = {sid: key for key, sid in self._site_ids.items()}
        kept = {row[0] for s in self._snapshots for row in s["live"]}
        for sid in sorted(by_id):
            p = self._site_peak[sid]
            if sid not in kept:
                continue
            domain, frames = by_id[sid]
            sites.append({"id": sid, "domain": "numpy" if domain == NUMPY_DOMAIN else "objects",
                          "frames": [[f, int(line)] for f, line in frames],
                          "peak_bytes": p[0], "peak_count": p[1], "snapshots_seen": p[2],
                          "final_bytes": p[3], "final_count": p[4]})
        fmt.write_json(self.dir / fmt.ALLOCATIONS, fmt.allocations_document(
            nframes=self.options.nframes,
            traced_peak_bytes=self._tracemalloc_peak,
            snapshot_count=len(self._snapshots),
            sites=sites,
            snapshots=self._snapshots,
        ))

    def _collectors(self) -> dict:
        o = self.options
        out: dict[str, dict[str, Any]] = {}
        out["tracemalloc"] = ({"status": "ok", "nframes": o.nframes,
                               "snapshots": len(self._snapshots),
                               "final_interval_s": round(self._interval, 3)}
                              if o.tracemalloc else {"status": "off"})
        for name, key, on, cap in (("events", "numpy", o.events, o.max_events),
                                   ("objects", "objects", o.objects, o.objects_max_events)):
            if not on:
                out[name] = {"status": "off"}
                continue
            st = (self._recorder_stats or {}).get(key, {})
            out[name] = {"status": "ok", "max_events": cap,
                         "seen": st.get("seen"), "recorded": st.get("recorded"),
                         "written": st.get("written"), "write_errors": st.get("write_errors"),
                         "sample_level": st.get("level"),
                         "level_from_record": st.get("level_from"),
                         "budget": "the first half of max_events exact; then level L keeps "
                                   "1/4**L of the addresses (weight 4**L)"}
            if name == "objects":
                out[name]["sample_bytes"] = o.sample_bytes
                out[name]["sampling"] = ("a block of n bytes is sampled with probability "
                                         "1 - exp(-n / sample_bytes)")
            if st.get("write_errors"):
                out[name]["status"] = "failed"
        out["gc"] = {"status": "ok"} if o.gc else {"status": "off"}
        return out

    def _write_manifest(self, *, complete: bool, duration: float | None = None,
                        exit_code: int | None = None) -> None:
        rs = self._recorder_stats or {}
        events = sum((rs.get(k) or {}).get("recorded") or 0 for k in ("numpy", "objects"))
        gc_cb = self._gc.callback_ns / 1e9 if self._gc else 0.0
        measured = self._snapshot_s + self._flush_s + gc_cb
        overhead = {
            "snapshots_s": round(self._snapshot_s, 6),
            "flushes_s": round(self._flush_s, 6),
            "gc_callbacks_s": round(gc_cb, 6),
            "events_recorded": events,
            "measured_s": round(measured, 6),
            "measured_share": round(measured / duration, 4) if duration else None,
            "note": "time the profiler measured itself spending; tracemalloc's cost on every "
                    "allocation and the recorder's per-event cost come on top (see "
                    "benchmarks/bench_profile_overhead.py for wall-time ratios)",
        }
        forks = [(f"the program forked {self._forks} time(s); the children were not "
                  f"profiled (--follow-children profiles them)")] if self._forks else []
        fmt.write_json(self.dir / fmt.MANIFEST, fmt.manifest_document(
            complete=complete,
            command=self.command,
            target=self.target,
            cwd=os.getcwd(),
            python=sys.version.split()[0],
            implementation=platform.python_implementation(),
            numpy=np.__version__,
            pgo=__version__,
            host=socket.gethostname(),
            platform=platform.platform(),
            cpu_count=os.cpu_count(),
            pid=self.pid,
            ppid=os.getppid(),
            started_at=datetime.fromtimestamp(self.t0_wall, UTC).isoformat(),
            start_unix=round(self.t0_wall, 6),
            t0_monotonic_ns=self.t0_ns,
            duration_s=round(duration, 6) if duration is not None else None,
            exit={"code": exit_code, "signal": None},
            collectors=self._collectors(),
            overhead=overhead,
            warnings=list(self._warnings) + forks,
        ))


# -- fork ------------------------------------------------------------------------------

def _after_fork_in_child() -> None:
    """follow_children: a forked child profiles itself into children/PID/."""
    global _active
    parent = _active
    if parent is None or parent._stopped:
        return
    from pgo._core import recorder
    recorder.abandon_after_fork()
    parent._recorder_stats = {}
    if tracemalloc.is_tracing():
        tracemalloc.clear_traces()
    parent._remove_gc_callback()
    _active = None
    child_dir = parent.dir / fmt.CHILDREN / str(os.getpid())
    child = Profiler(child_dir, parent.options, command=parent.command,
                     target=dict(parent.target, forked_from=parent.pid))
    # tracemalloc is inherited, already tracing: the child does not own it
    # but must not leave it to the parent either.
    child.options = Options(**parent.options.to_json())
    try:
        child.start()
    except Exception as e:                          # pragma: no cover - reported
        print(f"pgo profile: cannot profile forked child {os.getpid()}: {e}", file=sys.stderr)
        return
    child._own_tracemalloc = True
    register_exit(child)


def register_exit(profiler: Profiler) -> None:
    """Stop ``profiler`` (writing its bundle) when this process exits, by
    atexit or, in a multiprocessing child, by its finalizers."""
    atexit.register(profiler.stop)
    # multiprocessing's children leave through os._exit after running its
    # finalizers, never through atexit; and a forked worker clears the
    # finalizers it inherited before running its after-fork hooks, so the
    # finalizer is registered from one of those.
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        mp_util.Finalize(None, profiler.stop, exitpriority=-100)
        mp_util.register_after_fork(
            profiler, lambda p: mp_util.Finalize(None, p.stop, exitpriority=-100))
