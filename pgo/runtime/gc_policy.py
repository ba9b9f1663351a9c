"""A GC plan applied in the running process.

- ``thresholds``: ``gc.set_threshold``.
- ``full_collection = "growth"``: CPython runs a full collection whenever
  the long-lived heap has grown by 25% since the last one, which on a heap
  that keeps growing means scanning all of it over and over.  Here the
  automatic full collections are off (a third threshold too high to reach)
  and one runs when the heap has grown by ``growth_factor`` since the last
  (Go's GOGC): the heap is measured by ``sys.getallocatedblocks()`` (a walk
  over pymalloc's arenas: microseconds) at the end of each young
  collection, and the full collection is run by a small daemon thread,
  since a collection cannot start from inside a gc callback.  The first
  waits for ``growth_factor`` x the larger of the heap at start and the
  plan's ``peak_heap_blocks`` (the profile's peak, where its collections
  found nothing).  A full collection that freed under 1% of the heap
  doubles the factor for the next (up to 64x: scanning a heap with no
  garbage buys nothing); one that freed more brings the planned factor
  back.  With a first
  threshold of 0 (CPython: no automatic collection at all) the heap is
  looked at every 5 ms instead, and these are the only collections: Go's
  collector exactly, for heaps whose collections free nothing.  Cyclic
  garbage is still collected, and held under that factor of the live heap
  (or of the profiled peak).
- ``freeze_after_startup``: ``gc.freeze()`` at ``startup_s`` after start
  (a timer thread): what start-up built is never scanned again.

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

from pgo.config import GCPlan

UNREACHABLE = 1_000_000_000   # a third threshold no program reaches
MIN_HEAP_BLOCKS = 100_000     # never trigger below this many blocks (start-up noise)
POLL_S = 0.005                # with automatic collections off: how often to look
MAX_FACTOR = 64.0             # the backoff's bound


class GCPolicy:
    def __init__(self, plan: GCPlan) -> None:
        self.plan = plan
        self.full_collections = 0
        self.full_collection_s = 0.0
        self.frozen = 0
        self.factor = plan.growth_factor
        self._limit = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None
        self._previous: tuple[int, int, int] | None = None
        self._poller: threading.Thread | None = None

    def start(self) -> None:
        p = self.plan
        self._previous = gc.get_threshold()
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
        while not self._stop.wait(POLL_S):
            if sys.getallocatedblocks() > self._limit:
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
                "collections": [s["collections"] for s in gc.get_stats()]}
