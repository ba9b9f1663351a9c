"""A GC plan applied in the running process.

- ``thresholds``: ``gc.set_threshold``.
- ``full_collection = "growth"``: CPython runs a full collection whenever
  the long-lived heap has grown by 25% since the last one, which on a heap
  that keeps growing means scanning all of it over and over.  Here the
  automatic full collections are off (a third threshold too high to reach)
  and one runs when the heap has grown by ``growth_factor`` since the last
  (Go's GOGC): the heap is measured by ``sys.getallocatedblocks()`` (a walk
  over pymalloc's pools: microseconds, 0.23 ms at 7.5 M blocks) at the end of each young
  collection, and the full collection is run by a small daemon thread,
  since a collection cannot start from inside a gc callback.  The first
  waits for ``growth_factor`` x the larger of the heap at start and the
  plan's ``peak_heap_blocks`` (the profile's peak, where its collections
  found nothing).  A full collection that freed under 1% of the heap
  doubles the factor for the next (up to 64x: scanning a heap with no
  garbage buys nothing); one that freed more brings the planned factor
  back.  With a first
  threshold of 0 (CPython: no automatic collection at all) the heap is
  looked at every 5 ms instead, or less often where a look costs more than
  0.5% of that time (a large heap), and these are the only collections: Go's
  collector exactly, for heaps whose collections free nothing.  Cyclic
  garbage is still collected, and held under that factor of the live heap
  (or of the profiled peak).
- ``freeze_after_startup``: ``gc.collect()`` then ``gc.freeze()`` at
  ``startup_s`` after start (a timer thread): what start-up built is never
  scanned again, and no garbage of that moment is frozen with it.

Python versions
---------------
All of the above is written for the collector of CPython 3.11, 3.12 and
3.13 (the GIL build): three generations; ``gc.set_threshold(t0, t1, t2)``
where ``t2`` (with the 25% rule) gates full collections, which is the
switch ``"growth"`` turns off; ``gc.get_stats()[2]`` counting full
collections.  The suite runs on those three.  On any other version --
or a free-threaded build, whose collector is not generational -- a GC
plan is refused: ``GCPolicy(plan)`` (so ``pgo run`` and
``pgo.runtime.apply`` before anything is applied) raises
``pgo.ConfigError`` naming the version, and says to drop the ``[gc]``
table or to run under 3.11-3.13.  It does not guess, because:

- Python 3.14.0 shipped an incremental collector (gh-108362; documented
  in GH-123266, Doc/library/gc.rst and What's New, which PR #125453
  moved from 3.13 to 3.14).  It has two generations, young and old.  An
  automatic collection collects the young generation *and an increment
  of the old one*, so the old generation is scanned a slice at a time
  alongside the young collections, never in a pass of its own.
  ``gc.collect(1)`` does one increment; ``gc.collect()`` is still a full
  collection.
  ``gc.get_threshold()`` still returns three values, with new meanings:
  the first is the young generation's threshold as before, the second
  sets how fast the old generation is scanned (default 10; higher is
  slower), the third means nothing (always 0); ``gc.set_threshold``
  ignores anything after its second argument.  ``gc.get_count()`` and
  ``gc.get_stats()`` keep their shapes but not their meanings.
- For this policy that means: ``thresholds`` from a 3.11-3.13 profile
  would be misread (``t1``, a young-collections-per-generation-1 count,
  would become the old generation's scan rate; ``t2`` would be dropped);
  ``full_collection = "growth"`` would lose its off switch (a third
  threshold of ``UNREACHABLE`` is ignored), so the automatic increments
  of the old generation would go on and the policy's growth-triggered
  ``gc.collect()`` calls would come on top of them: more GC work, not
  less; the backoff counts ``gc.get_stats()[2]`` collections, which no
  longer mean whole-heap passes.  (``gc.freeze()`` is unchanged.)
- Python 3.14.5 (May 2026) went back to 3.13's generational collector
  (gh-142516 / GH-148726, "Forward-port generational GC": PR #148720 for
  3.14, #148746 for 3.15), so "3.14" alone does not say which collector
  runs.  Adding 3.14.5+ to ``SUPPORTED_PYTHONS`` needs this module's
  tests run on it first.

# NOTE: threads.  The callback runs with the GIL, in whichever thread
# triggered the collection; it only reads a counter and sets an Event.  The
# collector thread holds no lock while collecting.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from typing import Any

from pgo._errors import ConfigError
from pgo.config import MAX_GROWTH_FACTOR as MAX_FACTOR
from pgo.config import GCPlan

UNREACHABLE = 1_000_000_000   # a third threshold no program reaches
MIN_HEAP_BLOCKS = 100_000     # never trigger below this many blocks (start-up noise)
POLL_S = 0.005                # with automatic collections off: how often to look, at most
POLL_SHARE = 0.005            # ... and at most this share of the time spent looking
# The (major, minor) versions whose collector this policy knows and is tested on.
SUPPORTED_PYTHONS = ((3, 11), (3, 12), (3, 13))


def check_python(source: str | None = None) -> None:
    """Raise ``ConfigError`` unless this interpreter's collector is one
    the policy knows: CPython 3.11-3.13 with the GIL (see the module's
    docstring).  ``source``: the config's name, for the message."""
    v = sys.version_info
    name = sys.implementation.name
    # "t": a free-threaded build (sysconfig would say so too, for 1 ms of
    # import before the program starts).
    free_threaded = "t" in getattr(sys, "abiflags", "")
    if name == "cpython" and (v[0], v[1]) in SUPPORTED_PYTHONS and not free_threaded:
        return
    here = (f"{'CPython' if name == 'cpython' else name} {v[0]}.{v[1]}.{v[2]}"
            f"{' (free-threaded)' if free_threaded else ''}")
    if free_threaded:
        why = "the free-threaded build's collector is not generational"
    elif name != "cpython":
        why = "the policy drives CPython's collector"
    elif (v[0], v[1]) == (3, 14):
        why = ("3.14.0-3.14.4 collect the old generation incrementally and ignore a third "
               "threshold, 3.14.5 went back to 3.13's collector; neither is tested")
    else:
        why = "its gc.set_threshold() may mean something else"
    known = [f"{a}.{b}" for a, b in SUPPORTED_PYTHONS]
    raise ConfigError(
        f"{source + ': ' if source else ''}[gc]: pgo's GC policy knows the collectors of "
        f"CPython {', '.join(known)}; this is {here} ({why}), so the GC plan is not applied "
        f"and nothing else is either.  Remove the [gc] table from the config to run with the "
        f"rest of it, or run the program under CPython {', '.join(known[:-1])} or {known[-1]}.")


class GCPolicy:
    """Raises ``ConfigError`` (from the constructor, before anything is
    changed, and again from ``start()``) on a Python whose collector it
    does not know: see ``check_python``."""

    def __init__(self, plan: GCPlan, source: str | None = None) -> None:
        check_python(source)
        self.plan = plan
        self.source = source
        self.full_collections = 0
        self.polls = 0              # looks at the heap by the poller
        self.full_collection_s = 0.0
        self.frozen = 0
        self.factor = plan.growth_factor
        self._limit = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None
        self._previous: tuple[int, int, int] | None = None
        self._collections0: list[int] = [s["collections"] for s in gc.get_stats()]
        self._poller: threading.Thread | None = None

    def start(self) -> None:
        check_python(self.source)
        p = self.plan
        self._previous = gc.get_threshold()
        self._collections0 = [s["collections"] for s in gc.get_stats()]
        if p.thresholds is not None:
            t0, t1, t2 = p.thresholds
            if p.full_collection == "growth":
                t2 = UNREACHABLE
            gc.set_threshold(t0, t1, t2)
        elif p.full_collection == "growth":
            t0, t1, _ = gc.get_threshold()
            gc.set_threshold(t0, t1, UNREACHABLE)
        if p.full_collection == "growth" and p.growth_factor:
            # The profile's peak counts as the last full collection: its
            # collections scanned up to there and found nothing.
            start = max(sys.getallocatedblocks(), MIN_HEAP_BLOCKS, p.peak_heap_blocks or 0)
            self._limit = int(start * p.growth_factor)
            gc.callbacks.append(self._on_gc)
            self._thread = threading.Thread(target=self._collector, name="pgo-gc", daemon=True)
            self._thread.start()
            # With automatic collections off (a first threshold of 0) no
            # callback ever runs: the heap is also looked at every few ms.
            if gc.get_threshold()[0] == 0:
                self._poller = threading.Thread(target=self._poll, name="pgo-gc-poll",
                                                daemon=True)
                self._poller.start()
        if p.freeze_after_startup:
            self._timer = threading.Timer(p.startup_s or 0.0, self._freeze)
            self._timer.daemon = True
            self._timer.start()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "stop" or info.get("generation") == 2:
            return
        if sys.getallocatedblocks() > self._limit:
            self._wake.set()

    def _poll(self) -> None:
        # sys.getallocatedblocks() walks every pool of pymalloc's arenas, with
        # the GIL: 0.23 ms on a heap of 7.5 M blocks, 5% of the program's time
        # at a fixed 5 ms (records' config was 11-15% behind GC off).  The
        # interval grows with what a look costs.
        interval = POLL_S
        while not self._stop.wait(interval):
            t = time.perf_counter()
            blocks = sys.getallocatedblocks()
            interval = max(POLL_S, (time.perf_counter() - t) / POLL_SHARE)
            self.polls += 1
            if blocks > self._limit:
                self._wake.set()

    def _collector(self) -> None:
        base = self.plan.growth_factor or 2.0
        factor = base
        while True:
            self._wake.wait()
            if self._stop.is_set():
                return
            self._wake.clear()
            before = sys.getallocatedblocks()
            t = time.perf_counter()
            if not self._collect_full():
                continue
            self.full_collection_s += time.perf_counter() - t
            self.full_collections += 1
            after = sys.getallocatedblocks()
            # A collection that freed (almost) nothing was not worth its
            # scan: wait twice as long for the next; one that freed
            # something brings the planned factor back.
            factor = min(factor * 2, MAX_FACTOR) if before - after < 0.01 * before else base
            self.factor = factor
            self._limit = int(max(after, MIN_HEAP_BLOCKS) * factor)
            # A wake-up that came during the collection was for the old limit.
            self._wake.clear()

    def _collect_full(self) -> bool:
        # The wake-up comes from a callback, which runs while the young
        # collection that called it is still on: gc.collect() then returns
        # at once without collecting.  Try again until one really ran.
        for _ in range(1000):
            done = gc.get_stats()[2]["collections"]
            gc.collect()
            if gc.get_stats()[2]["collections"] > done:
                return True
            if self._stop.wait(0.001):
                return False
        return False

    def _freeze(self) -> None:
        # Cyclic garbage alive at this moment would be frozen with the rest
        # and never collected: collect it first (one full collection, of
        # the heap that will not be scanned again).
        gc.collect()
        gc.freeze()
        self.frozen = gc.get_freeze_count()

    def stop(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        self._stop.set()
        self._wake.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._previous is not None:
            gc.set_threshold(*self._previous)

    def stats(self) -> dict[str, Any]:
        return {"thresholds": list(gc.get_threshold()),
                "full_collection": self.plan.full_collection,
                "growth_factor": self.plan.growth_factor,
                "policy_full_collections": self.full_collections,
                "policy_full_collection_s": round(self.full_collection_s, 6),
                "growth_factor_now": self.factor,
                "frozen_objects": self.frozen,
                "heap_polls": self.polls,
                "collections": [s["collections"] for s in gc.get_stats()],
                # Those since the plan took over (the rest came before the
                # program: interpreter and pgo start-up).
                "collections_under_plan": [
                    s["collections"] - c0 for s, c0 in zip(gc.get_stats(), self._collections0)]}
