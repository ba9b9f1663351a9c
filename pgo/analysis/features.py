"""Per-site features from a profile bundle: the numbers a memory expert
looks at before choosing an allocator.

A site is (domain, site id): numpy data from the event trace (every
allocation), Python objects from the sampled trace (weighted).  For each:

- count, bytes (weighted), mean size, coefficient of variation of the
  size, share of the modal size;
- lifetime: median and p90 in seconds, median in allocations in between
  (births in the same trace between a block's birth and death), share
  alive at the end;
- LIFO ratio: of the site's frees, those that released the most recently
  born live block of that site on that thread (a stack discipline);
- freed-together ratio: of the site's frees, those next to another free
  of a block from the same function with no allocation in between (the
  burst when a function returns and its temporaries die);
- threads; CPU share of the site's function (py-spy samples with it on
  the stack); share of blocks that lived through a full (gen 2) collection;
- cross-thread share: of the site's frees, those made on another thread
  than the one that made the block (and how many threads freed them);
- FIFO ratio: of the site's frees, those that released its oldest block
  still to be freed (a queue discipline);
- live bytes over time (each run of a merged bundle on its own, then
  summed): the peak, the time-average from the peak to the end, at the
  end; and of the blocks live at the peak, the share still live halfway
  from it to the end: what the site's frees leave behind;
- phases (numpy sites of ``2 * PHASE_MIN_BLOCKS`` blocks or more): the
  same features for each of ``PHASE_PARTS`` equal stretches of the time
  over which the site allocates, its blocks split by birth.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from pgo.analysis.lifetimes import Blocks, pair
from pgo.bundle import Bundle

NUMPY = "numpy"
OBJECTS = "objects"

FEATURES = ("log_mean_size", "size_cv", "modal_share", "log_life_median", "life_share",
            "log_life_allocs", "lifo", "together", "alive_end", "log_count")


@dataclass(slots=True)          # 100k sites: no dict each (over 30 fields, none shared)
class Site:
    domain: str
    site_id: int
    name: str                  # module:qualname:line
    function: str              # module:qualname ("" when unknown)
    count: float
    bytes: float
    mean_size: float
    min_size: int
    max_size: int
    size_cv: float
    modal_size: int
    modal_share: float
    life_median_s: float
    life_p90_s: float
    life_allocs_median: float
    alive_end: float
    lifo: float
    together: float
    threads: int
    cpu_share: float
    gc_survival: float
    run_s: float
    large_share: float = 0.0   # share of the bytes in blocks of 1 MiB and more
    size_trend: float = 0.0    # rank correlation of size with birth order
    realloc_share: float = 0.0  # share of blocks born by a realloc (growing in place)
    cross_thread: float = 0.0  # share of frees made on another thread than the block's own
    free_threads: int = 0      # threads that freed its blocks
    fifo: float = 0.0          # share of frees that released the oldest block still to go
    peak_live_bytes: float = 0.0  # the most bytes of it live at once (per run, summed)
    end_live_bytes: float = 0.0   # bytes of it alive at the end (per run, summed)
    after_peak_live_bytes: float = 0.0  # time-average of its live bytes from the peak on
    peak_survivors: float = 0.0   # share of the blocks live at the peak still live halfway
                                  # from it to the end
    part: int = 0              # 1..PHASE_PARTS: a stretch of its time (in ``phases``); 0: all
    phases: tuple[Site, ...] = ()  # the site's features per stretch of its time, in order

    def vector(self) -> list[float]:
        """The features clustering sees (log scales where sizes span decades)."""
        return [float(np.log10(max(self.mean_size, 1.0))), self.size_cv, self.modal_share,
                float(np.log10(max(self.life_median_s, 1e-7))),
                self.life_median_s / self.run_s if self.run_s > 0 else 0.0,
                float(np.log10(1.0 + self.life_allocs_median)), self.lifo, self.together,
                self.alive_end, float(np.log10(1.0 + self.count))]


@dataclass
class Traced:
    """The blocks of one domain (all runs of a merged bundle together, each
    shifted in time and event index after the one before) and what was
    computed per run from the order of its events."""

    blocks: Blocks
    lifo: np.ndarray
    together: np.ndarray
    births_before: np.ndarray
    run_starts: np.ndarray      # int64: the index of each run's first block
    run_ends: np.ndarray = field(default_factory=lambda: np.zeros(0))
                                # float64: each run's end in seconds (none: its last event)


Collected = tuple[dict[str, Traced], dict[int, str], dict[int, str],
                  dict[int, tuple[str, str]], float, np.ndarray]


def runs_of(bundle: Bundle) -> list[Bundle]:
    """The runs a bundle holds: itself, or those ``pgo merge`` put in it."""
    return bundle.runs or [bundle]


def collect(bundle: Bundle) -> Collected:
    """Per domain the blocks of every run, with one site table for all of
    them (sites matched by module, qualname and line).  Returns (traced by
    domain, names, functions, (qualname, file) by site, run length, full
    collection times)."""
    runs = runs_of(bundle)
    names = {0: "<no GIL: numpy's C code>", 1: "<inside numpy / the standard library>"}
    funcs: dict[int, str] = {0: "", 1: ""}
    qual_file: dict[int, tuple[str, str]] = {}
    keys: dict[tuple[Any, ...], int] = {}
    luts = []
    for run in runs:
        local = {0: 0, 1: 1}
        for st in (run.event_sites or {}).get("sites", []):
            key = (st["module"], st["qualname"], st["file"], st["line"])
            if key not in keys:
                keys[key] = len(keys) + 2
            gid = keys[key]
            local[st["id"]] = gid
            module = st["module"] or st["file"]
            names[gid] = f"{module}:{st['qualname']}:{st['line']}"
            funcs[gid] = f"{module}:{st['qualname']}" if st["module"] else ""
            qual_file[gid] = (st["qualname"], st["file"])
        luts.append(local)
    fn_ids: dict[str, int] = {}
    fn_of = np.full(len(keys) + 2, -1, np.int64)
    for gid in range(2, len(keys) + 2):
        fn_of[gid] = fn_ids.setdefault(funcs[gid], len(fn_ids)) if funcs[gid] else -2 - gid
    fn_of[0], fn_of[1] = -1, -2             # unknown functions never group with each other
    out: dict[str, Traced] = {}
    total_s = 0.0
    gen2 = []
    for domain in (NUMPY, OBJECTS):
        parts = []
        t_off, ev_off = 0.0, 0
        for run, local in zip(runs, luts):
            m = run.manifest
            run_s = float(m.get("duration_s") or 0.0)
            trace = run.events if domain == NUMPY else run.objects
            rate = m["collectors"].get("objects", {}).get("sample_bytes") if domain == OBJECTS \
                else None
            if trace is not None and len(trace.events) and (domain == NUMPY or rate):
                b = pair(trace.events, trace.t0_ns, sample_bytes=rate)
                lut = np.zeros(max(local) + 1, np.int64)
                for lid, gid in local.items():
                    lut[lid] = gid
                known = b.site <= max(local)
                b.site = np.where(known, lut[np.minimum(b.site, max(local))], 1).astype(np.uint32)
                lifo = _lifo(b)
                together = _together(b, fn_of[b.site.astype(np.int64)])
                bb = _births_before(b)
                span = max(b.end, run_s)
                _shift(b, t_off, ev_off)
                parts.append((b, lifo, together, bb, t_off + span))
                ev_off += len(trace.events)
            else:
                span = run_s
            if domain == NUMPY:
                gen2.append(_full_collections(run) + t_off)
            t_off += span
        total_s = max(total_s, t_off)
        if parts:
            out[domain] = Traced(_concat([p[0] for p in parts]),
                                 np.concatenate([p[1] for p in parts]),
                                 np.concatenate([p[2] for p in parts]),
                                 np.concatenate([p[3] for p in parts]),
                                 np.cumsum([0] + [len(p[0]) for p in parts[:-1]]),
                                 np.array([p[4] for p in parts]))
    return out, names, funcs, qual_file, total_s, np.sort(np.concatenate(gen2)) if gen2 \
        else np.zeros(0)


def _shift(b: Blocks, t: float, ev: int) -> None:
    if t:
        b.birth = b.birth + t
        b.death = b.death + t
        b.censor_t = b.censor_t + t
        b.end = b.end + t
    if ev:
        b.birth_ev = b.birth_ev + ev
        b.death_ev = np.where(b.death_ev >= 0, b.death_ev + ev, -1)


def _concat(parts: list[Blocks]) -> Blocks:
    if len(parts) == 1:
        return parts[0]
    merged: dict[str, Any] = {
        f.name: (max(getattr(p, f.name) for p in parts) if f.name == "end"
                 else np.concatenate([getattr(p, f.name) for p in parts]))
        for f in fields(Blocks)}
    return Blocks(**merged)


def extract(bundle: Bundle, collected: Collected | None = None) -> list[Site]:
    """Every site of both traces (of every run of a merged bundle), in a
    stable order (domain, site id), numpy sites with their ``phases``.
    ``collected``: ``collect(bundle)``, when the caller has it already."""
    traced, names, funcs, qual_file, run_s, gen2 = collected or collect(bundle)
    cpu = _cpu_by_function(bundle)
    out: list[Site] = []
    for domain in (NUMPY, OBJECTS):
        t = traced.get(domain)
        if t is None or len(t.blocks) == 0:
            continue
        run_of = np.searchsorted(t.run_starts, np.arange(len(t.blocks)), side="right") - 1
        runs = (run_of, t.run_ends)
        sites = _per_site(t.blocks, domain, names, funcs, run_s, t.lifo, t.together,
                          t.births_before, gen2, cpu, qual_file, runs)
        if domain == NUMPY:
            _add_phases(sites, t, runs, names, funcs, run_s, gen2)
        out.extend(sites)
    return out


# A site's phases: its blocks split by birth into this many equal stretches
# of the time from its first birth to its last.  A stretch is judged from
# PHASE_WINDOW blocks (an AdaptiveAllocator's least decision window: 64
# requests), and a phase counts from PHASE_MIN_BLOCKS blocks: four such
# windows, two for the allocator to see it (it switches when two windows
# in a row vote alike) and two served in the mode chosen for it.
PHASE_PARTS = 4
PHASE_WINDOW = 64
PHASE_MIN_BLOCKS = 256


def _add_phases(sites: list[Site], t: Traced, runs: tuple[np.ndarray, np.ndarray],
                names: dict[int, str], funcs: dict[int, str], run_s: float,
                gen2: np.ndarray) -> None:
    """Give each site of at least two phases' worth of blocks its
    ``phases``: the features of the blocks born in each stretch of its
    time, judged against the whole run (its length, its end).  Only the
    blocks of one sampling level count (the level most of the site's
    recorded blocks have; numpy's weight is 4**level): once the recorder's
    budget samples addresses, the order features (LIFO, freed together,
    allocations in between) are those of the addresses it follows, which
    an exact stretch cannot be compared with."""
    big = {s.site_id: i for i, s in enumerate(sites) if s.count >= 2 * PHASE_MIN_BLOCKS}
    if not big:
        return
    b = t.blocks
    ids = np.array(sorted(big), np.int64)
    rows = np.flatnonzero(np.isin(b.site, ids))
    which = np.searchsorted(ids, b.site[rows].astype(np.int64))
    level = np.rint(np.log(b.weight[rows]) / np.log(4.0)).astype(np.int64)
    pairs, n = np.unique(np.stack([which, level]), axis=1, return_counts=True)
    best = np.lexsort((pairs[1], -n, pairs[0]))          # per site: most rows, lowest level
    first_of_site = best[np.concatenate([[True], np.diff(pairs[0][best]) != 0])]
    keep_level = np.zeros(len(ids), np.int64)
    keep_level[pairs[0][first_of_site]] = pairs[1][first_of_site]
    kept = level == keep_level[which]
    rows, which = rows[kept], which[kept]
    birth = b.birth[rows]
    first = np.full(len(ids), np.inf)
    last = np.full(len(ids), -np.inf)
    np.minimum.at(first, which, birth)
    np.maximum.at(last, which, birth)
    span = (last - first)[which]
    pos = np.where(span > 0, (birth - first[which]) / np.where(span > 0, span, 1.0), 0.0)
    part = np.minimum((pos * PHASE_PARTS).astype(np.int64), PHASE_PARTS - 1)
    key = which * PHASE_PARTS + part
    sub = _take(b, rows)
    sub.site = key.astype(np.uint32)
    part_names = {int(k): f"{names.get(int(ids[k // PHASE_PARTS]), '?')} "
                          f"[part {k % PHASE_PARTS + 1}/{PHASE_PARTS}]"
                  for k in np.unique(key).tolist()}
    part_funcs = {k: funcs.get(int(ids[k // PHASE_PARTS]), "") for k in part_names}
    parts = _per_site(sub, NUMPY, part_names, part_funcs, run_s, t.lifo[rows],
                      t.together[rows], t.births_before[rows], gen2, ({}, 0), {},
                      (runs[0][rows], runs[1]))
    by_site: dict[int, list[Site]] = {}
    for ps in parts:
        k = ps.site_id
        sid = int(ids[k // PHASE_PARTS])
        ps.site_id, ps.part = sid, k % PHASE_PARTS + 1
        by_site.setdefault(sid, []).append(ps)
    for sid, ps_list in by_site.items():
        sites[big[sid]].phases = tuple(sorted(ps_list, key=lambda ps: ps.part))


def _take(b: Blocks, rows: np.ndarray) -> Blocks:
    """The blocks ``rows`` selects, as Blocks of their own (same end)."""
    return Blocks(**{f.name: (getattr(b, f.name) if f.name == "end" else getattr(b, f.name)[rows])
                     for f in fields(Blocks)})


def _births_before(blocks: Blocks) -> np.ndarray:
    """For each block, births in its trace between its birth and its death
    (or the end): from the sorted birth event indices."""
    order = np.sort(blocks.birth_ev)
    end_ev = np.where(blocks.death_ev >= 0, blocks.death_ev, np.iinfo(np.int64).max)
    return (np.searchsorted(order, end_ev, side="left")
            - np.searchsorted(order, blocks.birth_ev, side="right")).astype(np.float64)


def _lifo(blocks: Blocks) -> np.ndarray:
    """Per block: freed while it was the newest live block of its (site,
    thread).  A stack per (site, thread), with lazy deletion."""
    n = len(blocks)
    out = np.zeros(n, bool)
    died = blocks.death_ev >= 0
    ev = np.concatenate([blocks.birth_ev, blocks.death_ev[died]])
    which = np.concatenate([np.arange(n), np.nonzero(died)[0]])
    is_death = np.concatenate([np.zeros(n, bool), np.ones(int(died.sum()), bool)])
    order = np.lexsort((~is_death, ev))        # at one event: the death first (realloc)
    keys = (blocks.site.astype(np.int64) << 32) | blocks.tid.astype(np.int64)
    stacks: dict[int, list[int]] = {}
    alive = np.zeros(n, bool)
    res = out
    key_l = keys.tolist()
    for k, d in zip(which[order].tolist(), is_death[order].tolist()):
        st = stacks.setdefault(key_l[k], [])
        if not d:
            st.append(k)
            alive[k] = True
            continue
        while st and not alive[st[-1]]:
            st.pop()
        if st and st[-1] == k:
            res[k] = True
            st.pop()
        alive[k] = False
    return out


def _together(blocks: Blocks, fn_of_site: np.ndarray) -> np.ndarray:
    """Per block: its free is adjacent (consecutive event indices) to the
    free of a block from the same function."""
    out = np.zeros(len(blocks), bool)
    died = np.nonzero(blocks.death_ev >= 0)[0]
    if len(died) < 2:
        return out
    order = died[np.argsort(blocks.death_ev[died], kind="stable")]
    dev = blocks.death_ev[order]
    fn = fn_of_site[order]
    adj = (np.diff(dev) == 1) & (fn[1:] == fn[:-1])
    mark = np.zeros(len(order), bool)
    mark[1:] |= adj
    mark[:-1] |= adj
    out[order] = mark
    return out


def _full_collections(bundle: Bundle) -> np.ndarray:
    g = bundle.gc
    if not g:
        return np.zeros(0)
    t = np.asarray(g["pauses"]["t_s"], dtype=np.float64)
    gen = np.asarray(g["pauses"]["generation"], dtype=np.int64)
    return np.sort(t[gen == 2])


def _cpu_by_function(bundle: Bundle) -> tuple[dict[tuple[str, str], int], int]:
    """(function name, file basename) -> samples with it on the stack."""
    stacks = bundle.cpu or {}
    total = sum(stacks.values())
    counts: dict[tuple[str, str], int] = {}
    for stack, n in stacks.items():
        seen = set()
        for fr in stack:
            if fr.endswith(")") and " (" in fr:
                func, _, loc = fr[:-1].rpartition(" (")
                key = (func, loc.rpartition(":")[0].rsplit("/", 1)[-1])
                if key not in seen:
                    seen.add(key)
                    counts[key] = counts.get(key, 0) + n
    return counts, total


LARGE = 1 << 20


class _Groups:
    """Per-site reductions over blocks, vectorized: the blocks sorted by
    site once, then every statistic is a bincount or a reduceat."""

    def __init__(self, site: np.ndarray) -> None:
        self.order = np.argsort(site, kind="stable")
        s = site[self.order]
        self.starts = np.concatenate([[0], np.flatnonzero(np.diff(s)) + 1])
        self.ids = s[self.starts]
        self.n = len(self.starts)
        self.g = np.repeat(np.arange(self.n), np.diff(np.append(self.starts, len(s))))
        self.of_block = np.empty(len(s), np.int64)     # group of each block, in block order
        self.of_block[self.order] = self.g

    def sum(self, x: np.ndarray) -> np.ndarray:
        return np.bincount(self.g, weights=x[self.order].astype(np.float64), minlength=self.n)

    def min(self, x: np.ndarray) -> np.ndarray:
        return np.minimum.reduceat(x[self.order], self.starts)

    def max(self, x: np.ndarray) -> np.ndarray:
        return np.maximum.reduceat(x[self.order], self.starts)

    def count_unique(self, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Distinct values of ``x`` (under 2**32: thread ids) per group,
        among the blocks ``mask`` selects (all: None)."""
        g, v = self.g, x[self.order].astype(np.int64)
        if mask is not None:
            keep = mask[self.order]
            g, v = g[keep], v[keep]
        return np.bincount(np.unique((g << 32) | v) >> 32, minlength=self.n)

    def _sorted_within(self, x: np.ndarray) -> np.ndarray:
        """Positions (into self.order) sorting each group by x."""
        return np.lexsort((x[self.order], self.g))

    def wquantile(self, x: np.ndarray, w: np.ndarray, q: float) -> np.ndarray:
        k = self._sorted_within(x)
        xs, ws, gs = x[self.order][k], w[self.order][k], self.g[k]
        c = np.cumsum(ws)
        totals = np.bincount(gs, weights=ws, minlength=self.n)
        before = np.concatenate([[0.0], np.cumsum(totals)[:-1]])
        idx = np.searchsorted(c, before + q * totals, side="left")
        last = np.append(self.starts[1:], len(xs)) - 1
        out: np.ndarray = xs[np.minimum(np.maximum(idx, self.starts), last)]
        return out

    def mode(self, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The most common value (by weight) and its weight, per group."""
        k = self._sorted_within(x)
        xs, ws, gs = x[self.order][k], w[self.order][k], self.g[k]
        run = np.concatenate([[True], (xs[1:] != xs[:-1]) | (gs[1:] != gs[:-1])])
        rs = np.flatnonzero(run)
        rw = np.add.reduceat(ws, rs)
        rg = gs[rs]
        best = np.lexsort((-rw, rg))                  # per group, heaviest run first
        first = best[np.concatenate([[True], rg[best][1:] != rg[best][:-1]])]
        return xs[rs][first], rw[first]

    def rank_corr(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Spearman's correlation per group (ties: average ranks); 0 for
        groups under 3 blocks or with a constant side."""
        ra, rb = self._ranks(a), self._ranks(b)
        n = np.bincount(self.g, minlength=self.n).astype(np.float64)
        sa, sb = np.bincount(self.g, ra, self.n), np.bincount(self.g, rb, self.n)
        saa = np.bincount(self.g, ra * ra, self.n)
        sbb = np.bincount(self.g, rb * rb, self.n)
        sab = np.bincount(self.g, ra * rb, self.n)
        with np.errstate(invalid="ignore", divide="ignore"):
            cov = sab - sa * sb / n
            den = np.sqrt((saa - sa * sa / n) * (sbb - sb * sb / n))
            r = np.where((n >= 3) & (den > 1e-12), cov / den, 0.0)
        return np.nan_to_num(r)

    def _ranks(self, x: np.ndarray) -> np.ndarray:
        # Average ranks within each group, aligned with self.order.
        k = self._sorted_within(x)
        xs, gs = x[self.order][k], self.g[k]
        run = np.concatenate([[True], (xs[1:] != xs[:-1]) | (gs[1:] != gs[:-1])])
        rs = np.flatnonzero(run)
        lens = np.diff(np.append(rs, len(xs)))
        pos = np.arange(len(xs), dtype=np.float64) - self.starts[gs]
        avg = np.repeat(pos[rs] + (lens - 1) / 2.0, lens)
        out = np.empty(len(xs))
        out[k] = avg
        return out


def _fifo(blocks: Blocks, G: _Groups) -> np.ndarray:
    """Per block: freed after every older block of its site that is freed
    at all (it released the oldest one still to go: a queue).  A running
    maximum of the deaths in birth order, each site's values lifted past
    the one before's so that one pass serves them all."""
    out = np.zeros(len(blocks), bool)
    died = np.flatnonzero(blocks.death_ev >= 0)
    if len(died) == 0:
        return out
    g = G.of_block[died]
    order = np.lexsort((blocks.birth_ev[died], g))
    lift = int(blocks.death_ev.max()) + 1
    v = blocks.death_ev[died][order] + g[order].astype(np.int64) * lift
    before = np.concatenate([[-1], np.maximum.accumulate(v)[:-1]])
    out[died[order]] = v > before
    return out


@dataclass
class _LiveStats:
    """Per site, from its live bytes over time (each run of a merged
    bundle on its own, summed over the runs)."""

    peak: np.ndarray            # the most bytes live at once
    end: np.ndarray             # bytes alive at the end
    after_peak: np.ndarray      # the time-average of the live bytes from the peak to the end
    at_peak: np.ndarray         # blocks (weighted) live at the peak ...
    survivors: np.ndarray       # ... of which still live halfway from it to the end


def _live_stats(blocks: Blocks, G: _Groups, runs: tuple[np.ndarray, np.ndarray] | None,
                end: float) -> _LiveStats:
    """Each site's live-bytes curve, per run (``runs``: each block's run
    and each run's end; a run's survivors are not alive through the next
    one; a run without an end ends at its last event, the last at
    ``end``).  Events in trace order, a death before a birth at the same
    event (a realloc in place); a block the trace's sampling stopped
    following dies at the first birth from then on.  The peak is the first
    time the most bytes are live."""
    n = len(blocks)
    run = np.zeros(n, np.int64) if runs is None else runs[0].astype(np.int64)
    nruns = max(int(run.max()) + 1 if n else 1, len(runs[1]) if runs is not None else 0)
    key = G.of_block * nruns + run
    wb = blocks.weight * blocks.size.astype(np.float64)
    last_ev = int(max(blocks.birth_ev.max(), blocks.death_ev.max())) + 1 if n else 1
    death_ev = blocks.death_ev.copy()
    death = blocks.death.copy()
    cens = np.flatnonzero(blocks.censored)
    if len(cens):
        j = np.searchsorted(blocks.birth, blocks.censor_t[cens], side="left")
        death_ev[cens] = np.where(j < n, blocks.birth_ev[np.minimum(j, n - 1)], last_ev)
        death[cens] = np.maximum(blocks.censor_t[cens], blocks.birth[cens])
    ended = death_ev >= 0
    run_end = np.full(nruns, -np.inf)
    np.maximum.at(run_end, run, np.where(ended, death, blocks.birth))
    if runs is not None and len(runs[1]):
        run_end[: len(runs[1])] = np.maximum(run_end[: len(runs[1])], runs[1])
    run_end[-1] = max(run_end[-1], end)
    # One int64 sort of (group, 2 * event + is-birth); arrays of every
    # event are let go as soon as they have served (a million blocks make
    # two million events).
    pos_b, pos_d = 2 * blocks.birth_ev + 1, 2 * death_ev
    stride = 2 * last_ev + 2
    comp = np.concatenate([key * stride + pos_b, key[ended] * stride + pos_d[ended]])
    order = np.argsort(comp, kind="stable")
    comp = comp[order]
    t = np.concatenate([blocks.birth, death[ended]])[order]
    live = np.cumsum(np.concatenate([wb, -wb[ended]])[order])
    del order
    k = comp // stride
    starts = np.flatnonzero(np.concatenate([[True], k[1:] != k[:-1]]))
    group_key = k[starts]
    del k
    g = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(t))))
    live -= np.concatenate([[0.0], live[starts[1:] - 1]])[g]
    peak_k = np.maximum.reduceat(live, starts)
    at_max = np.flatnonzero(live >= peak_k[g])
    first_max = at_max[np.concatenate([[True], g[at_max][1:] != g[at_max][:-1]])]
    del at_max
    t_peak = t[first_max]
    peak_pos = comp[first_max] % stride
    del comp
    t_end = run_end[group_key % nruns]
    # The live bytes between each event and the next (the group's last: to its run's end).
    dt = np.append(t[1:], 0.0)
    dt[np.append(starts[1:], len(t)) - 1] = t_end
    dt -= t
    np.maximum(dt, 0.0, out=dt)
    dt[np.arange(len(t)) < first_max[g]] = 0.0          # before the peak
    area = np.bincount(g, weights=live * dt, minlength=len(starts))
    del dt, live, g, t
    span = t_end - t_peak
    after_k = np.where(span > 0, area / np.where(span > 0, span, 1.0), peak_k)
    site_of_key = group_key // nruns
    # The blocks live at each group's peak, and those still live halfway to its end.
    gk = np.searchsorted(group_key, key)
    at = peak_pos[gk]
    live_at_peak = (pos_b <= at) & (np.where(ended, pos_d, np.iinfo(np.int64).max) > at)
    halfway = (t_peak[gk] + t_end[gk]) / 2
    alive = (blocks.death_ev < 0) & ~blocks.censored
    return _LiveStats(
        peak=np.bincount(site_of_key, weights=np.maximum(peak_k, 0.0), minlength=G.n),
        end=G.sum(wb * alive),
        after_peak=np.bincount(site_of_key, weights=np.maximum(after_k, 0.0), minlength=G.n),
        at_peak=G.sum(blocks.weight * live_at_peak),
        survivors=G.sum(blocks.weight * (live_at_peak & ~(ended & (death <= halfway)))))


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b where b > 0, else 0."""
    return np.where(b > 0, a / np.where(b > 0, b, 1.0), 0.0)


def _per_site(blocks: Blocks, domain: str, names: dict[int, str], funcs: dict[int, str],
              run_s: float, lifo: np.ndarray, together: np.ndarray, births_before: np.ndarray,
              gen2: np.ndarray, cpu: tuple[dict[tuple[str, str], int], int],
              qual_file: dict[int, tuple[str, str]],
              runs: tuple[np.ndarray, np.ndarray] | None = None) -> list[Site]:
    end = max(blocks.end, run_s)
    cpu_counts, cpu_total = cpu
    G = _Groups(blocks.site)
    w = blocks.weight
    size = blocks.size.astype(np.float64)
    wsum = G.sum(w)
    nbytes = G.sum(w * size)
    mean = nbytes / wsum
    var = G.sum(w * (size - mean[G.of_block]) ** 2) / wsum
    modal, modal_w = G.mode(blocks.size, w)
    dead = blocks.death_ev >= 0
    # A censored block (the budget's sampling stopped following its
    # address) lived at least until then: that lower bound is its lifetime;
    # whether it was alive at the end is unknown.
    censored = blocks.censored
    death = np.where(dead, blocks.death, np.where(censored, blocks.censor_t, end))
    life = np.maximum(death - blocks.birth, 0.0)
    known_w = G.sum(w * ~censored)
    alive_w = G.sum(w * (~dead & ~censored))
    n_dead = G.sum(dead.astype(np.float64))
    lifo_n = G.sum((lifo & dead).astype(np.float64))
    tog_n = G.sum((together & dead).astype(np.float64))
    if len(gen2):
        survived = G.sum(w * (np.searchsorted(gen2, death, side="right")
                              > np.searchsorted(gen2, blocks.birth, side="right"))) / wsum
    else:
        survived = np.zeros(G.n)
    life_med = G.wquantile(life, w, 0.5)
    life_p90 = G.wquantile(life, w, 0.9)
    allocs_med = G.wquantile(births_before, w, 0.5)
    threads = G.count_unique(blocks.tid)
    large = G.sum(w * size * (size >= LARGE))
    trend = G.rank_corr(blocks.birth_ev.astype(np.float64), size)
    realloc = G.sum(blocks.by_realloc.astype(np.float64)) / np.bincount(G.g, minlength=G.n)
    smin, smax = G.min(blocks.size), G.max(blocks.size)
    # What the last three patterns read, numpy data only (Python objects
    # stay with the system whatever they show): zeros for objects.
    mine = domain == NUMPY
    w_dead = G.sum(w * dead)
    cross = G.sum(w * (dead & (blocks.free_tid != blocks.tid))) if mine else np.zeros(G.n)
    free_threads = G.count_unique(blocks.free_tid, dead) if mine else np.zeros(G.n, np.int64)
    fifo_n = G.sum((_fifo(blocks, G) & dead).astype(np.float64)) if mine else np.zeros(G.n)
    zero = np.zeros(G.n)
    ls = _live_stats(blocks, G, runs, end) if mine else _LiveStats(zero, zero, zero, zero, zero)
    # Per site, as Python numbers (one conversion per column, not per site).
    col = {
        "count": wsum, "bytes": nbytes, "mean_size": mean, "min_size": smin, "max_size": smax,
        "size_cv": _ratio(np.sqrt(np.maximum(var, 0.0)), mean),
        "modal_size": modal, "modal_share": modal_w / wsum, "life_median_s": life_med,
        "life_p90_s": life_p90, "life_allocs_median": allocs_med,
        "alive_end": _ratio(alive_w, known_w), "lifo": _ratio(lifo_n, n_dead),
        "together": _ratio(tog_n, n_dead), "threads": threads, "gc_survival": survived,
        "large_share": large / np.maximum(nbytes, 1.0), "size_trend": trend,
        "realloc_share": realloc, "cross_thread": _ratio(cross, w_dead),
        "free_threads": free_threads, "fifo": _ratio(fifo_n, n_dead),
        "peak_live_bytes": ls.peak, "end_live_bytes": ls.end,
        "after_peak_live_bytes": ls.after_peak, "peak_survivors": _ratio(ls.survivors, ls.at_peak)}
    ints = ("min_size", "max_size", "modal_size", "threads", "free_threads")
    values = {k: (v.astype(np.int64) if k in ints else v.astype(np.float64)).tolist()
              for k, v in col.items()}
    out = []
    for i, sid in enumerate(G.ids.tolist()):
        cpu_share = 0.0
        if cpu_total and sid in qual_file:
            q, f = qual_file[sid]
            cpu_share = cpu_counts.get((q.rsplit(".", 1)[-1], f.rsplit("/", 1)[-1]), 0) / cpu_total
        out.append(Site(domain=domain, site_id=sid, name=names.get(sid, f"site {sid}"),
                        function=funcs.get(sid, ""), cpu_share=cpu_share, run_s=end,
                        **{k: v[i] for k, v in values.items()}))
    return out
