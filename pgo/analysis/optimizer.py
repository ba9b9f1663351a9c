"""``ProfileGuidedOptimizer``: a bundle in, a plan out (the decisions, the
clusters, the GC plan, code suggestions, and the config that ``pgo run``
applies).  Pure: no process, no handler, no printing.

From decisions to config:
Only sites that matter make rules: 1% of numpy's bytes, and for a slab,
a per-function rule or one of the three size classes for the patterns of
a site's own trace a thousand blocks.
- ``cache`` sites of large repeated blocks: one numpy size class from
  1 MiB up to a CacheAllocator (it keeps freed blocks mapped: no page
  faults on reuse), bounded by a headroom over its own peak rather than
  by a size from the profile, so larger arrays on a larger input are
  served as well and the peak footprint grows by at most 10%;
  unless glibc already keeps those blocks in its heap: under its largest
  dynamic mmap threshold (32 MiB) even at 4x the input, and so few of the
  freed ones alive at once that they stay under its trim threshold (twice
  the largest freed) with its top pad, so it never gives their pages back
  to fault them in again (``glibc_keeps``); there a cache would only add
  RSS (feature_store in benchmarks/corpus: 5% slower and +11-18% RSS with
  one);
- ``slab`` sites: one size class from 1 byte to the largest such block
  (rounded up to 16, at most 4 KiB) to a SlabAllocator of that block size;
- ``hierarchical``, ``compacting`` and ``adaptive`` sites: one size class
  each, from the smallest of their blocks (not under 1 KiB but for
  compacting: numpy's own cache serves those) to the largest (rounded up
  to 16), an adaptive allocator's window an eighth of its shortest phase;
  size classes may not overlap, so each takes the widest range of its
  sizes that the classes above and those before it (in that order) left
  free, or is left out;
- ``cache`` sites of scoped temporaries, ``arena`` and ``stack`` sites: one
  ``[[site]]`` rule per function (the strategy with most bytes there
  wins), so allocations made while that function runs go to the
  allocator: only its calls pay for the switch, and blocks that outlive
  them are few (a process-wide cache would map every long-lived block of
  that size on its own);
- ``system``: nothing.
Everything sorted, and nothing from the clock: the same bundle gives the
same file, byte for byte.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from pgo import bundle as fmt
from pgo._sizes import SMALL_BLOCK_BYTES, MiB, fmt_bytes
from pgo._version import __version__
from pgo.analysis import cachesim, features, gcplan
from pgo.analysis import classify as cls
from pgo.analysis.lifetimes import Blocks
from pgo.analysis.summary import wquantile
from pgo.config import (
    COMPACTING_MAX_BYTES,
    HIERARCHICAL_MAX_BYTES,
    Config,
    Pattern,
    SiteRule,
    SizeClassRule,
)


@dataclass
class Plan:
    config: Config
    decisions: list[cls.Decision]
    clusters: list[cls.Cluster]
    suggestions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    failed_runs: list[str] = field(default_factory=list)   # the profiled runs that failed
    left_out: list[str] = field(default_factory=list)      # rules weighed and not written, why

    def bytes_by_strategy(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for d in self.decisions:
            key = f"{d.site.domain}:{d.strategy}"
            out[key] = out.get(key, 0.0) + d.site.bytes
        return out


class ProfileGuidedOptimizer:
    """``ProfileGuidedOptimizer(bundle_or_path).analyze()`` -> Plan."""

    def __init__(self, bundle: fmt.Bundle | str | os.PathLike[str]) -> None:
        self.bundle = bundle if isinstance(bundle, fmt.Bundle) else fmt.load(bundle)

    def analyze(self) -> Plan:
        b = self.bundle
        collected = features.collect(b)          # the traces, paired once
        sites = features.extract(b, collected)
        decisions, clusters = cls.classify(sites)
        m = b.manifest
        target = m.get("target") or {}
        classes, left_out = _size_classes(decisions, collected)
        cfg = Config(
            profile=str(b.path), profile_started_at=str(m.get("started_at", "")),
            pgo=__version__, python=str(m.get("python", "")), numpy=str(m.get("numpy") or ""),
            program=str(target.get("program", "")),
            program_sha256=str(target.get("program_sha256", "")),
            gc=gcplan.plan(b, collected), size_classes=classes,
            sites=_site_rules(decisions, collected))
        warnings, failed = run_warnings(b)
        return Plan(config=cfg, decisions=decisions, clusters=clusters,
                    suggestions=suggestions(sites), warnings=list(b.warnings) + warnings,
                    failed_runs=failed, left_out=left_out)


# A profile shorter than this is start-up more than work: its numbers say
# little about the real run.
MIN_RUN_S = 0.1


def run_warnings(b: fmt.Bundle) -> tuple[list[str], list[str]]:
    """(warnings, failures) from how the profiled run(s) ended: a run
    stopped by ^C or SIGTERM is a sample of the real one (a warning); one
    that failed (another exit code, a crash) did not do its work, and a
    config made from it describes something else."""
    warnings, failed = [], []
    for r in b.runs or [b]:
        duration = float(r.manifest.get("duration_s") or 0.0)
        if 0 < duration < MIN_RUN_S:
            warnings.append(f"{r.path}: the profiled run lasted {duration * 1e3:.0f} ms, too short "
                            f"to judge a program by: profile a run that does its real work")
        outcome, text = fmt.run_outcome(r.manifest)
        if outcome == "interrupted":
            warnings.append(f"{r.path}: the profiled run was stopped ({text}): the config "
                            f"describes the part that ran")
        elif outcome == "failed":
            failed.append(f"{r.path}: the profiled run failed ({text})")
    return warnings, failed


def _weighted_conf(ds: list[cls.Decision]) -> float:
    total = sum(d.site.bytes for d in ds) or 1.0
    return round(sum(d.confidence * d.site.bytes for d in ds) / total, 2)


def _next_pow2(n: float) -> int:
    p = 1
    while p < n:
        p <<= 1
    return p


# A rule must matter: its sites hold at least this share of numpy's bytes
# (and a slab or a per-function rule at least this many blocks), or it is left out.
MIN_BYTES_SHARE = 0.01
MIN_BLOCKS = 1000


def _material(decisions: list[cls.Decision]) -> list[cls.Decision]:
    numpy = [d for d in decisions if d.site.domain == features.NUMPY]
    total = sum(d.site.bytes for d in numpy) or 1.0
    return [d for d in numpy if d.site.bytes >= MIN_BYTES_SHARE * total]


def _replayed_headroom(collected: features.Collected, keep: np.ndarray,
                       max_cached: int) -> tuple[int, int, str]:
    """The headroom of a cache (of ``max_cached`` bytes at most) serving
    the numpy blocks ``keep`` selects, from replaying them (``cachesim``),
    and what it costs, in words."""
    traced = collected[0].get(features.NUMPY)
    if traced is None or not keep.any():
        return CACHE_HEADROOM_PERCENT, 0, ""
    bl = traced.blocks
    # Each run's first block, counted among the kept ones.
    firsts = np.array([int(keep[:s].sum()) for s in traced.run_starts], np.int64)
    chosen, free = cachesim.choose(bl.size[keep], bl.birth_ev[keep], bl.death_ev[keep],
                                   run_starts=firsts, max_cached=max_cached)
    window = (f", a block unused for {chosen.window:,} allocations goes back"
              if chosen.window else "")
    what = (f"headroom {chosen.headroom}%{window} (replayed: {chosen.hit_rate:.0%} of "
            f"{chosen.allocations:,} blocks reused, {free.hit_rate:.0%} with no bound; what it "
            f"serves peaks {chosen.extra_share:.0%} over its live peak, "
            f"+{fmt_bytes(chosen.peak_held - chosen.peak_live)} of RSS at the profiled size)")
    return int(chosen.headroom or CACHE_HEADROOM_PERCENT), chosen.window, what


# glibc's malloc, as Debian's 2.36 and every 64-bit glibc since 2.x ship it:
# a block from 128 KiB is mmapped on its own, and freeing one raises that
# threshold to its size, up to DEFAULT_MMAP_THRESHOLD_MAX; past the
# threshold, blocks come from the heap, whose top goes back to the system
# only when the trim threshold (twice the mmap threshold) is free there,
# its top pad included.  Measured here (glibc 2.36): a step freeing 2 + 2 +
# 4 MiB faults 1,505 pages each time; after a one-off 16 MiB block was
# freed (thresholds 16/32 MiB), none.
GLIBC_MMAP_MAX = 32 * MiB
GLIBC_TOP_PAD = 128 * 1024       # DEFAULT_TOP_PAD: kept free at the top, counted in the trim
# A larger input than the profiled one: its blocks may be this much larger.
INPUT_GROWTH = 4


def glibc_keeps(traced: features.Traced) -> str:
    """Why glibc already keeps the profile's large numpy blocks in its heap
    (no fault when one is reused), or "" when it may give them back: a
    block it maps on its own (32 MiB and up, or 90% of the blocks' sizes
    within INPUT_GROWTH of that), or so many of the freed ones alive at
    once that, freed, they reach its trim threshold (twice the largest
    freed one) with the top pad it keeps.  Each run of a merged bundle is
    its own process, judged alone; all of them must keep the blocks."""
    bl = traced.blocks
    ends = [*traced.run_starts[1:], len(bl)]
    why = ""
    for a, b in zip(traced.run_starts, ends):
        why = _glibc_keeps_run(bl, np.arange(int(a), int(b)))
        if not why:
            return ""
    return why


def _glibc_keeps_run(bl: Blocks, rows: np.ndarray) -> str:
    k = rows[bl.size[rows] >= features.LARGE]
    freed = k[bl.death_ev[k] >= 0]
    if len(freed) == 0:
        # Nothing freed in this run: nothing to tell of glibc's reuse.
        return ""
    size = bl.size[k].astype(np.float64)
    largest = float(bl.size[freed].max())
    typical = wquantile(size, bl.weight[k], 0.9)
    if largest >= GLIBC_MMAP_MAX or typical * INPUT_GROWTH >= GLIBC_MMAP_MAX:
        return ""
    trim = 2 * largest
    # Most bytes of the freed ones alive at once (a free before a birth at
    # the same event): what their frees can leave free at the heap's top.
    # Blocks kept to the end came before them, below them in the heap.
    at = np.concatenate([bl.birth_ev[freed], bl.death_ev[freed]])
    w = bl.size[freed].astype(np.float64) * bl.weight[freed]
    delta = np.concatenate([w, -w])
    live = float(np.cumsum(delta[np.lexsort((delta, at))]).max())
    if live + GLIBC_TOP_PAD >= trim:
        return ""
    return (f"glibc keeps them in its heap (9 in 10 of {fmt_bytes(typical)} or less: under its "
            f"{fmt_bytes(GLIBC_MMAP_MAX)} mmap ceiling even at {INPUT_GROWTH}x the input; at most "
            f"{fmt_bytes(live)} of them alive at once, under its trim threshold of "
            f"{fmt_bytes(trim)} with its {fmt_bytes(GLIBC_TOP_PAD)} top pad, so it never gives "
            f"their pages back)")


def _size_classes(decisions: list[cls.Decision], collected: features.Collected
                  ) -> tuple[tuple[SizeClassRule, ...], list[str]]:
    """(the size-class rules, the rules weighed and left out with why)."""
    out = []
    left_out: list[str] = []
    numpy = _material(decisions)
    slab = [d for d in numpy if d.strategy == "slab"]
    if slab and sum(d.site.count for d in slab) >= MIN_BLOCKS:
        hi = min(SMALL_BLOCK_BYTES, (max(d.site.max_size for d in slab) + 15) // 16 * 16)
        top = max(slab, key=lambda d: (d.site.bytes, d.site.name))
        out.append(SizeClassRule(
            1, hi, "slab", (("block_size", hi),), pattern=Pattern.FIXED_SIZE_CHURN,
            confidence=_weighted_conf(slab),
            reason=(f"{len(slab)} site(s), {sum(d.site.count for d in slab):,.0f} blocks of at "
                    f"most {hi} B; largest: {top.site.name}: {top.reason}")))
    cache = [d for d in numpy if d.strategy == "cache" and d.pattern == Pattern.LARGE_REPEATED]
    traced = collected[0].get(features.NUMPY)
    kept = glibc_keeps(traced) if cache and traced is not None else None
    if kept:
        left_out.append(f"no numpy cache for the {len(cache)} site(s) of large repeated "
                        f"blocks: {kept}; a cache would only add RSS")
        cache = []
    if cache:
        biggest = max(d.site.max_size for d in cache)
        top = max(cache, key=lambda d: (d.site.bytes, d.site.name))
        # The class serves every numpy block from 1 MiB, not only these sites'.
        keep = (traced.blocks.size >= features.LARGE) if traced is not None else np.zeros(0, bool)
        headroom, window, cost = _replayed_headroom(collected, keep, CACHE_SAFETY_BYTES)
        out.append(SizeClassRule(
            features.LARGE, None, "cache", cache_settings(CACHE_SAFETY_BYTES, headroom, window),
            pattern=Pattern.LARGE_REPEATED, confidence=_weighted_conf(cache),
            reason=(f"{len(cache)} site(s), {sum(d.site.bytes for d in cache) / MiB:,.0f} MiB "
                    f"in blocks up to {biggest / MiB:.1f} MiB; largest: {top.site.name}: "
                    f"{top.reason}" + (f"; {cost}" if cost else ""))))
    out += _new_classes(numpy, out, left_out)
    return tuple(sorted(out, key=lambda r: r.min_bytes)), left_out


# The size classes of the allocators for patterns only a site's own trace
# shows: (strategy, pattern, smallest block served, largest), in the order
# they are placed.  The first two fix one thing a site's blocks suffer from
# (a contended mutex, pages held by a few survivors); the adaptive
# allocator, which switches by its own counters, takes the sizes they
# leave.  Under 1 KiB numpy's own small-block cache serves a thread's
# blocks (and a class there would cost every small array of the process a
# routing step); compacting is for memory and takes the small blocks too.
_NEW_CLASSES = (("hierarchical", Pattern.CROSS_THREAD, cls.NUMPY_SMALL_CACHE,
                 HIERARCHICAL_MAX_BYTES),
                ("compacting", Pattern.FRAGMENTING, 1, COMPACTING_MAX_BYTES),
                ("adaptive", Pattern.PHASED, cls.NUMPY_SMALL_CACHE, None))


def _new_classes(numpy: list[cls.Decision], placed: list[SizeClassRule],
                 left_out: list[str]) -> list[SizeClassRule]:
    """One size class per allocator of ``_NEW_CLASSES`` that material
    sites chose (MIN_BLOCKS blocks among them), from their smallest block
    to their largest (rounded up to 16 bytes).  Size classes may not
    overlap: those already ``placed`` keep their sizes, and each new one
    takes the widest (by ratio) range of its sizes that the classes before
    it left free; one with none left is left out, with why."""
    out: list[SizeClassRule] = []
    for strategy, pattern, floor, cap in _NEW_CLASSES:
        ds = [d for d in numpy if d.strategy == strategy]
        blocks = sum(d.site.count for d in ds)
        if not ds or blocks < MIN_BLOCKS:
            continue
        lo = max(floor, min(d.site.min_size for d in ds))
        hi = (max(d.site.max_size for d in ds) + 15) // 16 * 16
        hi = min(hi, cap) if cap is not None else hi
        top = max(ds, key=lambda d: (d.site.bytes, d.site.name))
        taken = sorted((r.min_bytes, r.max_bytes, r.allocator) for r in placed + out
                       if r.min_bytes <= hi and (r.max_bytes is None or r.max_bytes >= lo))
        others = ", ".join(f"the {a} class, {_size(x)}-{_size(y) if y is not None else 'up'}"
                           for x, y, a in taken)
        free, start = [], lo
        for x, y, _ in taken:
            if x > start:
                free.append((start, x - 1))
            start = max(start, hi + 1 if y is None else y + 1)
        if start <= hi:
            free.append((start, hi))
        if not free:
            left_out.append(f"no {strategy} class for the {len(ds)} site(s) of {pattern} "
                            f"(largest: {top.site.name}): all their sizes ({_size(lo)}-"
                            f"{_size(hi)}) have a class already: {others}")
            continue
        a, b = max(free, key=lambda r: ((r[1] + 1) / max(r[0], 1), -r[0]))
        cut = f" (of {_size(lo)}-{_size(hi)}; the rest: {others})" if taken else ""
        out.append(SizeClassRule(
            a, b, strategy, _new_settings(strategy, ds), pattern=pattern,
            confidence=_weighted_conf(ds),
            reason=(f"{len(ds)} site(s), {blocks:,.0f} blocks, sizes {_size(a)}-{_size(b)}{cut}; "
                    f"largest: {top.site.name}: {top.reason}")))
    return out


def _new_settings(strategy: str, ds: list[cls.Decision]) -> tuple[tuple[str, int], ...]:
    """An adaptive allocator's window: an eighth of the shortest phase's
    blocks, a power of two from 64 requests (its least) to 4096 (its
    default).  It switches once two windows in a row vote for the same
    backend, so a phase of eight windows is served in its own mode for six
    of them (a phase of PHASE_MIN_BLOCKS, four windows of 64, for two).
    The other two keep their allocators' defaults (no bound but their
    address range; compaction when resident bytes pass 150% of the live)."""
    if strategy != "adaptive":
        return ()
    shortest = min((sum(j[0].count for j in r) for d in ds for r in cls.phases(d.site)),
                   default=float(features.PHASE_MIN_BLOCKS))
    window = 64
    while window * 2 <= min(4096.0, shortest / 8):
        window *= 2
    return (("window", window),)


def _size(n: float) -> str:
    return fmt_bytes(n, ".3g")


def _site_rules(decisions: list[cls.Decision],
                collected: features.Collected) -> tuple[SiteRule, ...]:
    by_fn: dict[str, list[cls.Decision]] = {}
    for d in _material(decisions):
        scoped = d.strategy == "cache" and d.pattern != Pattern.LARGE_REPEATED
        if (scoped or d.strategy in ("arena", "stack")) and d.site.function:
            by_fn.setdefault(d.site.function, []).append(d)
    rules = []
    for fn in sorted(by_fn):
        ds = by_fn[fn]
        if sum(d.site.count for d in ds) < MIN_BLOCKS:
            continue
        weight: dict[str, float] = {}
        for d in ds:
            weight[d.strategy] = weight.get(d.strategy, 0.0) + d.site.bytes
        strategy = max(sorted(weight), key=lambda k: weight[k])
        mine = [d for d in ds if d.strategy == strategy]
        biggest = max(d.site.max_size for d in mine)
        top = max(mine, key=lambda d: (d.site.bytes, d.site.name))
        cost = ""
        headroom, window = CACHE_HEADROOM_PERCENT, 0
        if strategy == "cache":
            traced = collected[0].get(features.NUMPY)
            if traced is not None:
                ids = np.array(sorted({d.site.site_id for d in mine}), np.int64)
                keep = (np.isin(traced.blocks.site, ids)
                        & (traced.blocks.size > SMALL_BLOCK_BYTES))
                cap = dict(site_settings(strategy, biggest))["max_cached_bytes"]
                headroom, window, cost = _replayed_headroom(collected, keep, cap)
        settings = site_settings(strategy, biggest, headroom, window)
        lines = ", ".join(sorted(d.site.name.rsplit(":", 1)[-1] for d in mine))
        rules.append(SiteRule(
            function=fn, allocator=strategy, settings=settings, pattern=top.pattern,
            confidence=_weighted_conf(mine),
            reason=f"lines {lines}: {top.reason}" + (f"; {cost}" if cost else "")))
    return tuple(rules)


# What a cache may add to the peak footprint of the blocks it serves, in
# percent of that peak (CacheAllocator's headroom_percent): the bound that
# follows the run's own sizes, where a size from the profile would not (a
# run 3x bigger makes arrays 3x bigger).  The headroom comes from replaying
# the profile's blocks (cachesim); this is the one where there is nothing
# to replay.  With it the process-wide cache needs no size from the
# profile: max_cached_bytes is only a safety net.
CACHE_HEADROOM_PERCENT = 10
CACHE_SAFETY_BYTES = 4 << 30


def cache_settings(max_cached_bytes: int, headroom: int = CACHE_HEADROOM_PERCENT,
                   window: int = 0) -> tuple[tuple[str, int], ...]:
    out = (("headroom_percent", headroom), ("max_cached_bytes", max_cached_bytes))
    return (*out, ("reuse_window", window)) if window else out


def site_settings(strategy: str, biggest: float, headroom: int = CACHE_HEADROOM_PERCENT,
                  window: int = 0) -> tuple[tuple[str, int], ...]:
    """A ``[[site]]`` allocator's settings from the largest block it serves
    (and, for a cache, its headroom)."""
    if strategy == "cache":
        # Room for a few calls' worth of freed blocks: a call's temporaries
        # come back from the cache, never from the system.
        return cache_settings(int(min(256 * MiB, max(8 * MiB, _next_pow2(biggest * 16)))),
                              headroom, window)
    if strategy == "arena":
        return (("chunk_size", int(min(64 * MiB, max(MiB, _next_pow2(biggest * 4))))),)
    return (("capacity", int(min(256 * MiB, max(MiB, _next_pow2(biggest * 16))))),)


def suggestions(sites: list[features.Site]) -> list[str]:
    """Changes to the code that no allocator config can make."""
    out = []
    for s in sorted(sites, key=lambda s: (-s.bytes, s.name)):
        lives = s.alive_end >= 0.5 or (s.run_s > 0 and s.life_median_s >= 0.1 * s.run_s)
        if s.domain == features.OBJECTS and s.count >= 500_000 and s.mean_size <= 1024 and lives:
            out.append(f"{s.name}: {s.count:,.0f} Python objects ({s.bytes / MiB:,.0f} MiB, "
                       f"{s.mean_size:.0f} B each): if they are instances of a class, __slots__ "
                       f"drops the per-instance dict; if they are records, a numpy structured "
                       f"array or pgo.Vector/pgo.IntMap holds them without per-object headers")
        if s.count >= 50 and s.size_trend >= 0.9 and s.max_size >= 8 * s.min_size \
                and s.life_allocs_median <= 2 and s.alive_end < 0.5 and s.realloc_share < 0.5:
            fix = ("collect the parts in a list and np.concatenate once, or append to a "
                   "pgo.Vector" if s.domain == features.NUMPY else
                   "use io.BytesIO / io.StringIO, a list and ''.join, or pgo.StringBuilder")
            out.append(f"{s.name}: a buffer rebuilt by repeated concatenation ({s.count:,.0f} "
                       f"copies growing from {s.min_size:,} to {s.max_size:,} B, each replaced "
                       f"by the next): {fix}")
    return out
