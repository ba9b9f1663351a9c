"""The GC plan: thresholds, full collections and gc.freeze() from what the
profile measured.

- GC under 5% of the wall time, or under 10 ms in all: nothing to win (or
  too little to judge from: a plan made of one or two pauses is noise);
  the plan leaves it alone.  Except a heap that keeps growing (at 90% of
  the run twice what it held at 30%) and whose collections free nothing
  (20 collections at least): there the share grows with the input, since
  every full collection scans the whole heap (feature_store in
  benchmarks/corpus: 1.9% profiled at a third of its input; GC off took
  0.88-0.98 of its time at the full one, in five runs).  From 1% such a
  heap gets the plan below (not judged on merged bundles).
- Collections that free (almost) nothing (under one object per thousand
  allocated): the collector is scanning a heap with no garbage.  Every
  object that survives is scanned in each young generation once, whatever
  the thresholds (records.py: 1.28-1.31 s with young collections 70x
  rarer, against 0.99-1.01 s with none), so automatic collections go
  (``thresholds = [0, 0, 0]``) and full collections follow the heap, as
  Go's collector does: one whenever it has grown by ``growth_factor``
  (``full_collection = "growth"``).  The factor comes from ratios that do
  not change with the input size (the garbage per object allocated, the
  objects allocated per block of peak heap; see ``_growth_factor``): the
  largest that holds cyclic garbage under 10% of the heap, up to 64x.  A
  program profiled on a third of its input then makes no full collection
  on the whole of it (event_sourcing in benchmarks/corpus: one fruitless
  0.35 s collection at 3x with a factor of 2).  The profile counts as the
  last of those collections: its collections scanned the heap up to its
  peak and found nothing, so the first full one waits for the factor
  times that peak (``peak_heap_blocks``, the sampled objects' most live
  at once, in ``sys.getallocatedblocks()``'s units: 6.09 M against
  6.05 M on records.py; it misses what was allocated before the profiler
  started, a few percent at most).
- Collections that do free cycles: young collections get rarer by a
  bounded factor (threshold 10,000) and full collections come at 1.5x heap
  growth, so garbage stays within 1.5x of the live heap.
- gc.freeze() after start-up when the object heap is built early (90% of
  its peak in the first half of the run) and stays (80% of the peak until
  90% of the run): the frozen objects are never scanned again.

The plan records the Python version it was made for (``pgo run`` warns on
another).
"""

from __future__ import annotations

import functools

import numpy as np

from pgo.analysis.features import OBJECTS, Collected, Traced, collect
from pgo.analysis.lifetimes import Blocks
from pgo.analysis.summary import live_curve, peak_live_count
from pgo.bundle import Bundle
from pgo.config import MAX_GROWTH_FACTOR as MAX_FACTOR
from pgo.config import GCPlan

MIN_SHARE = 0.05
MIN_PAUSE_S = 0.010
MIN_SHARE_GROWING_HEAP = 0.01  # a growing heap whose collections free nothing
MIN_COLLECTIONS = 20           # to call "freed nothing" from
GARBAGE_SHARE = 0.10   # cyclic garbage held, as a share of the heap (the +10% RSS bound)
MIN_FACTOR = 1.25


def plan(bundle: Bundle, traces: Collected | None = None) -> GCPlan | None:
    """``traces``: ``features.collect(bundle)``, when the caller has it
    (the sampled objects of every run come from there)."""
    g = bundle.gc
    if not g:
        return None
    wall = float(g["wall_s"] or bundle.manifest.get("duration_s") or 0.0)
    pause_s = g["total_pause_ns"] / 1e9
    share = pause_s / wall if wall > 0 else 0.0
    collections = len(g["pauses"]["duration_ns"]) + g["pauses_dropped"]
    collected = sum(gen["collected"] for gen in g["generations"])
    full = g["generations"][2]["collections"] if len(g["generations"]) > 2 else 0
    full_s = (sum(d for d, gen in zip(g["pauses"]["duration_ns"], g["pauses"]["generation"])
                  if gen == 2) / 1e9)
    head = (f"GC took {share:.1%} of the {wall:.3g} s run ({collections:,} collections, "
            f"{full} full ones taking {full_s:.3g} s; {collected:,} objects freed)")
    # Every plan records the share it was judged from (the metrics compare
    # the run's GC time against it).
    make = functools.partial(GCPlan, profiled_gc_share=round(share, 4))
    if share < MIN_SHARE_GROWING_HEAP:
        return make(reason=f"{head}: under {MIN_SHARE:.0%}, left as it is")
    objects = (traces or collect(bundle))[0].get(OBJECTS)
    blocks = objects.blocks if objects is not None else None
    allocated = float(blocks.weight.sum()) if blocks is not None else 0.0
    no_garbage = objects is not None and allocated > 0 and collected < allocated / 1000
    if share < MIN_SHARE:
        # One run's heap only: in a merged bundle, what a run keeps would
        # seem to live on through the runs after it.
        grows = len(objects.run_starts) == 1 and _heap_grows(blocks, wall) if objects else False
        if not (no_garbage and collections >= MIN_COLLECTIONS and grows):
            return make(reason=f"{head}: under {MIN_SHARE:.0%}, left as it is")
        head += (f": under {MIN_SHARE:.0%} here, but the heap keeps growing and its collections "
                 f"free nothing, so the share grows with the input")
    elif pause_s < MIN_PAUSE_S:
        return make(reason=f"{head}: under {MIN_PAUSE_S * 1e3:.0f} ms in all, too little "
                           f"to judge from; left as it is")
    freeze, startup = _startup(blocks, wall)
    if no_garbage and objects is not None:
        peak = _peak_blocks(objects)
        factor, garbage = _growth_factor(collected, allocated, peak)
        return make(
            thresholds=(0, 0, 0), freeze_after_startup=freeze, startup_s=startup,
            full_collection="growth", growth_factor=factor, peak_heap_blocks=round(peak),
            reason=(f"{head}, {collected / max(allocated, 1):.2%} of ~{allocated:,.0f} objects "
                    f"allocated: no young collections (each surviving object was scanned "
                    f"twice for nothing), a full one whenever the heap has grown {factor:g}x, "
                    f"the first at {factor:g}x the profile's peak of ~{round(peak):,} blocks, "
                    f"where its collections found nothing: at its rate (at most "
                    f"{garbage:.2g} of cyclic garbage per block of heap growth) the garbage "
                    f"stays under {GARBAGE_SHARE:.0%} of the heap at any input size"
                    + (f"; heap built in the first {startup:.3g} s is frozen" if freeze else "")))
    return make(
        thresholds=(10_000, 10, 1_000_000), freeze_after_startup=freeze, startup_s=startup,
        full_collection="growth", growth_factor=1.5,
        reason=(f"{head}: collections free cycles, so young collections only 14x rarer and "
                f"full ones at 1.5x heap growth (garbage held under 1.5x the live heap)"
                + (f"; heap built in the first {startup:.3g} s is frozen" if freeze else "")))


def _growth_factor(collected: float, allocated: float, peak: float) -> tuple[float, float]:
    """(growth factor, garbage per block of heap growth), from ratios that do
    not change with the input size.

    Between two full collections the heap grows from H to F x H; the run
    allocates about ``churn`` = allocated / peak objects per block it
    grows by, and a share ``rate`` of them becomes cyclic garbage (the
    profile's collected / allocated; with none collected, the rule of
    three's bound 3 / allocated).  Garbage held: rate x churn x (F - 1) x H,
    under GARBAGE_SHARE of the F x H heap for every F when rate x churn is
    at most GARBAGE_SHARE: then the factor is MAX_FACTOR, and a larger run
    than the profiled one scans no more than GC off does.  Otherwise the
    largest F that keeps the bound.
    """
    rate = max(collected, 3.0) / allocated
    churn = allocated / max(peak, 1.0)
    garbage = rate * churn
    if garbage <= GARBAGE_SHARE:
        return MAX_FACTOR, garbage
    return round(max(MIN_FACTOR, min(MAX_FACTOR, garbage / (garbage - GARBAGE_SHARE))), 2), garbage


def _peak_blocks(objects: Traced) -> float:
    """The profile's peak live heap, in blocks.  A merged bundle lays its
    runs end to end, and what a run leaves alive at its end would stay
    alive through the runs after it: there, the largest of each run's own
    peak."""
    ends = [*objects.run_starts[1:], len(objects.blocks)]
    return max(peak_live_count(objects.blocks, slice(a, b))
               for a, b in zip(objects.run_starts, ends))


def _heap_grows(b: Blocks | None, wall: float) -> bool:
    """The object heap keeps growing: at 90% of the run (before the
    program drops it at its end) it holds twice what it held at 30%.
    Then CPython's full collections (one per 25% of growth) scan more, and
    more often, on a larger input.  (Not against the peak: a few large
    sampled objects make spikes.)"""
    if b is None or len(b) == 0 or wall <= 0:
        return False
    grid = np.linspace(0, wall, 65)
    live = live_curve(b, None, 65, wall)
    late = float(live[int(np.searchsorted(grid, 0.9 * wall, side="right")) - 1])
    early = float(live[int(np.searchsorted(grid, 0.3 * wall, side="right")) - 1])
    return late > 0 and late >= 2 * early


def _startup(b: Blocks | None, wall: float) -> tuple[bool, float | None]:
    """(freeze?, when): the object heap reaches 90% of its peak in the
    first half of the run and keeps 80% of it to the end."""
    if b is None or len(b) == 0 or wall <= 0:
        return False, None
    grid = np.linspace(0, wall, 65)
    live = live_curve(b, None, 65, wall)
    peak = float(live.max())
    if peak <= 0:
        return False, None
    reach = int(np.argmax(live >= 0.9 * peak))
    # Up to 90% of the run: at the very end the program drops its heap.
    stop = int(np.searchsorted(grid, 0.9 * wall, side="right"))
    if grid[reach] <= 0.5 * wall and reach < stop and live[reach:stop].min() >= 0.8 * peak:
        return True, round(float(grid[reach]), 3)
    return False, None
