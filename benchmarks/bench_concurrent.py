"""Concurrent allocators: threads on one allocator, pgo's against glibc and the peers.

    python3 benchmarks/bench_concurrent.py [--repeat 5] [--threads 1,2,4]
        [--patterns pairs,cross] [--ops 200000] [--size 64]
        [-o benchmarks/results/concurrent.json]

The seed's "ConcurrentAllocators" category.  For each pattern and thread
count, every arm runs the same ``nogil`` C loop (``c_level.concurrent``) in
``threads`` pthreads started together on one allocator:

  pairs   each thread churns its own 64 live blocks: free one, allocate its
          replacement
  cross   rounds of 64 allocations per thread, then each thread frees the
          blocks its neighbour allocated (frees from another thread)

Arms: glibc ``malloc``/``free`` in this process; jemalloc, mimalloc and
tcmalloc (the same loop in a child process with the library preloaded);
pgo's thread-safe allocators that serve a block of ``--size`` bytes: the
hierarchical allocator (per-thread caches; its lock waits are the central
lists'), and the slab, the mapped pool, the NUMA, the compacting and the
adaptive allocator (each one mutex over the allocator; ``contention``
counts the lock waits of a run).

The thread list comes from ``os.cpu_count()`` (powers of two up to it, and
it), so on a bigger machine the same command measures more threads;
``--threads`` overrides it (more threads than CPUs measures time slicing,
not the allocator).  Value: ns per alloc+free per thread, the slowest
thread's (so perfect scaling keeps it flat).  Each (pattern, threads) group
runs its arms back to back, in A B C / C B A order, ``--repeat`` times;
the table shows medians, the ratio to glibc and to the best peer, and how
each arm's time grows from 1 thread to the most.  A measurement, not a
test: it never fails on a number.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import _common as common
import build as _build  # benchmarks/build.py
from _common import median, spread_iqr

PATTERNS = ("pairs", "cross")
PGO_ARMS = ("hierarchical", "slab", "mapped", "numa", "compacting", "adaptive")
LIVE = 64


def thread_counts(cpus: int) -> list[int]:
    """Powers of two up to `cpus`, and `cpus` itself; at least [1, 2]."""
    out = [1]
    while out[-1] * 2 <= cpus:
        out.append(out[-1] * 2)
    if out[-1] != cpus and cpus > 1:
        out.append(cpus)
    if len(out) < 2:
        out.append(2)
    return out


def make_allocator(arm: str, size: int, ops: int, threads: int):
    import pgo
    # Room for every live block of every thread, and then some.
    cap = max(16 << 20, 4 * threads * LIVE * (size + 64))
    if arm == "slab":
        return pgo.SlabAllocator(size, align=16, threadsafe=True)
    if arm == "mapped":
        return pgo.MappedPool(cap, threadsafe=True)
    if arm == "hierarchical":
        return pgo.HierarchicalAllocator()
    if arm == "compacting":
        return pgo.CompactingAllocator(threadsafe=True)
    if arm == "adaptive":
        return pgo.AdaptiveAllocator(threadsafe=True)
    return pgo.NUMAAllocator(cap)


def run_in_process(c, arm: str, threads: int, ops: int, size: int, cross: bool):
    """(ns/op, contention waits) of one run."""
    if arm == "glibc":
        return c.concurrent("malloc", threads, ops, size, LIVE, cross), None
    a = make_allocator(arm, size, ops, threads)
    ns = c.concurrent(arm, threads, ops, size, LIVE, cross, a)
    st = a.stats()
    # The hierarchical allocator has no allocator-wide lock: its waits are
    # on the central lists' mutexes.
    return ns, st.get("central_waits", st["contention"])


def run_peer(lib: str, threads: int, ops: int, size: int, cross: bool) -> float:
    out = common.run_python(
        [str(Path(__file__).resolve()), "--peer-run", "--threads", str(threads),
         "--ops", str(ops), "--size", str(size)] + (["--cross"] if cross else []),
        env=common.child_env(LD_PRELOAD=lib), check=True, timeout=600)
    return float(out.stdout.split()[-1])


def render(doc) -> str:
    out = []
    w = out.append
    m = doc["machine"]
    w(f"concurrent allocators -- {m.get('cpu')} x{m.get('cpu_count')}, medians of "
      f"{doc['settings']['repeat']}; ns per alloc+free per thread (slowest thread)")
    for pattern in doc["settings"]["patterns"]:
        cells = [c for c in doc["cells"] if c["pattern"] == pattern]
        if not cells:
            continue
        arms = list(cells[0]["arms"])
        w(f"\n{pattern}: " + ("each thread churns its own blocks" if pattern == "pairs"
                              else "each thread frees its neighbour's blocks"))
        w(f"{'threads':>7}  " + "  ".join(f"{a:>10}" for a in arms)
          + "  " + "  ".join(f"{a + '/glibc':>12}" for a in PGO_ARMS if a in arms)
          + f"  {'best peer':>16}")
        for c in cells:
            vals = [c["arms"][a]["median_ns"] for a in arms]
            glibc = c["arms"]["glibc"]["median_ns"]
            ratios = [f"{c['arms'][a]['median_ns'] / glibc:12.2f}" for a in PGO_ARMS
                      if a in arms]
            peer = c.get("best_peer")
            w(f"{c['threads']:>7}  " + "  ".join(f"{v:10.1f}" for v in vals) + "  "
              + "  ".join(ratios) + (f"  {peer['arm']:>9} {peer['median_ns']:6.1f}"
                                     if peer else ""))
        first, last = cells[0], cells[-1]
        growth = ", ".join(
            f"{a} {last['arms'][a]['median_ns'] / first['arms'][a]['median_ns']:.2f}x"
            for a in arms)
        w(f"  from {first['threads']} to {last['threads']} threads: {growth}")
        cont = ", ".join(f"{a} {last['arms'][a]['contention_median']:,}" for a in PGO_ARMS
                         if a in arms and last["arms"][a].get("contention_median") is not None)
        if cont:
            w(f"  lock waits per run at {last['threads']} threads: {cont}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="threads on one allocator: pgo's thread-safe allocators vs glibc, "
                    "jemalloc, mimalloc and tcmalloc")
    ap.add_argument("--repeat", type=int, default=5, help="runs per arm and cell (default 5)")
    ap.add_argument("--threads", help="comma-separated thread counts (default: from "
                                      "os.cpu_count(): powers of two up to it, and it)")
    ap.add_argument("--patterns", default=",".join(PATTERNS),
                    help=f"comma-separated, of {', '.join(PATTERNS)} (default both)")
    ap.add_argument("--ops", type=int, default=200_000,
                    help="alloc+free pairs per thread per run (default 200000)")
    ap.add_argument("--size", type=int, default=64, help="bytes per block (default 64)")
    ap.add_argument("-o", "--output", default=str(common.RESULTS / "concurrent.json"),
                    help="JSON output (default benchmarks/results/concurrent.json)")
    ap.add_argument("--peer-run", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cross", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.peer_run:                       # a child with a peer preloaded
        c = _build.load_c_level()
        print(c.concurrent("malloc", int(args.threads), args.ops, args.size, LIVE, args.cross))
        return 0

    if args.repeat < 1 or args.ops < LIVE or args.size < 1:
        ap.error(f"--repeat must be >= 1, --ops >= {LIVE}, --size >= 1")
    patterns = [p for p in args.patterns.split(",") if p]
    bad = [p for p in patterns if p not in PATTERNS]
    if bad:
        ap.error(f"unknown pattern(s) {', '.join(bad)}; valid: {', '.join(PATTERNS)}")
    cpus = os.cpu_count() or 1
    try:
        threads = ([int(t) for t in args.threads.split(",")] if args.threads
                   else thread_counts(cpus))
    except ValueError:
        ap.error(f"--threads: expected comma-separated integers, got {args.threads!r}")
    if any(t < 1 or t > 256 for t in threads):
        ap.error("--threads: each count must be in 1..256")

    log = common.log
    started = time.perf_counter()
    info = common.machine_info()
    log("building c_level ...")
    c = _build.load_c_level()
    peers = {}
    for peer in common.PRELOAD_PEERS:
        lib = common.preload_library(peer)
        if lib is None:
            log(f"  {peer} left out: {common.preload_missing(peer)}")
        else:
            peers[peer] = lib
    arms = ["glibc", *peers, *PGO_ARMS]
    log(f"threads {threads} (os.cpu_count() = {cpus}), patterns {patterns}, arms {arms}")

    cells = []
    for pattern in patterns:
        cross = pattern == "cross"
        for t in threads:
            samples = {a: [] for a in arms}
            waits = {a: [] for a in PGO_ARMS}
            for rnd in range(args.repeat):
                for a in common.round_order(arms, rnd):
                    if a in peers:
                        ns, cont = run_peer(peers[a], t, args.ops, args.size, cross), None
                    else:
                        ns, cont = run_in_process(c, a, t, args.ops, args.size, cross)
                    samples[a].append(ns)
                    if cont is not None:
                        waits[a].append(cont)
            cell = {"pattern": pattern, "threads": t, "arms": {}}
            for a in arms:
                cell["arms"][a] = {
                    "median_ns": round(median(samples[a]), 2),
                    "runs_ns": [round(x, 2) for x in samples[a]],
                    "spread_iqr": round(spread_iqr(samples[a]), 4),
                }
                if a in waits:
                    cell["arms"][a]["contention"] = waits[a]
                    cell["arms"][a]["contention_median"] = int(median(waits[a]))
            if peers:
                best = min(peers, key=lambda p: cell["arms"][p]["median_ns"])
                cell["best_peer"] = {"arm": best, "median_ns": cell["arms"][best]["median_ns"]}
            cells.append(cell)
            log(f"  {pattern} x{t}: " + ", ".join(
                f"{a} {cell['arms'][a]['median_ns']:.1f}" for a in arms))
    common.finish_machine_info(info, started)
    settings = {"repeat": args.repeat, "threads": threads, "patterns": patterns,
                "ops_per_thread": args.ops, "size": args.size, "live_per_thread": LIVE,
                "value": "ns per alloc+free per thread, the slowest thread's"}
    doc = common.document("concurrent allocators", settings, info, cells=cells)
    path = common.write_json(args.output, doc)
    print(render(doc))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
