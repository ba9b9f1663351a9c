"""GC-free containers vs the built-ins: Vector / IntMap / StringBuilder vs
list / dict / io.BytesIO, side by side in one run.

    python3 benchmarks/bench_containers.py [--repeat 5] [--quick] [-n 1000000]
        [-o benchmarks/results/containers.json]

Rows (N = 1M elements by default):

- vector_i64: ``v.append(i)`` for i in range(N) vs ``list.append``; read back
  ``v[i]`` for every i.
- vector_f64: the same with ``i * 0.5``.
- intmap: ``m[k] = i`` for N distinct int keys ``k = i * 2654435761 mod 2**62``
  (computed in the loop, so the dict owns its key and value objects, as it
  would for keys parsed or computed at run time) vs a dict; read back ``m[k]``.
- stringbuilder: ``write`` of N short byte strings (made up front, outside
  the measurement) vs ``io.BytesIO.write``; read back ``getvalue()``.

Every measurement of every arm runs in a fresh subprocess, so arms never
share a heap: one process measures build time, RSS added (resident pages
from /proc/self/statm before and after the build, the container kept
alive), GC-tracked objects added (``len(gc.get_objects())``, gc disabled
during the build), read-back time and the time of one full ``gc.collect()``
with the container alive; a second one measures the tracemalloc peak of the
build.  NOTE: tracemalloc only sees Python's allocators; the pgo
containers allocate with malloc, so their peak is near zero there and the
``c_bytes`` column (the container's own buffer size) says what it holds.
RSS is the comparison that sees both.

Arms of a row alternate order between repetitions; the table shows medians.
Check target: IntMap adds <= 1/3 of the RSS a dict of the same keys adds,
and zero GC-tracked objects.  A measurement, not a test: it never fails on a
missed target.
"""

from __future__ import annotations

# NOTE: the child (--_child) runs this module too, and its gc_collect_s is a
# full collection over every object in the process: the child imports these
# modules and no more, as it always has (importing _common there would add
# ~1,000 objects, ~10 % of a collection).  The parent imports _common where
# it needs it.
import argparse
import datetime  # noqa: F401  (see NOTE)
import json
import os
import platform
import statistics  # noqa: F401  (see NOTE)
import subprocess  # noqa: F401  (see NOTE)
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "containers.json"
PAGE = os.sysconf("SC_PAGE_SIZE")
KEY_MUL = 2654435761
KEY_MASK = (1 << 62) - 1

ROWS = {
    # row: (pgo arm, builtin arm)
    "vector_i64": ("Vector(int64)", "list"),
    "vector_f64": ("Vector(float64)", "list"),
    "intmap": ("IntMap", "dict"),
    "stringbuilder": ("StringBuilder", "io.BytesIO"),
}


# -- the child: one arm, one measurement, one fresh process ------------------------

def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _arm(row, pgo_side, n):
    """(prepare, build, read, c_bytes): build() returns the container."""
    import io

    if row == "stringbuilder":
        chunks = [b"item-%07d;" % i for i in range(n)]
        if pgo_side:
            from pgo import StringBuilder

            def build():
                sb = StringBuilder()
                w = sb.write
                for c in chunks:
                    w(c)
                return sb
        else:
            def build():
                b = io.BytesIO()
                w = b.write
                for c in chunks:
                    w(c)
                return b

        def read(obj):
            return len(obj.getvalue())
        return chunks, build, read

    if row == "intmap":
        if pgo_side:
            from pgo import IntMap

            def build():
                m = IntMap()
                for i in range(n):
                    m[(i * KEY_MUL) & KEY_MASK] = i
                return m
        else:
            def build():
                d = {}
                for i in range(n):
                    d[(i * KEY_MUL) & KEY_MASK] = i
                return d

        def read(obj):
            s = 0
            for i in range(n):
                s += obj[(i * KEY_MUL) & KEY_MASK]
            return s
        return None, build, read

    floats = row == "vector_f64"
    if pgo_side:
        from pgo import Vector

        def new():
            return Vector("float64" if floats else "int64")
    else:
        new = list
    if floats:
        def build():
            v = new()
            ap = v.append
            for i in range(n):
                ap(i * 0.5)
            return v
    else:
        def build():
            v = new()
            ap = v.append
            for i in range(n):
                ap(i)
            return v

    def read(obj):
        s = 0
        for i in range(n):
            s += obj[i]
        return s
    return None, build, read


def _c_bytes(obj):
    name = type(obj).__name__
    if name == "Vector":
        return obj.capacity * 8
    if name == "IntMap":
        return obj.nbytes
    if name == "StringBuilder":
        return obj.capacity
    return 0


def child(row, side, what, n):
    import gc
    import time
    import numpy  # noqa: F401  (same imports in every arm: pgo needs numpy)
    import pgo  # noqa: F401

    pgo_side = side == "pgo"
    _keep, build, read = _arm(row, pgo_side, n)
    if what == "tracemalloc":
        import tracemalloc
        gc.collect()
        tracemalloc.start()
        obj = build()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return {"tracemalloc_peak": peak, "c_bytes": _c_bytes(obj)}
    gc.collect()
    gc.disable()
    rss0 = _rss()
    objs0 = len(gc.get_objects())
    t0 = time.perf_counter()
    obj = build()
    t1 = time.perf_counter()
    objs1 = len(gc.get_objects())
    rss1 = _rss()
    gc.enable()
    t2 = time.perf_counter()
    read(obj)
    t3 = time.perf_counter()
    gc.collect()
    t4 = time.perf_counter()
    gc.collect()
    t5 = time.perf_counter()
    return {
        "build_s": t1 - t0,
        "read_s": t3 - t2,
        "rss_added": rss1 - rss0,
        "gc_objects_added": objs1 - objs0,
        "gc_tracked": gc.is_tracked(obj),
        # The first collect also frees the garbage of the read; the second
        # is the steady cost of a full collection with the container alive.
        "gc_collect_s": t5 - t4,
        "len": len(obj) if hasattr(obj, "__len__") else None,
    }


# -- the parent ------------------------------------------------------------------

def run_child(row, side, what, n):
    import _common as common

    return common.run_child_json([__file__, "--_child", row, side, what, str(n)],
                                 env=common.child_env())


METRICS = ("build_s", "read_s", "tracemalloc_peak", "c_bytes", "rss_added",
           "gc_objects_added", "gc_collect_s")


def measure(n, repeat, rows, log=print):
    import _common as common

    samples = {row: {side: {m: [] for m in METRICS} for side in ("pgo", "builtin")}
               for row in rows}
    for r in range(repeat):
        for row in rows:
            for side in common.round_order(("pgo", "builtin"), r):
                for what in ("main", "tracemalloc"):
                    res = run_child(row, side, what, n)
                    for m in METRICS:
                        if m in res:
                            samples[row][side][m].append(res[m])
        log(f"  repetition {r + 1}/{repeat} done")
    med = {row: {side: {m: common.median(v) for m, v in d.items() if v}
                 for side, d in sides.items()}
           for row, sides in samples.items()}
    return samples, med


def _fmt(m, x):
    if m.endswith("_s"):
        return f"{x * 1e3:9.1f} ms"
    if m in ("tracemalloc_peak", "c_bytes", "rss_added"):
        return f"{x / 2**20:8.1f} MiB"
    return f"{x:12,.0f}"


def table(med):
    lines = []
    head = f"{'row':14} {'metric':17} {'pgo':>13} {'builtin':>13} {'pgo/builtin':>12}"
    lines.append(head)
    lines.append("-" * len(head))
    for row, (pname, bname) in ROWS.items():
        if row not in med:
            continue
        lines.append(f"{row:14} ({pname} vs {bname})")
        for m in METRICS:
            p, b = med[row]["pgo"].get(m), med[row]["builtin"].get(m)
            if p is None or b is None:
                continue
            ratio = f"{p / b:12.3f}" if b else f"{'-':>12}"
            lines.append(f"{'':14} {m:17} {_fmt(m, p):>13} {_fmt(m, b):>13} {ratio}")
    return "\n".join(lines)


def check(med):
    out = {}
    if "intmap" in med:
        p, b = med["intmap"]["pgo"], med["intmap"]["builtin"]
        ratio = p["rss_added"] / b["rss_added"] if b["rss_added"] > 0 else float("inf")
        out["intmap_rss_ratio"] = ratio
        out["intmap_rss_target_met"] = ratio <= 1 / 3
        out["intmap_gc_objects_added"] = p["gc_objects_added"]
        out["intmap_gc_target_met"] = p["gc_objects_added"] == 0
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5, help="repetitions (medians); default 5")
    ap.add_argument("-n", type=int, default=1_000_000, help="elements per container; default 1M")
    ap.add_argument("--quick", action="store_true", help="100k elements, 2 repetitions")
    ap.add_argument("--only", choices=sorted(ROWS), action="append", help="rows to run")
    ap.add_argument("-o", "--output", type=Path, default=DEFAULT_OUT, help="JSON results")
    ap.add_argument("--_child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        row, side, what, n = args._child
        print(json.dumps(child(row, side, what, int(n))))
        return 0
    import _common as common

    n, repeat = (100_000, 2) if args.quick else (args.n, args.repeat)
    rows = args.only or list(ROWS)
    print(f"containers: n={n:,}, repeat={repeat}, rows={rows}")
    samples, med = measure(n, repeat, rows)
    print()
    print(table(med))
    chk = check(med)
    if chk:
        print()
        print(f"target: IntMap RSS added <= 1/3 of dict's: ratio {chk['intmap_rss_ratio']:.3f} "
              f"-> {'MET' if chk['intmap_rss_target_met'] else 'MISSED'}")
        print(f"target: IntMap adds 0 GC-tracked objects: {chk['intmap_gc_objects_added']:.0f} "
              f"-> {'MET' if chk['intmap_gc_target_met'] else 'MISSED'}")
    result = {
        "benchmark": "containers",
        "date": common.utc_now("seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "n": n,
        "repeat": repeat,
        "rows": {row: {"arms": dict(zip(("pgo", "builtin"), ROWS[row])), **med[row]}
                 for row in med},
        "samples": samples,
        "check": chk,
    }
    common.write_json(args.output, result, indent=2)
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
