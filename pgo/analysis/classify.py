"""Sites -> clusters -> patterns -> strategies, each with a confidence and
a reason that carries the numbers behind it.

1. The features of every site (``features.Site.vector``) are standardized
   and clustered with scipy: Ward linkage on at most ``SAMPLE`` sites (a
   seeded sample when there are more: never an O(n^2) distance matrix over
   100k sites), cut into at most ``MAX_CLUSTERS`` clusters; every site not in
   the sample goes to the nearest centroid (``scipy.cluster.vq.vq``).
2. Each cluster's prototype (the byte-weighted median of its members'
   features) is classified by the rules below: the cluster's pattern.
3. A site takes its cluster's pattern, unless its own features give
   another pattern clearly (margin >= ``OVERRIDE``): then its own, and the
   reason says it differs from its cluster.

Rules (numpy data; thresholds in plain units, from what the allocators are
for, not fitted to any program):

- long-lived: half the blocks alive at the end, or the median block lives
  a quarter of the run          -> system (leave alone)
- large-repeated: most bytes in blocks of 1 MiB and more, four blocks or
  more                          -> cache (size class from 1 MiB)
- fixed-size-churn: one size for 80% of blocks, at most 4 KiB, short-lived
                                -> slab (size class up to that size), but
  under 1 KiB numpy's own small-block cache does it already -> system
- lifo-scratch: 90% of frees release the newest live block of the site's
  thread, one thread, blocks at most 1 MiB -> stack (per function)
- scoped-temporaries: short-lived (median under 2% of the run or under a
  millisecond, and under a thousand allocations in between), blocks up
  to 16 MiB
                                -> cache (per function), not an arena:
  numpy frees every array on its own, so an arena's one free for all
  never happens, and since it reuses nothing until a whole chunk is free,
  a call walks through all the bytes it allocates; a cache hands back the
  block just freed, still in the CPU's caches.  Measured per function on
  scoped_temps.py's tiles (arrays of 2-512 KiB), against glibc with its
  trimming off: arena 1.032-1.085x the time, stack 1.007-1.075x, cache
  0.995-1.051x, the cache fastest at every size
  (``benchmarks/bench_scoped.py``).  Not for blocks all under 4 KiB: a
  function's cache starts at a page.
- irregular: anything else      -> system

4. Then the patterns that no cluster shares, since only a site's own trace
   shows them (who frees its blocks, how its pattern changes over the run,
   what its frees leave behind), checked on every numpy site in this
   order, each replacing what came before where it holds, the reason
   keeping the earlier one after "as a whole:":

- phase-changing: the site's blocks split by birth into four equal
  stretches of its time (``features.PHASE_PARTS``), each stretch of 64
  blocks or more judged by the rules above; consecutive stretches of one
  pgo allocator make a phase, of 256 blocks or more (a stretch left to the
  system neither makes nor splits one); two phases of different allocators
  or more, none coming back after another took over (that is noise at a
  rule's threshold)              -> adaptive (size class of its sizes,
  from 1 KiB): it switches among slab, arena, cache and system by its own
  counters, 64 requests or more at a time, so a phase of 256 blocks is
  four of its decisions.  Judged on one sampling level of the trace (the
  one most of the site's blocks have): a sampled stretch's order features
  are those of the addresses followed.
- cross-thread-frees: a site whose allocator would be one of pgo's
  one-mutex ones (slab, cache, stack, adaptive) with a quarter or more of
  its frees on another thread than the block's, blocks up to 256 KiB
                                -> hierarchical (size class of its sizes,
  from 1 KiB): per-thread caches take a free from any thread without a
  lock; measured at two threads each freeing the other's blocks, 137-153
  ns a pair (glibc's and the peers' cost) against 215 ns for the slab and
  the cache, which waited on their mutex tens of thousands of times.  On
  one thread it is as fast as glibc, no faster: a site left to the system
  stays there, threads or not.
- fragmenting-survivors: a site left to the system, blocks up to 16 KiB,
  holding on average half its peak live bytes or less from the peak to
  the end, a twentieth or more of the blocks live at the peak still live
  halfway from it to the end, under half of its frees LIFO or FIFO, and a
  MiB or more of difference between the peak and that average
                                -> compacting (size class of its sizes):
  pages where a few survivors keep glibc from giving anything back share
  physical pages once their live blocks do not overlap (Mesh).  It buys
  memory, not time, so it never replaces an allocator chosen for speed.

Python objects cannot move to a pgo allocator: their sites get a pattern
(for the GC plan and the suggestions; never one of the last three) and the
strategy ``system``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.cluster import hierarchy, vq  # type: ignore[import-untyped]

from pgo._sizes import SMALL_BLOCK_BYTES, MiB, fmt_bytes, fmt_seconds
from pgo.analysis.features import LARGE, NUMPY, PHASE_MIN_BLOCKS, PHASE_PARTS, PHASE_WINDOW, Site
from pgo.analysis.summary import LONG_LIVED_ALIVE_SHARE, LONG_LIVED_LIFE_SHARE
from pgo.config import COMPACTING_MAX_BYTES, HIERARCHICAL_MAX_BYTES, Pattern

NUMPY_SMALL_CACHE = 1024      # numpy's default handler caches blocks under this size
SHORT = 0.02                  # a short life: under 2% of the run, or ...
SHORT_S = 1e-3                # ... under a millisecond (whatever the run's length)
SAMPLE = 2000
MAX_CLUSTERS = 8
OVERRIDE = 0.5
SEED = 20261127

# Frees from another thread: a quarter of them is a real share, not a
# stray hand-off (a result passed on now and then); below it most calls
# come from one thread, and a one-mutex allocator takes its lock
# uncontended.  Sites whose allocator would be behind one mutex (pgo's
# slab, cache, stack and adaptive allocators: threadsafe=True behind
# numpy's handler) then go to the hierarchical one, whose per-thread caches
# take a free from any thread without a lock: measured on this 2-core VM
# with each thread freeing its neighbour's blocks, 137-153 ns a pair (as
# glibc and the LD_PRELOAD peers) where the slab and the cache took 215 ns
# and waited on their mutex tens of thousands of times.  Alone on one
# thread it is only as fast as glibc: a site left to the system stays there.
CROSS_THREAD_SHARE = 0.25
ONE_MUTEX = ("slab", "cache", "stack", "adaptive")
# Fragmentation: what the compacting allocator (Mesh's idea: spans whose
# live blocks do not overlap share one physical span) buys is memory, not
# time, so it only takes sites left to the system.  Its blocks are small
# (COMPACTING_MAX_BYTES: many blocks to a span); from its peak to the end
# the site holds half the peak or less on average (what glibc keeps
# resident beyond that, in pages a survivor holds, is the waste: at least
# as much as is live); a twentieth or more of the blocks live at the peak
# are still live halfway from it to the end (survivors enough to be
# scattered over the pages, not sitting in a few); the frees do not empty
# pages in order (a stack's or a queue's frees empty whole pages, at the
# heap's top or its bottom: under half of them LIFO or FIFO); and a MiB
# (256 pages) or more could go back.
FRAG_HELD_SHARE = 0.5
FRAG_SURVIVORS = 0.05
FRAG_ORDERED = 0.5
FRAG_MIN_BYTES = MiB

STRATEGY: dict[str, str] = {
    Pattern.LIFO_SCRATCH: "stack", Pattern.SCOPED_TEMPORARIES: "cache",
    Pattern.FIXED_SIZE_CHURN: "slab", Pattern.LARGE_REPEATED: "cache",
    Pattern.LONG_LIVED: "system", Pattern.IRREGULAR: "system",
    Pattern.CROSS_THREAD: "hierarchical", Pattern.PHASED: "adaptive",
    Pattern.FRAGMENTING: "compacting"}


@dataclass
class Decision:
    site: Site
    cluster: int
    pattern: str
    strategy: str
    confidence: float
    reason: str
    own_pattern: str = ""


@dataclass
class Cluster:
    index: int
    size: int
    bytes: float
    pattern: str
    prototype: dict[str, float] = field(default_factory=dict)


def rule(s: Site) -> tuple[str, float, str]:
    """(pattern, margin in 0..1, reason) from one site's own features."""
    life_share = s.life_median_s / s.run_s if s.run_s > 0 else 0.0
    n = f"{s.count:,.0f}"
    sizes = f"sizes {_size(s.min_size)}-{_size(s.max_size)}"
    if s.alive_end >= LONG_LIVED_ALIVE_SHARE or life_share >= LONG_LIVED_LIFE_SHARE:
        m = max(s.alive_end, min(1.0, life_share * 2))
        return (Pattern.LONG_LIVED, _clip(2 * m - 1 if m >= 0.5 else m),
                f"{s.alive_end:.0%} of {n} blocks alive at the end; median life "
                f"{_secs(s.life_median_s)} of a {_secs(s.run_s)} run")
    short = (life_share < SHORT or s.life_median_s < SHORT_S) and s.life_allocs_median < 1000
    short_m = (1.0 - min(1.0, life_share / SHORT, s.life_median_s / SHORT_S)) if short else 0.0
    if s.large_share >= 0.5 and s.count >= 4:
        return (Pattern.LARGE_REPEATED, _clip(min(1.0, 2 * (s.large_share - 0.5) + 0.5)),
                f"{s.large_share:.0%} of {_size(s.bytes)} in blocks of {_size(LARGE)}+ ({n} "
                f"blocks, {sizes}), each living {_secs(s.life_median_s)} (median)")
    if s.modal_share >= 0.8 and s.max_size <= SMALL_BLOCK_BYTES and short:
        return (Pattern.FIXED_SIZE_CHURN,
                _clip(min(short_m, (s.modal_share - 0.8) / 0.2 * 0.5 + 0.5)),
                f"{s.modal_share:.0%} of {n} blocks are {_size(s.modal_size)}; median life "
                f"{_secs(s.life_median_s)}")
    if s.lifo >= 0.9 and s.threads == 1 and s.max_size <= MiB and short:
        return (Pattern.LIFO_SCRATCH, _clip(min(short_m, (s.lifo - 0.9) / 0.1 * 0.5 + 0.5)),
                f"{s.lifo:.0%} of {n} frees release the newest block (LIFO); {sizes}")
    if short and s.max_size <= 16 * MiB:
        return (Pattern.SCOPED_TEMPORARIES, _clip(max(short_m, s.together)),
                f"{n} blocks ({sizes}) live {_secs(s.life_median_s)} (median, "
                f"{s.life_allocs_median:.0f} allocations in between); {s.together:.0%} freed "
                f"together as the function returns")
    return (Pattern.IRREGULAR, 0.3, f"{n} blocks, {sizes}, median life {_secs(s.life_median_s)}: "
                              f"no pattern a pgo allocator serves better")


def _clip(x: float) -> float:
    return float(min(1.0, max(0.05, x)))


def _size(n: float) -> str:
    return fmt_bytes(n, ".3g")


def _secs(s: float) -> str:
    return fmt_seconds(s, ".3g", ".3g")


def cluster(sites: list[Site]) -> tuple[np.ndarray, np.ndarray]:
    """Cluster labels (0..k-1) per site and the centroids (standardized)."""
    n = len(sites)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros((0, 0))
    X = np.array([s.vector() for s in sites], dtype=np.float64)
    mu = X.mean(axis=0)
    sd = X.std(axis=0)
    sd[sd == 0] = 1.0
    Z = (X - mu) / sd
    if n == 1:
        return np.zeros(1, np.int64), Z.copy()
    rng = np.random.default_rng(SEED)
    sample = np.sort(rng.choice(n, size=SAMPLE, replace=False)) if n > SAMPLE else np.arange(n)
    link = hierarchy.linkage(Z[sample], method="ward")
    k = min(MAX_CLUSTERS, len(sample))
    labels_s = hierarchy.fcluster(link, t=k, criterion="maxclust") - 1
    used = np.unique(labels_s)
    centroids = np.array([Z[sample][labels_s == c].mean(axis=0) for c in used])
    labels, _ = vq.vq(Z, centroids)
    return labels.astype(np.int64), centroids


def _prototype(members: list[Site]) -> Site:
    """The byte-weighted median of each feature, as a Site the rules read."""
    w = np.array([max(m.bytes, 1.0) for m in members])

    def med(values: list[float]) -> float:
        x = np.asarray(values, dtype=np.float64)
        order = np.argsort(x, kind="stable")
        cw = np.cumsum(w[order])
        return float(x[order][min(int(np.searchsorted(cw, 0.5 * cw[-1])), len(x) - 1)])

    first = members[0]
    return Site(domain=first.domain, site_id=-1, name="", function="",
                count=med([m.count for m in members]), bytes=float(w.sum()),
                mean_size=med([m.mean_size for m in members]),
                min_size=int(med([m.min_size for m in members])),
                max_size=int(med([m.max_size for m in members])),
                size_cv=med([m.size_cv for m in members]),
                modal_size=int(med([m.modal_size for m in members])),
                modal_share=med([m.modal_share for m in members]),
                life_median_s=med([m.life_median_s for m in members]),
                life_p90_s=med([m.life_p90_s for m in members]),
                life_allocs_median=med([m.life_allocs_median for m in members]),
                alive_end=med([m.alive_end for m in members]),
                lifo=med([m.lifo for m in members]), together=med([m.together for m in members]),
                threads=int(med([m.threads for m in members])),
                cpu_share=med([m.cpu_share for m in members]),
                gc_survival=med([m.gc_survival for m in members]), run_s=first.run_s,
                large_share=med([m.large_share for m in members]))


def classify(sites: list[Site]) -> tuple[list[Decision], list[Cluster]]:
    """Every site's decision, and the clusters (per domain: numpy data and
    Python objects never share a cluster)."""
    decisions: list[Decision] = []
    clusters: list[Cluster] = []
    for domain in sorted({s.domain for s in sites}):
        group = [s for s in sites if s.domain == domain]
        labels, _ = cluster(group)
        base = len(clusters)
        for c in sorted(set(labels.tolist())):
            members = [s for s, lab in zip(group, labels.tolist()) if lab == c]
            proto = _prototype(members)
            pattern, _, _ = rule(proto)
            clusters.append(Cluster(index=base + c, size=len(members), bytes=proto.bytes,
                                    pattern=pattern, prototype={
                                        "mean_size": proto.mean_size,
                                        "life_median_s": proto.life_median_s,
                                        "alive_end": proto.alive_end,
                                        "modal_share": proto.modal_share,
                                        "lifo": proto.lifo, "together": proto.together,
                                        "large_share": proto.large_share}))
        by_index = {c.index: c for c in clusters}
        for s, lab in zip(group, labels.tolist()):
            cl = by_index[base + lab]
            own, margin, why = rule(s)
            if own == cl.pattern:
                pattern, conf, reason = own, _clip(0.5 + 0.5 * margin), why
            elif margin >= OVERRIDE:
                pattern, conf = own, _clip(0.4 + 0.4 * margin)
                reason = f"{why} (unlike the rest of cluster {cl.index}: {cl.pattern})"
            else:
                pattern, conf = cl.pattern, _clip(0.3 + 0.3 * (1 - margin))
                reason = (f"like the rest of cluster {cl.index} ({cl.pattern}); its own numbers "
                          f"lean {own}: {why}")
            strategy, note = numpy_strategy(pattern, s) if domain == NUMPY else ("system", "")
            reason += note
            if domain == NUMPY:
                pattern, strategy, conf, reason, own = _site_facts(s, pattern, strategy, conf,
                                                                   reason, own)
            decisions.append(Decision(site=s, cluster=cl.index, pattern=pattern,
                                      strategy=strategy, confidence=round(conf, 2),
                                      reason=reason, own_pattern=own))
    return decisions, clusters


def numpy_strategy(pattern: str, s: Site) -> tuple[str, str]:
    """The strategy of a numpy site of this pattern, and what to add to
    its reason when its block sizes overrule the pattern's strategy."""
    strategy = STRATEGY[pattern]
    if strategy in ("slab", "cache", "stack") and s.max_size < NUMPY_SMALL_CACHE:
        # numpy's default handler keeps freed blocks under 1 KiB
        # per size already: any allocator behind a handler only adds
        # a lock and a routing step (a slab measured 0.87x and an
        # arena for a whole function 0.81x on small_arrays.py).
        return "system", "; numpy's own small-block cache already serves blocks under 1 KiB"
    if strategy == "cache" and pattern != Pattern.LARGE_REPEATED \
            and s.max_size < SMALL_BLOCK_BYTES:
        # A function's cache starts at a 4 KiB page; smaller blocks
        # made while it runs keep the handler's small-block cache,
        # so a rule would only cost the switch on every call.
        return "system", "; blocks under 4 KiB: a function's cache starts at a page"
    return strategy, ""


def _site_facts(s: Site, pattern: str, strategy: str, conf: float, reason: str, own: str
                ) -> tuple[str, str, float, str, str]:
    """The patterns only a site's own trace shows (no cluster shares them):
    phases, then frees on another thread, then fragmentation; each
    replaces the (pattern, strategy, confidence, reason, own pattern) it
    is given where its rule holds."""
    for check in (phased, cross_thread, fragmenting):
        found = check(s, pattern, strategy)
        if found is not None:
            pattern, margin, why = found
            strategy, conf, own = STRATEGY[pattern], _clip(0.5 + 0.5 * margin), pattern
            reason = f"{why}; as a whole: {reason}"
    return pattern, strategy, conf, reason, own


Phase = list[tuple[Site, str, str, float, str]]    # its parts: (part, pattern, strategy,
                                                   # margin, reason)


def phases(s: Site) -> list[Phase]:
    """The site's phases, in time order: its parts (``Site.phases``: its
    blocks by stretch of its time) of PHASE_WINDOW blocks or more, each
    judged by ``rule``, consecutive parts of one pgo allocator making one
    phase, which counts from PHASE_MIN_BLOCKS blocks.  Parts left to the
    system neither make a phase nor split one."""
    runs: list[Phase] = []
    for p in s.phases:
        if p.count < PHASE_WINDOW:
            continue
        pat, margin, why = rule(p)
        strat, _ = numpy_strategy(pat, p)
        if strat == "system":
            continue
        if runs and runs[-1][-1][2] == strat:
            runs[-1].append((p, pat, strat, margin, why))
        else:
            runs.append([(p, pat, strat, margin, why)])
    return [r for r in runs if sum(j[0].count for j in r) >= PHASE_MIN_BLOCKS]


def phased(s: Site, pattern: str = "", strategy: str = "") -> tuple[str, float, str] | None:
    """PHASED when the site's ``phases`` get two pgo allocators or more,
    none coming back after another one took over (that is the noise of a
    site near a rule's threshold, not a phase)."""
    if not s.phases:
        return None
    found = phases(s)
    seq = [r[0][2] for r in found]
    kinds = list(dict.fromkeys(seq))
    changes = sum(a != b for a, b in zip(seq, seq[1:]))
    if len(kinds) < 2 or changes != len(kinds) - 1:
        return None
    parts = "; ".join(
        f"part{'s' if len(r) > 1 else ''} {', '.join(str(j[0].part) for j in r)}: {r[0][1]} -> "
        f"{r[0][2]} ({sum(j[0].count for j in r):,.0f} blocks)" for r in found)
    first, last = found[0][0], found[-1][-1]
    return (Pattern.PHASED, min(j[3] for r in found for j in r),
            f"its pattern changes over the run (its time in {PHASE_PARTS} parts: {parts}); "
            f"first {first[1]}: {first[4]}; last {last[1]}: {last[4]}")


def cross_thread(s: Site, pattern: str, strategy: str) -> tuple[str, float, str] | None:
    """CROSS_THREAD for a site that would get a one-mutex pgo allocator
    while CROSS_THREAD_SHARE of its frees come from another thread than the
    block's, its blocks small enough for the hierarchical allocator."""
    if strategy not in ONE_MUTEX or s.cross_thread < CROSS_THREAD_SHARE \
            or s.max_size > HIERARCHICAL_MAX_BYTES:
        return None
    margin = 0.5 + 0.5 * (s.cross_thread - CROSS_THREAD_SHARE) / (1 - CROSS_THREAD_SHARE)
    return (Pattern.CROSS_THREAD, margin,
            f"{s.cross_thread:.0%} of its frees on another thread than the block's (made on "
            f"{s.threads} thread(s), freed on {s.free_threads}), blocks "
            f"{_size(s.min_size)}-{_size(s.max_size)}: a {strategy} would have both threads "
            f"wait on its one mutex")


def fragmenting(s: Site, pattern: str, strategy: str) -> tuple[str, float, str] | None:
    """FRAGMENTING for a site left to the system whose small blocks go in
    no order while a share of them lives on: from its peak to the end it
    holds FRAG_HELD_SHARE of the peak or less on average, FRAG_SURVIVORS of
    the blocks live at the peak or more are still live halfway from it to
    the end, under FRAG_ORDERED of its frees are LIFO or FIFO, and
    FRAG_MIN_BYTES or more could go back."""
    if strategy != "system" or s.max_size > COMPACTING_MAX_BYTES or s.peak_live_bytes <= 0:
        return None
    held = s.after_peak_live_bytes / s.peak_live_bytes
    ordered = max(s.lifo, s.fifo)
    if s.peak_survivors < FRAG_SURVIVORS or held > FRAG_HELD_SHARE or ordered >= FRAG_ORDERED \
            or s.peak_live_bytes - s.after_peak_live_bytes < FRAG_MIN_BYTES:
        return None
    margin = min(1.0 - held / FRAG_HELD_SHARE * 0.5, 1.0 - ordered / FRAG_ORDERED * 0.5)
    return (Pattern.FRAGMENTING, margin,
            f"{s.count:,.0f} blocks of {_size(s.min_size)}-{_size(s.max_size)}: "
            f"{_size(s.peak_live_bytes)} live at the peak, {_size(s.after_peak_live_bytes)} "
            f"({held:.0%}) on average from there to the end ({_size(s.end_live_bytes)} at the "
            f"end), in the {s.peak_survivors:.0%} of the peak's blocks that outlive it (still "
            f"live halfway to the end); the others went in no order ({s.lifo:.0%} LIFO, "
            f"{s.fifo:.0%} FIFO), leaving holes in the pages the survivors keep")
