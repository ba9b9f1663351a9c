"""What ``pgo show`` says about a bundle, as plain data (``--json`` prints
it as is): per-site allocation statistics with a lifetime class, GC
collections and pauses, CPU hot spots, possible leaks, profiler overhead.

Lifetime classes (of the blocks a site allocates, by weighted median):
``short`` lives under 1% of the run and under 100 ms; ``long``: half of
them live past the end of the run, or the median lives a quarter of it;
``medium`` in between.
A possible leak is a site whose live bytes rise through the run: between
16 evenly spaced points at least 3/4 of the steps do not go down and half
go up, it ends at its peak (within 10%) and at twice what it held a
quarter of the way in, holding at least 1 MiB or 10% of all live bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pgo.analysis.features import NUMPY, OBJECTS, collect
from pgo.analysis.lifetimes import Blocks
from pgo.bundle import NO_PYTHON_FRAME, Bundle

# Long-lived: most of the blocks still alive at the end of the run, or a
# median life of a quarter of the run (`pgo show`'s class and `pgo
# analyze`'s pattern both).
LONG_LIVED_ALIVE_SHARE = 0.5
LONG_LIVED_LIFE_SHARE = 0.25


def site_stats(blocks: Blocks, names: dict[int, str], domain: str,
               run_s: float) -> list[dict[str, Any]]:
    """Per site: blocks, bytes, sizes, lifetimes (weighted estimates)."""
    if len(blocks) == 0:
        return []
    out = []
    end = max(blocks.end, run_s)
    order = np.argsort(blocks.site, kind="stable")
    sites = blocks.site[order]
    bounds = np.flatnonzero(np.diff(sites)) + 1
    for idx in np.split(order, bounds):
        w = blocks.weight[idx]
        size = blocks.size[idx].astype(np.float64)
        censored = blocks.censored[idx]
        alive = np.isnan(blocks.death[idx]) & ~censored
        # A block the budget's sampling stopped following lived at least
        # until then (a lower bound); alive or not at the end is unknown.
        death = np.where(np.isnan(blocks.death[idx]),
                         np.where(censored, blocks.censor_t[idx], end), blocks.death[idx])
        life = death - blocks.birth[idx]
        known = ~censored
        median = wquantile(life, w, 0.5)
        p90 = wquantile(life, w, 0.9)
        alive_share = float(w[alive].sum() / w[known].sum()) if known.any() else 0.0
        if alive_share >= LONG_LIVED_ALIVE_SHARE or (end > 0
                                                     and median >= LONG_LIVED_LIFE_SHARE * end):
            cls = "long"
        elif median < 0.1 and (end <= 0 or median < 0.01 * end):
            cls = "short"
        else:
            cls = "medium"
        sid = int(blocks.site[idx[0]])
        out.append({
            "site": names.get(sid, f"site {sid}"), "site_id": sid, "domain": domain,
            "count": float(w.sum()), "bytes": float((w * size).sum()),
            "mean_size": float((w * size).sum() / w.sum()),
            "min_size": int(size.min()), "max_size": int(size.max()),
            "lifetime_median_s": median, "lifetime_p90_s": p90,
            "alive_at_end": alive_share, "lifetime": cls,
            "threads": int(len(np.unique(blocks.tid[idx]))),
            "live_end_bytes": float((w[alive] * size[alive]).sum()),
        })
    return out


def wquantile(x: np.ndarray, w: np.ndarray, q: float) -> float:
    """The q-quantile of ``x`` weighted by ``w`` (sample weights)."""
    order = np.argsort(x)
    cw = np.cumsum(w[order])
    k = int(np.searchsorted(cw, q * cw[-1]))
    return float(x[order][min(k, len(x) - 1)])


def live_curve(blocks: Blocks, site: int | None, points: int, end: float) -> np.ndarray:
    """Live bytes of one site (None: of all) at ``points`` evenly spaced
    times from 0 to ``end``."""
    m = blocks.site == site if site is not None else np.ones(len(blocks), bool)
    grid = np.linspace(0, end, points)
    wb = blocks.weight[m] * blocks.size[m].astype(np.float64)
    born = blocks.birth[m]
    dead = np.where(np.isnan(blocks.death[m]), np.inf, blocks.death[m])
    ob = np.argsort(born)
    od = np.argsort(dead)
    cb = np.concatenate([[0.0], np.cumsum(wb[ob])])
    cd = np.concatenate([[0.0], np.cumsum(wb[od])])
    curve: np.ndarray = (cb[np.searchsorted(born[ob], grid, side="right")]
                         - cd[np.searchsorted(dead[od], grid, side="right")])
    return curve


def peak_live_count(blocks: Blocks, rows: slice = slice(None)) -> float:
    """The most blocks (by sample weight) live at any one time, among
    ``rows`` (one run's, in a merged trace).  Deaths come before births at
    the same instant, so a block replaced in place counts once, not twice.
    A block the trace's sampling stopped following counts as dead from then
    on: the peak is not overstated."""
    birth, weight = blocks.birth[rows], blocks.weight[rows]
    death = np.where(blocks.censored[rows], np.maximum(blocks.censor_t[rows], birth),
                     blocks.death[rows])
    ended = ~np.isnan(death)
    dead = death[ended]
    w_dead = weight[ended]
    t = np.concatenate([birth, dead])
    delta = np.concatenate([weight, -w_dead])
    # Deaths first at equal times (lexsort's last key is the primary one).
    order = np.lexsort((delta, t))
    live = np.cumsum(delta[order])
    return float(live.max()) if len(live) else 0.0


def is_growing(curve: np.ndarray, total_live_end: float) -> bool:
    """Live bytes that keep rising: most steps go up (not a jump at start-up
    and then a plateau), the end is the peak, and the end is at least twice
    what was live a quarter of the way through."""
    if len(curve) < 4 or curve[-1] <= 0:
        return False
    steps = np.diff(curve)
    tol = 1e-9 * max(1.0, float(curve.max()))
    not_down = float((steps >= -tol).mean())
    up = float((steps > tol).mean())
    quarter = curve[len(curve) // 4]
    return (not_down >= 0.75 and up >= 0.5 and curve[-1] >= 0.9 * curve.max()
            and curve[-1] >= 2 * quarter
            and (curve[-1] >= (1 << 20) or curve[-1] >= 0.1 * total_live_end))


def summarize(bundle: Bundle, top: int = 10) -> dict[str, Any]:
    m = bundle.manifest
    traced, names, _, _, run_s, _ = collect(bundle)
    run_s = max(run_s, float(m.get("duration_s") or 0.0))
    sites: list[dict[str, Any]] = []
    leaks: list[dict[str, Any]] = []
    for domain in (NUMPY, OBJECTS):
        if domain not in traced:
            continue
        blocks = traced[domain].blocks
        stats = site_stats(blocks, names, domain, run_s)
        sites.extend(stats)
        total_live = sum(s["live_end_bytes"] for s in stats)
        end = max(blocks.end, run_s)
        for s in stats:
            if s["live_end_bytes"] <= 0:
                continue
            curve = live_curve(blocks, s["site_id"], 16, end)
            if is_growing(curve, total_live):
                leaks.append({"site": s["site"], "domain": domain,
                              "live_end_bytes": s["live_end_bytes"],
                              "curve_bytes": [float(x) for x in curve]})
    tm_sites = _tracemalloc_sites(bundle, top, leaks)
    by_bytes = sorted(sites, key=lambda s: -s["bytes"])[:top]
    by_count = sorted(sites, key=lambda s: -s["count"])[:top]
    return {
        "bundle": str(bundle.path),
        "command": m["command"],
        "complete": m["complete"],
        "exit": m.get("exit", {}),
        "duration_s": run_s,
        "python": m["python"], "numpy": m.get("numpy"), "pgo": m.get("pgo"),
        "collectors": {k: v.get("status") for k, v in m["collectors"].items()},
        "top_by_bytes": by_bytes,
        "top_by_count": by_count,
        "tracemalloc_top": tm_sites,
        "gc": _gc_summary(bundle, run_s),
        "cpu": _cpu_summary(bundle, top),
        "possible_leaks": leaks,
        "overhead": m.get("overhead", {}),
        "warnings": list(m.get("warnings", [])) + list(bundle.warnings),
        "children": [c.manifest.get("pid") for c in bundle.children],
    }


def _tracemalloc_sites(bundle: Bundle, top: int,
                       leaks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    a = bundle.allocations
    if not a:
        return []
    snaps = a["snapshots"]
    series: dict[int, list[float]] = {}
    for k, snap in enumerate(snaps):
        for sid, b, _ in snap["live"]:
            series.setdefault(sid, [0.0] * len(snaps))[k] = b
    total_end = snaps[-1]["traced_bytes"] if snaps else 0
    out = []
    for s in a["sites"]:
        frame = s["frames"][0] if s["frames"] else ["?", 0]
        curve = np.array(series.get(s["id"], []), dtype=float)
        seen = s["snapshots_seen"] / max(1, len(snaps))
        cls = "long" if s["final_bytes"] >= 0.5 * s["peak_bytes"] and seen > 0.5 else "short"
        entry = {"site": f"{frame[0]}:{frame[1]}", "domain": s["domain"],
                 "peak_bytes": s["peak_bytes"], "peak_count": s["peak_count"],
                 "final_bytes": s["final_bytes"], "lifetime": cls}
        out.append(entry)
        if len(curve) >= 4 and is_growing(curve, total_end):
            leaks.append({"site": entry["site"], "domain": f"{s['domain']} (tracemalloc)",
                          "live_end_bytes": float(curve[-1]),
                          "curve_bytes": [float(x) for x in curve]})
    out.sort(key=lambda e: -e["peak_bytes"])
    return out[:top]


def _gc_summary(bundle: Bundle, run_s: float) -> dict[str, Any] | None:
    g = bundle.gc
    if not g:
        return None
    dur = np.array(g["pauses"]["duration_ns"], dtype=np.float64)
    gens = np.array(g["pauses"]["generation"], dtype=np.int64)
    collected = np.array(g["pauses"]["collected"], dtype=np.float64)
    wall = g["wall_s"] or run_s or 1.0
    per_gen = []
    for i, gen in enumerate(g["generations"]):
        m = gens == i
        per_gen.append({"generation": i, "collections": gen["collections"],
                        "collected": gen["collected"], "uncollectable": gen["uncollectable"],
                        "pause_s": float(dur[m].sum() / 1e9),
                        "max_pause_ms": float(dur[m].max() / 1e6) if m.any() else 0.0})
    return {
        "thresholds": g["thresholds"],
        "collections": int(len(dur)) + g["pauses_dropped"],
        "total_pause_s": g["total_pause_ns"] / 1e9,
        "share_of_wall": (g["total_pause_ns"] / 1e9) / wall if wall else 0.0,
        "pause_p50_ms": float(np.median(dur) / 1e6) if len(dur) else 0.0,
        "pause_p99_ms": float(np.quantile(dur, 0.99) / 1e6) if len(dur) else 0.0,
        "pause_max_ms": float(dur.max() / 1e6) if len(dur) else 0.0,
        "collected_per_collection": float(collected.mean()) if len(collected) else 0.0,
        "generations": per_gen,
    }


def _cpu_summary(bundle: Bundle, top: int) -> dict[str, Any] | None:
    stacks = bundle.cpu
    if stacks is None:
        return None
    total = sum(stacks.values())
    self_: dict[str, int] = {}
    incl: dict[str, int] = {}
    for stack, n in stacks.items():
        leaf = stack[-1] if stack else NO_PYTHON_FRAME
        self_[leaf] = self_.get(leaf, 0) + n
        for fr in set(stack):
            incl[fr] = incl.get(fr, 0) + n
    hot = sorted(self_.items(), key=lambda kv: -kv[1])[:top]
    return {"samples": total,
            "hot": [{"function": f, "self_samples": n, "self_share": n / total if total else 0.0,
                     "total_share": incl.get(f, 0) / total if total else 0.0} for f, n in hot]}
