"""Memory given back after fragmentation: CompactingAllocator against glibc
and the three peers (the issue's CompactingAllocator target).

The workload: allocate N blocks of one size (1M by default), write every
byte of each, free a random 80% of them, then ask the allocator to give
memory back -- ``compact()`` for pgo, ``malloc_trim(0)`` for glibc,
``mallctl("arena.4096.purge")`` for jemalloc, ``mi_collect(true)`` for
mimalloc, ``MallocExtension_ReleaseFreeMemory()`` for tcmalloc -- and
check every byte of the survivors.  Each arm is a fresh process (the peers
by LD_PRELOAD), all arms of a round back to back, rounds in alternating
order.

Memory is the process's PSS (``/proc/self/smaps_rollup``: Pss_Anon +
Pss_Shmem) over its value before the workload: unlike RSS it counts a
meshed page once however many addresses map it (RSS counts it once per
address touched; the JSON has RSS too).  The ratio is that over the live
bytes (the survivors' requested bytes); the target is 1.5 or under after
compaction.

    python3 benchmarks/bench_compacting.py [--blocks 1000000] [--sizes 64,256] [--repeat 3]

writes benchmarks/results/compacting.json.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

ARMS = ("glibc", "jemalloc", "mimalloc", "tcmalloc", "compacting")
FREED = 0.8


def _memory() -> dict[str, int]:
    out = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss_Anon", "Pss_Shmem"):
                out[key] = int(rest.split()[0]) * 1024
    return {"pss": out.get("Pss_Anon", 0) + out.get("Pss_Shmem", 0), "rss": out["Rss"]}


def _give_back(arm: str, libc: ctypes.CDLL, allocator: object) -> None:
    if arm == "compacting":
        allocator.compact()                                   # type: ignore[attr-defined]
    elif arm == "glibc":
        libc.malloc_trim(0)
    elif arm == "jemalloc":
        libc.mallctl(b"arena.4096.purge", None, None, None, ctypes.c_size_t(0))
    elif arm == "mimalloc":
        libc.mi_collect(ctypes.c_bool(True))
    elif arm == "tcmalloc":
        libc.MallocExtension_ReleaseFreeMemory()


def child(arm: str, size: int, n: int, seed: int) -> dict[str, object]:
    import numpy as np

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    allocator = None
    if arm == "compacting":
        from pgo._core.compact import CompactingAllocator
        allocator = CompactingAllocator()
        alloc, free = allocator._alloc_address, allocator._free_address
    else:
        alloc, free = libc.malloc, libc.free
    # Everything the loops need is made before the first measurement, in
    # numpy arrays (8 bytes an address), so that the memory measured is the
    # allocator's: blocks, holes and its own tables.
    order = np.random.default_rng(seed).permutation(n)
    dead = np.sort(order[: int(n * FREED)])
    live = np.sort(order[int(n * FREED):])
    patterns = [bytes([v]) * size for v in range(251)]
    addrs = np.ones(n, dtype=np.uint64)                      # its pages touched now
    dead_list = dead.tolist()
    base = _memory()
    for i in range(n):
        addrs[i] = alloc(size)
    for i in range(n):
        ctypes.memset(int(addrs[i]), i % 251, size)
    full = _memory()
    for i in dead_list:
        free(int(addrs[i]))
    freed = _memory()
    t0 = time.perf_counter()
    _give_back(arm, libc, allocator)
    give_s = time.perf_counter() - t0
    after = _memory()
    bad = sum(ctypes.string_at(int(addrs[i]), size) != patterns[i % 251] for i in live.tolist())
    live_bytes = len(live) * size

    def ratio(m: dict[str, int]) -> float:
        return (m["pss"] - base["pss"]) / live_bytes

    return {"arm": arm, "size": size, "blocks": n, "live_bytes": live_bytes,
            "pss_full": full["pss"] - base["pss"], "pss_freed": freed["pss"] - base["pss"],
            "pss_after": after["pss"] - base["pss"], "rss_after": after["rss"] - base["rss"],
            "ratio_freed": round(ratio(freed), 3), "ratio_after": round(ratio(after), 3),
            "give_back_s": round(give_s, 4), "corrupt_blocks": bad,
            "stats": allocator.stats() if allocator is not None else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=1_000_000, help="blocks allocated (1M)")
    ap.add_argument("--sizes", default="64,256", help="block sizes in bytes (64,256)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported (3)")
    ap.add_argument("--out", default=str(c.RESULTS / "compacting.json"))
    ap.add_argument("--child", nargs=4, metavar=("ARM", "SIZE", "N", "SEED"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        arm, size, n, seed = args.child
        print(json.dumps(child(arm, int(size), int(n), int(seed)), default=str))
        return
    started = time.perf_counter()
    machine = c.machine_info()
    sizes = [int(s) for s in args.sizes.split(",")]
    arms = [a for a in ARMS if a in ("glibc", "compacting") or c.preload_library(a)]
    for a in ARMS:
        if a not in arms:
            c.log(f"{a}: skipped: {c.preload_missing(a)}")
    runs: list[dict[str, object]] = []
    for rnd in range(args.repeat):
        for size in sizes:
            for arm in c.round_order(arms, rnd):
                env = c.child_env()
                if arm in c.PRELOAD_PEERS:
                    env["LD_PRELOAD"] = str(c.preload_library(arm))
                c.log(f"round {rnd + 1}/{args.repeat}: {arm}, {args.blocks:,} blocks of {size} B")
                doc = c.run_child_json([__file__, "--child", arm, str(size), str(args.blocks),
                                        str(rnd + 1)], env=env, timeout=600)
                runs.append(doc)
    rows = []
    for size in sizes:
        for arm in arms:
            mine = [r for r in runs if r["arm"] == arm and r["size"] == size]
            rows.append({"arm": arm, "size": size,
                         "live_bytes": mine[0]["live_bytes"],
                         "ratio_freed": c.median(r["ratio_freed"] for r in mine),
                         "ratio_after": c.median(r["ratio_after"] for r in mine),
                         "rss_ratio_after": c.median(r["rss_after"] / r["live_bytes"]
                                                     for r in mine),
                         "give_back_s": c.median(r["give_back_s"] for r in mine),
                         "corrupt_blocks": sum(r["corrupt_blocks"] for r in mine)})
    print(f"\n{args.blocks:,} blocks, {FREED:.0%} freed at random; PSS over live bytes "
          f"(medians of {args.repeat})")
    print(f"{'size':>6} {'arm':>11} {'after frees':>12} {'after give-back':>16} "
          f"{'RSS after':>10} {'give-back s':>12} {'corrupt':>8}")
    for r in rows:
        print(f"{r['size']:>6} {r['arm']:>11} {r['ratio_freed']:>12.2f} {r['ratio_after']:>16.2f} "
              f"{r['rss_ratio_after']:>10.2f} {r['give_back_s']:>12.3f} {r['corrupt_blocks']:>8}")
    c.finish_machine_info(machine, started)
    c.save_json(args.out, c.document(
        "compacting", {"blocks": args.blocks, "sizes": sizes, "repeat": args.repeat,
                       "freed": FREED, "target_ratio_after": 1.5},
        machine, rows=rows, runs=runs))


if __name__ == "__main__":
    main()
