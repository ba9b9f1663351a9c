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
  the stack); share of blocks that lived through a full (gen 2) collection.
"""

from __future__ import annotations

from typing import Any

from dataclasses import dataclass, fields
import numpy as np

from pgo.analysis.lifetimes import Blocks, pair
from pgo.bundle import Bundle

NUMPY = "numpy"
OBJECTS = "objects"

FEATURES = ("log_mean_size", "size_cv", "modal_share", "log_life_median", "life_share",
            "log_life_allocs", "lifo", "together", "alive_end", "log_count")


@dataclass
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
                parts.append((b, lifo, together, bb))
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
                                 np.cumsum([0] + [len(p[0]) for p in parts[:-1]]))
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
    stable order (domain, site id).  ``collected``: ``collect(bundle)``,
    when the caller has it already."""
    traced, names, funcs, qual_file, run_s, gen2 = collected or collect(bundle)
    cpu = _cpu_by_function(bundle)
    out: list[Site] = []
    for domain in (NUMPY, OBJECTS):
        t = traced.get(domain)
        if t is None or len(t.blocks) == 0:
            continue
        out.extend(_per_site(t.blocks, domain, names, funcs, run_s, t.lifo, t.together,
                             t.births_before, gen2, cpu, qual_file))
    return out


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

    def count_unique(self, x: np.ndarray) -> np.ndarray:
        pairs = np.unique(np.stack([self.g, x[self.order].astype(np.int64)]), axis=1)
        return np.bincount(pairs[0], minlength=self.n)

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


def _per_site(blocks: Blocks, domain: str, names: dict[int, str], funcs: dict[int, str],
              run_s: float, lifo: np.ndarray, together: np.ndarray, births_before: np.ndarray,
              gen2: np.ndarray, cpu: tuple[dict[tuple[str, str], int], int],
              qual_file: dict[int, tuple[str, str]]) -> list[Site]:
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
    out = []
    for i, sid in enumerate(G.ids.tolist()):
        cpu_share = 0.0
        if cpu_total and sid in qual_file:
            q, f = qual_file[sid]
            cpu_share = cpu_counts.get((q.rsplit(".", 1)[-1], f.rsplit("/", 1)[-1]), 0) / cpu_total
        m = float(mean[i])
        out.append(Site(
            domain=domain, site_id=int(sid), name=names.get(sid, f"site {sid}"),
            function=funcs.get(sid, ""), count=float(wsum[i]), bytes=float(nbytes[i]),
            mean_size=m, min_size=int(smin[i]), max_size=int(smax[i]),
            size_cv=float(np.sqrt(max(var[i], 0.0)) / m) if m > 0 else 0.0,
            modal_size=int(modal[i]), modal_share=float(modal_w[i] / wsum[i]),
            life_median_s=float(life_med[i]), life_p90_s=float(life_p90[i]),
            life_allocs_median=float(allocs_med[i]),
            alive_end=float(alive_w[i] / known_w[i]) if known_w[i] > 0 else 0.0,
            lifo=float(lifo_n[i] / n_dead[i]) if n_dead[i] else 0.0,
            together=float(tog_n[i] / n_dead[i]) if n_dead[i] else 0.0,
            threads=int(threads[i]), cpu_share=cpu_share, gc_survival=float(survived[i]),
            run_s=end, large_share=float(large[i] / max(nbytes[i], 1.0)),
            size_trend=float(trend[i]), realloc_share=float(realloc[i])))
    return out
