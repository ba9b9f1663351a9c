"""BufferPool vs fresh allocation: a steady-state get / fill / give-back loop.

    python3 benchmarks/bench_pools.py [--repeat 5] [--quick]
        [-o benchmarks/results/pools.json]

One row per buffer size n (4 KiB, 16 KiB, 64 KiB, 256 KiB, 1 MiB, 4 MiB),
each comparing two arms measured in the same repetition, right next to
each other:

pool:   ``view = pool.get_buffer(n); view[:] = data; view[n - 1];
        pool.put_buffer(view)``  (a ``pgo.BufferPool()`` of bytearrays,
        warmed with one get/put so the loop runs in steady state)
fresh:  ``buf = bytearray(n); buf[:] = data; buf[n - 1]; del buf``

``data`` is a prepared ``bytes`` object of n bytes, so both arms write
every byte of the buffer once and read one back.  Value: ns per iteration
(loop overhead included in both arms), and minor page faults per iteration
(``resource.getrusage(RUSAGE_SELF).ru_minflt`` delta over the run).

Every arm is timed ``--repeat`` times; each timing is one loop of a fixed
number of iterations, calibrated beforehand to last about 0.2 s (0.05 s
with ``--quick``) and timed with ``time.perf_counter``.  Within a
repetition the two arms run back to back, in alternating order from one
repetition to the next, so drift on a noisy machine hits both alike.  The
table reports medians and ``speedup = fresh median / pool median`` (> 1:
the pool is faster), with the pool's hit rate over the timed loops (from
``pool.stats()``).

Targets (reported as MET / MISSED, never a failure): hit rate >= 95 % at
every size in steady state; speedup >= 2x at n >= 64 KiB.  Results go to
JSON; this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import sys
import time

import _common as common
from _common import KIB, MIB, median

import pgo

SIZES = (4 * KIB, 16 * KIB, 64 * KIB, 256 * KIB, 1 * MIB, 4 * MIB)
HIT_RATE_TARGET = 0.95
SPEEDUP_TARGET = 2.0
SPEEDUP_MIN_SIZE = 64 * KIB


def _minflt():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# ---------------------------------------------------------------------------
# The loops: each runs `iters` iterations; Arm.run times it.

def loop_pool(pool, data, n, iters):
    get, put = pool.get_buffer, pool.put_buffer
    last = n - 1
    for _ in range(iters):
        view = get(n)
        view[:] = data
        view[last]
        put(view)


def loop_fresh(data, n, iters):
    last = n - 1
    for _ in range(iters):
        buf = bytearray(n)
        buf[:] = data
        buf[last]
        del buf


class Arm:
    def __init__(self, name, loop):
        self.name = name
        self.loop = loop          # loop(iters): the iterations alone
        self.iters = 1
        self.ns = []
        self.faults = []

    def run(self, iters):
        """Seconds for `iters` iterations."""
        loop = self.loop
        t0 = time.perf_counter()
        loop(iters)
        return time.perf_counter() - t0

    def calibrate(self, target_s):
        iters = 1
        while True:
            t = self.run(iters)
            if t >= target_s / 10 or iters >= 1 << 24:
                break
            iters *= 4
        self.iters = max(1, int(iters * target_s / max(t, 1e-9)))

    def sample(self):
        gc.collect()
        f0 = _minflt()
        t = self.run(self.iters)
        f1 = _minflt()
        self.ns.append(t * 1e9 / self.iters)
        self.faults.append((f1 - f0) / self.iters)


def bench_size(n, repeat, target_s):
    data = bytes(range(256)) * (n // 256)
    assert len(data) == n
    pool = pgo.BufferPool()
    pool.put_buffer(pool.get_buffer(n))                 # warm: steady state
    pool_arm = Arm("pool", lambda iters: loop_pool(pool, data, n, iters))
    fresh_arm = Arm("fresh", lambda iters: loop_fresh(data, n, iters))
    pool_arm.calibrate(target_s)
    fresh_arm.calibrate(target_s)

    before = pool.stats()
    for r in range(repeat):
        for arm in common.round_order((pool_arm, fresh_arm), r):
            arm.sample()
    after = pool.stats()
    hits = after["hits"] - before["hits"]
    misses = after["misses"] - before["misses"]
    hit_rate = hits / (hits + misses) if hits + misses else 0.0

    pool_ns = median(pool_arm.ns)
    fresh_ns = median(fresh_arm.ns)
    speedup = fresh_ns / pool_ns
    paired = median(common.paired_ratios(fresh_arm.ns, pool_arm.ns))
    row = {
        "size": n,
        "label": common.size_label(n),
        "pool_ns": pool_ns,
        "fresh_ns": fresh_ns,
        "speedup": speedup,
        "speedup_paired": paired,
        "pool_faults_per_op": median(pool_arm.faults),
        "fresh_faults_per_op": median(fresh_arm.faults),
        "hit_rate": hit_rate,
        "hits": hits,
        "misses": misses,
        "pool_iters": pool_arm.iters,
        "fresh_iters": fresh_arm.iters,
        "pool_ns_samples": pool_arm.ns,
        "fresh_ns_samples": fresh_arm.ns,
        "pool_stats": after,
        "targets": {},
    }
    row["targets"]["hit_rate>=95%"] = "MET" if hit_rate >= HIT_RATE_TARGET else "MISSED"
    if n >= SPEEDUP_MIN_SIZE:
        row["targets"][">=2x"] = "MET" if speedup >= SPEEDUP_TARGET else "MISSED"
    pool.clear()
    return row


def print_table(rows, out=sys.stdout):
    hdr = (f"{'size':>8} {'pool ns/op':>12} {'fresh ns/op':>12} {'speedup':>8} "
           f"{'pool flt/op':>11} {'fresh flt/op':>12} {'hit rate':>9}  "
           f"{'hit>=95%':>8} {'>=2x':>7}")
    print(hdr, file=out)
    print("-" * len(hdr), file=out)
    for r in rows:
        t = r["targets"]
        print(f"{r['label']:>8} {r['pool_ns']:>12,.0f} {r['fresh_ns']:>12,.0f} "
              f"{r['speedup']:>7.2f}x {r['pool_faults_per_op']:>11.2f} "
              f"{r['fresh_faults_per_op']:>12.2f} {r['hit_rate'] * 100:>8.2f}%  "
              f"{t['hit_rate>=95%']:>8} {t.get('>=2x', '-'):>7}", file=out)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="BufferPool vs fresh bytearray allocation, steady-state loop.")
    ap.add_argument("-o", "--output", default=str(common.RESULTS / "pools.json"),
                    help="JSON results file (default: benchmarks/results/pools.json)")
    ap.add_argument("--repeat", type=int, default=5,
                    help="timed runs per arm; medians are reported (default 5)")
    ap.add_argument("--quick", action="store_true",
                    help="shorter runs (~0.05 s each) and at most 3 repeats")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    repeat = min(args.repeat, 3) if args.quick else args.repeat
    target_s = 0.05 if args.quick else 0.2

    print(f"bench_pools: repeat={repeat} target={target_s}s per run, "
          f"Python {platform.python_version()}, pid {os.getpid()}", file=sys.stderr)
    rows = []
    for n in SIZES:
        rows.append(bench_size(n, repeat, target_s))
        print(f"  {common.size_label(n)} done", file=sys.stderr)

    print_table(rows)
    met = sum(v == "MET" for r in rows for v in r["targets"].values())
    total = sum(len(r["targets"]) for r in rows)
    print(f"\ntargets met: {met}/{total}")

    result = {
        "benchmark": "pools",
        "date": common.utc_now(),
        "python": sys.version,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "repeat": repeat,
        "target_s": target_s,
        "quick": args.quick,
        "targets": {"hit_rate": HIT_RATE_TARGET, "speedup": SPEEDUP_TARGET,
                    "speedup_min_size": SPEEDUP_MIN_SIZE},
        "rows": rows,
    }
    common.save_json(args.output, result, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
