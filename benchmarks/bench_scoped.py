"""Which allocator serves a function's scoped temporaries best: the
per-function routing ``pgo run`` applies to a ``[[site]]`` rule, with an
arena, a stack or a cache behind it, against glibc.

    python3 benchmarks/bench_scoped.py [--rounds 8] [--tiles 16,32,64,128,256]
        [-o benchmarks/results/scoped.json]

The work is ``pgo.targets.scoped_temps.filter_tile`` (gradients, magnitude,
mask, histogram of one tile: half a dozen temporaries of tile x tile
float64 each, all dead when it returns), called on 16 tiles in turn.
One process; glibc's trimming and mmap threshold are turned off for the
whole of it (``mallopt``), so the ``glibc`` arm is glibc at its best here,
as fast as tcmalloc on this work, and the pgo arms are compared with it:

- ``glibc``: the function as it is (numpy's default handler);
- ``arena`` / ``stack`` / ``cache``: the function decorated by the
  runtime's ``SiteRouter`` with that allocator (as a ``[[site]]`` rule),
  with the settings ``pgo analyze`` writes for blocks of that size;
- ``cache-process``: a cache for blocks of 4 KiB+ installed for the whole
  process (no per-call switch: what the routing costs).

Every round runs every arm once (a short warm-up, then a timed batch of
calls), in reversed order every other round; reported: each arm's median
over the rounds and its ratio to ``glibc``'s median.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import sys
import time

import _common as common  # first: puts this checkout's pgo on sys.path

import numpy as np

import pgo
from pgo.analysis.optimizer import site_settings
from pgo.runtime.sites import SiteRouter
from pgo.targets.scoped_temps import filter_tile

KEY = "pgo.targets.scoped_temps:filter_tile"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--tiles", default="16,32,64,128,256", help="tile edges, pixels")
    parser.add_argument("-o", "--output", default="benchmarks/results/scoped.json")
    args = parser.parse_args()
    libc = ctypes.CDLL(None)
    libc.mallopt(-1, 1 << 30)      # M_TRIM_THRESHOLD
    libc.mallopt(-3, 1 << 30)      # M_MMAP_THRESHOLD
    results = {}
    for edge in (int(t) for t in args.tiles.split(",")):
        image = np.random.default_rng(2).random((edge * 4, edge * 4))
        tiles = [image[r * edge:(r + 1) * edge, c * edge:(c + 1) * edge]
                 for r in range(4) for c in range(4)]
        calls = max(600, int(600 * (128 / edge) ** 2)) if edge < 128 else 600
        # Each with the settings `pgo analyze` would write for these blocks.
        block = edge * edge * 8
        routers = {
            "arena": pgo.ArenaAllocator(**dict(site_settings("arena", block)), threadsafe=True),
            "stack": pgo.StackAllocator(**dict(site_settings("stack", block)), threadsafe=True),
            "cache": pgo.CacheAllocator(**dict(site_settings("cache", block))),
        }
        arms: dict[str, tuple[object, object]] = {"glibc": (contextlib.nullcontext(), filter_tile)}
        for name, allocator in routers.items():
            router = SiteRouter([(KEY, allocator)])
            arms[name] = (contextlib.nullcontext(), router.decorator(*KEY.split(":"))(filter_tile))
        process = pgo.Router([pgo.SizeClass(4096, None, pgo.CacheAllocator(64 << 20))])
        arms["cache-process"] = (pgo.use(process), filter_tile)

        def run(fn, n):
            total = np.zeros(16, np.int64)
            for i in range(n):
                total += fn(tiles[i % 16])
            return total

        times: dict[str, list[float]] = {a: [] for a in arms}
        for rnd in range(args.rounds):
            for arm in common.round_order(list(arms), rnd):
                ctx, fn = arms[arm]
                with ctx:
                    run(fn, 32)
                    t0 = time.perf_counter()
                    run(fn, calls)
                    times[arm].append(time.perf_counter() - t0)
        base = common.median(times["glibc"])
        row = {arm: {"median_s": common.median(v), "ratio": common.median(v) / base,
                     "runs_s": v} for arm, v in times.items()}
        results[f"{edge}x{edge}"] = {"array_bytes": edge * edge * 8, "calls": calls, "arms": row}
        common.log(f"tile {edge}x{edge} ({edge * edge * 8 // 1024} KiB arrays, {calls} calls): "
                   + "  ".join(f"{a} {r['median_s'] * 1e3:.0f} ms x{r['ratio']:.3f}"
                               for a, r in row.items()))
    common.save_json(args.output, {"benchmark": "scoped", "rounds": args.rounds,
                                   "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
