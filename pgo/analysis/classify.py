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

Python objects cannot move to a pgo allocator: their sites get a pattern
(for the GC plan and the suggestions) and the strategy ``system``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.cluster import hierarchy, vq  # type: ignore[import-untyped]

from pgo._sizes import MiB, SMALL_BLOCK_BYTES, fmt_bytes, fmt_seconds
from pgo.analysis.features import LARGE, NUMPY, Site
from pgo.analysis.summary import LONG_LIVED_ALIVE_SHARE, LONG_LIVED_LIFE_SHARE
from pgo.config import Pattern

NUMPY_SMALL_CACHE = 1024      # numpy's default handler caches blocks under this size
SHORT = 0.02                  # a short life: under 2% of the run, or ...
SHORT_S = 1e-3                # ... under a millisecond (whatever the run's length)
SAMPLE = 2000
MAX_CLUSTERS = 8
OVERRIDE = 0.5
SEED = 20261127

STRATEGY: dict[str, str] = {
    Pattern.LIFO_SCRATCH: "stack", Pattern.SCOPED_TEMPORARIES: "cache",
    Pattern.FIXED_SIZE_CHURN: "slab", Pattern.LARGE_REPEATED: "cache",
    Pattern.LONG_LIVED: "system", Pattern.IRREGULAR: "system"}


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
                f"{s.large_share:.0%} of {_size(s.bytes)} in blocks of {_size(LARGE)}+ ({n} blocks, "
                f"{sizes}), each living {_secs(s.life_median_s)} (median)")
    if s.modal_share >= 0.8 and s.max_size <= SMALL_BLOCK_BYTES and short:
        return (Pattern.FIXED_SIZE_CHURN, _clip(min(short_m, (s.modal_share - 0.8) / 0.2 * 0.5 + 0.5)),
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
            strategy = STRATEGY[pattern] if domain == NUMPY else "system"
            if strategy in ("slab", "cache", "stack") and s.max_size < NUMPY_SMALL_CACHE:
                # numpy's default handler keeps freed blocks under 1 KiB
                # per size already: any allocator behind a handler only adds
                # a lock and a routing step (a slab measured 0.87x and an
                # arena for a whole function 0.81x on small_arrays.py).
                strategy = "system"
                reason += "; numpy's own small-block cache already serves blocks under 1 KiB"
            elif strategy == "cache" and pattern != Pattern.LARGE_REPEATED \
                    and s.max_size < SMALL_BLOCK_BYTES:
                # A function's cache starts at a 4 KiB page; smaller blocks
                # made while it runs keep the handler's small-block cache,
                # so a rule would only cost the switch on every call.
                strategy = "system"
                reason += "; blocks under 4 KiB: a function's cache starts at a page"
            decisions.append(Decision(site=s, cluster=cl.index, pattern=pattern,
                                      strategy=strategy, confidence=round(conf, 2),
                                      reason=reason, own_pattern=own))
    return decisions, clusters
