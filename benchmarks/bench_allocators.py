"""Allocators vs standard: pgo's allocators side by side with glibc and numpy.

    python3 benchmarks/bench_allocators.py [--repeat 7] [--quick]
        [-o benchmarks/results/allocators.json] [--only c|py]

Two sections, each a set of *rows*; a row compares one pgo arm with a
baseline arm measured in the same repetition, right next to it:

C level (``benchmarks/c_level.pyx.tp``, expanded and built at run time by
``build.py``):
``nogil`` loops calling the inline ``.pxd`` paths vs glibc ``malloc``/
``free`` doing the same pattern in the same loop shape, at 16 B, 256 B,
4 KiB and 64 KiB.  Value: ns per operation (see c_level.pyx.tp for what an
operation is in each pattern).  The mixed-size churn also runs glibc's arm
with jemalloc, mimalloc and tcmalloc preloaded into a child process (the
same loop, timed inside it), against the mapped pool.

Python level: ``alloc()`` + ``free()`` / ``del`` pairs vs ``bytearray(64)``,
and ``allocator.empty(n)`` vs ``np.empty(n)`` (float64) for n = 16 .. 8M,
each array dropped before the next.  Value: ns per statement, loop
overhead included (the ``pass`` row shows how much that is).

Every arm is timed ``--repeat`` times; within a repetition the arms of one
row-group run back to back, in alternating order from one repetition to the
next, so drift on a noisy machine hits both sides alike.  The table reports
medians and ``speedup = baseline median / arm median`` (> 1: pgo is
faster), with the median of the per-repetition ratios as a check.  Results
go to JSON; this is a measurement, not a test, and never fails on a missed
target.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import platform
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import _common as common
import build as _build  # benchmarks/build.py
from _common import median, size_label, spread_iqr

C_SIZES = (16, 256, 4096, 65536)
TARGET_SIZES_FAST = (16, 256)             # stack / linear targets apply here
LIFO_DEPTH = 8
BULK_BATCH = 64
CHURN_LIVE = 512
EMPTY_NS = (16, 256, 4096, 65536, 524288, 1 << 20, 8 << 20)
TOUCH_NS = (1 << 20, 8 << 20)                # 8 MiB and 64 MiB, every page written
SMALL_EMPTY_MAX = 4096                    # "small arrays": up to 32 KiB of float64
BIG_EMPTY_MIN_BYTES = 4 << 20             # "4 MiB and more"
PY_BATCH = 100                            # statements per inner loop
COMPACTING_MAX_BYTES = 16384              # the largest block a compacting allocator serves
MIXED_MAX = 65536                         # mixed churn: sizes 16 B .. this


# ---------------------------------------------------------------------------
# Arms: something that, given a size of work, returns ns per operation.

@dataclass(eq=False)
class Arm:
    """One measured thing.  `run(work)` returns ns/op; `calibrate` picks `work`."""

    key: str
    label: str
    _run: Callable[[int], float]
    min_work: int
    max_work: int
    ops_per_work: int = 1
    describe: str = ""
    work: int = field(init=False)           # units of work per sample: calibrate() sets it
    samples: list[float] = field(default_factory=list, init=False)

    def __post_init__(self):
        self.work = self.min_work

    def calibrate(self, target_s):
        self._run(self.min_work)                   # warm: first-touch, code paths
        ns = self._run(self.min_work) * self.ops_per_work     # ns per unit of work
        work = int(target_s * 1e9 / max(ns, 0.05))
        self.work = max(self.min_work, min(self.max_work, work))

    def sample(self):
        self.samples.append(self._run(self.work))

    def to_json(self):
        return {
            "key": self.key,
            "label": self.label,
            "median_ns": round(median(self.samples), 4),
            "repeats_ns": [round(x, 4) for x in self.samples],
            "spread_iqr": round(spread_iqr(self.samples), 4),
            "ops_per_sample": self.work * self.ops_per_work,
            "describe": self.describe,
        }


@dataclass(eq=False)
class Row:
    """A pgo arm against a baseline arm (both shared by reference)."""

    section: str
    group: str
    name: str
    arm: Arm
    baseline: Arm
    size: int | None = None
    pattern: str = ""
    target: Callable[[Row], dict | None] | None = None
    reference: Arm | None = None
    note: str = ""
    show_ratio: bool = True
    peers: list[Arm] = field(default_factory=list)   # the baseline's twins under the peers

    def best_peer(self):
        return min(self.peers, key=lambda a: median(a.samples)) if self.peers else None

    def speedup(self):
        return median(self.baseline.samples) / median(self.arm.samples)

    def speedup_paired(self):
        return median(common.paired_ratios(self.baseline.samples, self.arm.samples))

    def to_json(self):
        out = {
            "section": self.section,
            "group": self.group,
            "row": self.name,
            "pattern": self.pattern,
            "size": self.size,
            "arm": self.arm.to_json(),
            "baseline": self.baseline.to_json(),
            "speedup": round(self.speedup(), 4),
            "speedup_paired": round(self.speedup_paired(), 4),
            "note": self.note,
        }
        best = self.best_peer()
        if best is not None:
            out["peers"] = {a.label: a.to_json() for a in self.peers}
            out["best_peer"] = best.label
            out["speedup_vs_best_peer"] = round(
                median(best.samples) / median(self.arm.samples), 4)
        if self.reference is not None:
            out["reference"] = self.reference.to_json()
            out["arm_over_reference"] = round(
                median(self.arm.samples) / median(self.reference.samples), 4)
        tgt = self.target(self) if self.target else None
        if tgt is not None:
            out["target"] = tgt
        return out


def run_groups(groups, repeat, target_s, log):
    """groups: list of lists of Arms.  Calibrate, then sample round-robin."""
    n_arms = sum(len(g) for g in groups)
    log(f"  calibrating {n_arms} arms ...")
    for g in groups:
        for arm in g:
            arm.calibrate(target_s)
    for rep in range(repeat):
        t0 = time.perf_counter()
        for g in groups:
            for arm in common.round_order(g, rep):
                arm.sample()
        log(f"  repetition {rep + 1}/{repeat}: {time.perf_counter() - t0:.1f} s")


# ---------------------------------------------------------------------------
# Targets

def _speedup_target(threshold, text):
    def check(row):
        s = row.speedup()
        return {"text": text, "metric": "speedup", "threshold": threshold,
                "value": round(s, 3), "met": bool(s >= threshold)}
    return check


def _pair_target(bytearray_arm):
    def check(row):
        ns = median(row.arm.samples)
        ba = median(bytearray_arm.samples)
        return {"text": "alloc+free pair < 60 ns and faster than bytearray(64)",
                "metric": "ns", "threshold": min(60.0, ba), "value": round(ns, 2),
                "bytearray_ns": round(ba, 2), "met": bool(ns < 60.0 and ns < ba)}
    return check


def _empty_target(n):
    nbytes = n * 8
    if n <= SMALL_EMPTY_MAX:
        return _speedup_target(1 / 1.3, "small array: within 1.3x of np.empty (speedup >= 0.769)")
    if nbytes >= BIG_EMPTY_MIN_BYTES:
        def check(row):
            s = row.speedup()
            return {"text": ">= 4 MiB: faster than np.empty", "metric": "speedup",
                    "threshold": 1.0, "value": round(s, 3), "met": bool(s > 1.0)}
        return check
    return None


# ---------------------------------------------------------------------------
# C level

def c_level_rows(c):
    """Build arms and rows for the C-level section.

    Every glibc arm has a twin per peer (jemalloc, mimalloc, tcmalloc: the
    same call in a child process with the library preloaded), in the same
    group, so each row also reports the best peer's time next to pgo's.
    """
    groups, rows = [], []
    big = 50_000_000
    peers = {}
    for peer in common.PRELOAD_PEERS:
        lib = common.preload_library(peer)
        if lib is None:
            common.log(f"  {peer} left out: {common.preload_missing(peer)}")
        else:
            peers[peer] = lib

    def arm(key, label, fn, describe, min_work=20_000):
        return Arm(key, label, fn, min_work=min_work, max_work=big, describe=describe)

    def twins(ml, fn, **kwargs):
        # The peers' arms for glibc's arm `ml`: c.<fn>("malloc", ops=work, **kwargs).
        return [arm(f"{ml.key}.{peer}", peer, _peer_arm(lib, fn, kwargs), ml.describe)
                for peer, lib in peers.items()]

    for size in C_SIZES:
        fast = size in TARGET_SIZES_FAST
        # LIFO depth 8 and plain pairs (depth 1).
        for depth, pat in ((LIFO_DEPTH, f"LIFO: alloc {LIFO_DEPTH}, free newest first"),
                           (1, "alloc/free pairs (LIFO depth 1)")):
            st = arm(f"c.lifo{depth}.stack.{size}", "stack",
                     lambda w, s=size, d=depth: c.lifo("stack", s, w, d), pat)
            ml = arm(f"c.lifo{depth}.malloc.{size}", "malloc/free",
                     lambda w, s=size, d=depth: c.lifo("malloc", s, w, d), pat)
            rf = arm(f"c.lifo{depth}.ref.{size}", "ref: inline bump pointer",
                     lambda w, s=size, d=depth: c.lifo("ref", s, w, d), pat)
            pa = twins(ml, "lifo", size=size, depth=depth)
            g = [st, ml, rf, *pa]
            tgt = _speedup_target(8.0, "stack >= 8x malloc/free at 16-256 B") if fast else None
            rows.append(Row("c", f"lifo{depth}", "stack", st, ml, size=size, pattern=pat,
                            target=tgt, reference=rf, peers=pa))
            if depth == LIFO_DEPTH:
                ts = arm(f"c.lifo{depth}.stack_ts.{size}", "stack threadsafe",
                         lambda w, s=size, d=depth: c.lifo("stack", s, w, d, True), pat)
                g.append(ts)
                rows.append(Row("c", f"lifo{depth}", "stack (threadsafe)", ts, ml, size=size,
                                pattern=pat, note="mutex on every call; no target", peers=pa))
            groups.append(g)
        # Bulk: linear and arena vs malloc + free-all.
        pat = f"bulk: alloc {BULK_BATCH}, then reset (glibc: free each)"
        ml = arm(f"c.bulk.malloc.{size}", "malloc/free",
                 lambda w, s=size: c.bulk("malloc", s, w, BULK_BATCH), pat)
        li = arm(f"c.bulk.linear.{size}", "linear",
                 lambda w, s=size: c.bulk("linear", s, w, BULK_BATCH), pat)
        ar = arm(f"c.bulk.arena.{size}", "arena",
                 lambda w, s=size: c.bulk("arena", s, w, BULK_BATCH), pat)
        rf = arm(f"c.bulk.ref.{size}", "ref: inline bump pointer",
                 lambda w, s=size: c.bulk("ref", s, w, BULK_BATCH), pat)
        lts = arm(f"c.bulk.linear_ts.{size}", "linear threadsafe",
                  lambda w, s=size: c.bulk("linear", s, w, BULK_BATCH, True), pat)
        ats = arm(f"c.bulk.arena_ts.{size}", "arena threadsafe",
                  lambda w, s=size: c.bulk("arena", s, w, BULK_BATCH, True), pat)
        pa = twins(ml, "bulk", size=size, batch=BULK_BATCH)
        groups.append([li, ar, ml, rf, lts, ats, *pa])
        rows.append(Row("c", "bulk", "linear", li, ml, size=size, pattern=pat, reference=rf,
                        target=(_speedup_target(8.0, "linear >= 8x malloc/free at 16-256 B")
                                if fast else None), peers=pa))
        rows.append(Row("c", "bulk", "arena", ar, ml, size=size, pattern=pat, reference=rf,
                        target=_speedup_target(5.0, "arena >= 5x malloc/free"),
                        note="1 MiB chunks (default)", peers=pa))
        rows.append(Row("c", "bulk", "linear (threadsafe)", lts, ml, size=size, pattern=pat,
                        note="mutex on every call; no target", peers=pa))
        rows.append(Row("c", "bulk", "arena (threadsafe)", ats, ml, size=size, pattern=pat,
                        note="mutex on every call; no target", peers=pa))
        # Churn: slab and the hierarchical allocator vs malloc.
        pat = f"churn: {CHURN_LIVE} live, free a random one, alloc again"
        sl = arm(f"c.churn.slab.{size}", "slab",
                 lambda w, s=size: c.churn("slab", s, w, CHURN_LIVE), pat)
        hi = arm(f"c.churn.hier.{size}", "hierarchical",
                 lambda w, s=size: c.churn("hier", s, w, CHURN_LIVE), pat)
        ml = arm(f"c.churn.malloc.{size}", "malloc/free",
                 lambda w, s=size: c.churn("malloc", s, w, CHURN_LIVE), pat)
        rf = arm(f"c.churn.ref.{size}", "ref: inline free list",
                 lambda w, s=size: c.churn("ref", s, w, CHURN_LIVE), pat)
        sts = arm(f"c.churn.slab_ts.{size}", "slab threadsafe",
                  lambda w, s=size: c.churn("slab", s, w, CHURN_LIVE, True), pat)
        cp = (arm(f"c.churn.compact.{size}", "compacting",
                  lambda w, s=size: c.churn("compact", s, w, CHURN_LIVE), pat)
              if size <= COMPACTING_MAX_BYTES else None)
        pa = twins(ml, "churn", size=size, live=CHURN_LIVE)
        groups.append([sl, hi, ml, rf, sts, *([cp] if cp else []), *pa])
        rows.append(Row("c", "churn", "slab", sl, ml, size=size, pattern=pat, reference=rf,
                        target=_speedup_target(6.0, "slab >= 6x malloc/free on fixed-size churn"),
                        peers=pa))
        rows.append(Row("c", "churn", "hierarchical", hi, ml, size=size, pattern=pat,
                        reference=rf, note="one thread: see bench_concurrent.py for more",
                        peers=pa))
        rows.append(Row("c", "churn", "slab (threadsafe)", sts, ml, size=size, pattern=pat,
                        note="mutex on every call; no target", peers=pa))
        if cp:
            rows.append(Row("c", "churn", "compacting", cp, ml, size=size, pattern=pat,
                            note="no target: chosen for memory (bench_compacting.py)",
                            peers=pa))
    # Mixed sizes: the allocators that serve any size.
    pat = f"mixed churn: {CHURN_LIVE} live, sizes 16 B-{size_label(MIXED_MAX)} log-uniform"
    mp = arm("c.mixed.mapped", "mapped",
             lambda w: c.mixed("mapped", w, CHURN_LIVE, MIXED_MAX), pat)
    hi = arm("c.mixed.hier", "hierarchical",
             lambda w: c.mixed("hier", w, CHURN_LIVE, MIXED_MAX), pat)
    ad = arm("c.mixed.adaptive", "adaptive",
             lambda w: c.mixed("adaptive", w, CHURN_LIVE, MIXED_MAX), pat)
    na = arm("c.mixed.numa", "numa",
             lambda w: c.mixed("numa", w, CHURN_LIVE, MIXED_MAX), pat)
    ca = arm("c.mixed.cache", "cache",
             lambda w: c.mixed("cache", w, CHURN_LIVE, MIXED_MAX), pat)
    ml = arm("c.mixed.malloc", "malloc/free",
             lambda w: c.mixed("malloc", w, CHURN_LIVE, MIXED_MAX), pat)
    pa = twins(ml, "mixed", live=CHURN_LIVE, max_size=MIXED_MAX)
    groups.append([mp, hi, ad, na, ca, ml, *pa])
    rows.append(Row("c", "mixed", "hierarchical", hi, ml, size=MIXED_MAX, pattern=pat,
                    note="no target", peers=pa))
    rows.append(Row("c", "mixed", "adaptive", ad, ml, size=MIXED_MAX, pattern=pat,
                    note="no target: its own phases in bench_adaptive.py", peers=pa))
    rows.append(Row("c", "mixed", "cache", ca, ml, size=MIXED_MAX, pattern=pat,
                    note="no target: made for big arrays (bench_numpy_handler.py)", peers=pa))
    rows.append(Row("c", "mixed", "numa", na, ml, size=MIXED_MAX, pattern=pat,
                    note="no target: a mapped pool per node, chosen for placement",
                    peers=pa))
    rows.append(Row("c", "mixed", "mapped", mp, ml, size=MIXED_MAX, pattern=pat,
                    note="no target: a mapped pool is chosen for sharing and a fixed budget",
                    peers=pa))
    return groups, rows


def _peer_arm(lib, fn, kwargs):
    """A run(work) that times c_level.<fn>("malloc", ops=work, **kwargs) in a
    child process with `lib` preloaded (ns per op, measured inside the
    child's loop)."""
    script = str(Path(__file__).resolve())
    call = json.dumps({"fn": fn, "kwargs": kwargs})

    def run(work):
        out = common.run_python([script, "--peer-run", call, "--work", str(work)],
                                env=common.child_env(LD_PRELOAD=lib), check=True)
        return float(out.stdout.split()[-1])
    return run


# ---------------------------------------------------------------------------
# Python level

_TEMPLATE = """
def _bench(_batches, {names}):
    _repeat = _itertools.repeat
    _t0 = _perf_counter_ns()
    for _b in range(_batches):
        for _ in _repeat(None, {k}):
            {stmt}
        {after}
    return _perf_counter_ns() - _t0
"""


def py_arm(key, label, stmt, env, *, k=PY_BATCH, after="pass", describe=""):
    """An arm timing `stmt` (names from `env`, bound as fast locals) `k` times
    per batch, then `after` once per batch (e.g. a linear allocator's reset)."""
    names = sorted(env)
    src = _TEMPLATE.format(names=", ".join(names), k=k, stmt=stmt, after=after)
    ns = {"_itertools": itertools, "_perf_counter_ns": time.perf_counter_ns}
    exec(compile(src, f"<bench {key}>", "exec"), ns)
    fn = ns["_bench"]
    args = [env[n] for n in names]

    def run(batches):
        gc_was = gc.isenabled()
        gc.disable()
        try:
            return fn(batches, *args) / (batches * k)
        finally:
            if gc_was:
                gc.enable()

    text = stmt if after == "pass" else f"{stmt}  (x{k}, then {after})"
    return Arm(key, label, run, min_work=5, max_work=1_000_000, ops_per_work=k,
               describe=describe or text)


def py_level_rows():
    import numpy as np

    import pgo

    groups, rows = [], []

    # -- alloc+free pairs vs bytearray(64) -------------------------------
    st = pgo.StackAllocator(1 << 20)
    li = pgo.LinearAllocator(1 << 20)
    ar = pgo.ArenaAllocator()
    sl = pgo.SlabAllocator(64)
    ba_expr = py_arm("py.pair.bytearray_expr", "bytearray(64)", "bytearray(64)", {})
    ba_del = py_arm("py.pair.bytearray_del", "b = bytearray(64); del b",
                    "b = bytearray(64); del b", {})
    loop = py_arm("py.pair.pass", "loop overhead (pass)", "pass", {})
    arms = {
        "stack alloc+free()": py_arm("py.pair.stack_free", "stack: b = alloc(64); free(b)",
                                     "b = alloc(64); free(b)", {"alloc": st.alloc, "free": st.free}),
        "stack alloc+del": py_arm("py.pair.stack_del", "stack: b = alloc(64); del b",
                                  "b = alloc(64); del b", {"alloc": st.alloc}),
        "linear alloc+del": py_arm("py.pair.linear_del", "linear: b = alloc(64); del b",
                                   "b = alloc(64); del b", {"alloc": li.alloc, "reset": li.reset},
                                   after="reset()"),
        "arena alloc+del": py_arm("py.pair.arena_del", "arena: b = alloc(64); del b",
                                  "b = alloc(64); del b", {"alloc": ar.alloc}),
        "slab alloc+free()": py_arm("py.pair.slab_free", "slab: b = alloc(64); free(b)",
                                    "b = alloc(64); free(b)", {"alloc": sl.alloc, "free": sl.free}),
        "slab alloc+del": py_arm("py.pair.slab_del", "slab: b = alloc(64); del b",
                                 "b = alloc(64); del b", {"alloc": sl.alloc}),
    }
    groups.append([ba_expr, ba_del, loop, *arms.values()])
    tgt = _pair_target(ba_expr)
    for name, a in arms.items():
        rows.append(Row("py", "pair", name, a, ba_expr, size=64, pattern="alloc+free pair",
                        target=tgt))
    rows.append(Row("py", "pair", "b = bytearray(64); del b", ba_del, ba_expr, size=64,
                    pattern="alloc+free pair", note="second baseline form"))
    rows.append(Row("py", "pair", "loop overhead (pass)", loop, loop, size=0,
                    pattern="empty statement", note="included in every Python-level row",
                    show_ratio=False))

    # -- empty(n) vs np.empty(n) -----------------------------------------
    keep = []                      # allocators live until the end of the run
    for n in EMPTY_NS:
        nbytes = n * 8
        cap = max(1 << 20, min(256 << 20, PY_BATCH * (nbytes + 128)))
        k_lin = max(1, min(PY_BATCH, cap // (nbytes + 128)))
        stn = pgo.StackAllocator(max(1 << 20, nbytes + 8192))
        lin = pgo.LinearAllocator(cap)
        arn = pgo.ArenaAllocator()
        sln = pgo.SlabAllocator(nbytes)
        keep += [stn, lin, arn, sln]
        npa = py_arm(f"py.empty.numpy.{n}", "np.empty(n)", "a = empty(n); del a",
                     {"empty": np.empty, "n": n})
        a_st = py_arm(f"py.empty.stack.{n}", "stack.empty(n)", "a = empty(n); del a",
                      {"empty": stn.empty, "n": n})
        a_li = py_arm(f"py.empty.linear.{n}", "linear.empty(n)", "a = empty(n); del a",
                      {"empty": lin.empty, "n": n, "reset": lin.reset}, k=k_lin, after="reset()")
        a_ar = py_arm(f"py.empty.arena.{n}", "arena.empty(n)", "a = empty(n); del a",
                      {"empty": arn.empty, "n": n})
        a_sl = py_arm(f"py.empty.slab.{n}", "slab.empty(n)", "a = empty(n); del a",
                      {"empty": sln.empty, "n": n})
        groups.append([npa, a_st, a_li, a_ar, a_sl])
        tgt = _empty_target(n)
        for name, a in (("stack", a_st), ("linear", a_li), ("arena", a_ar), ("slab", a_sl)):
            rows.append(Row("py", "empty", name, a, npa, size=n,
                            pattern=f"empty({n}) float64 = {nbytes:,} B, dropped", target=tgt))

    # -- empty(n), every page written, vs np.empty(n) -----------------------
    # The rows above never touch the memory.  A real temporary is written,
    # and fresh memory costs page faults: here one float64 per 4 KiB page is
    # written before the array is dropped.  No target; it shows what the
    # allocation-only rows leave out.
    for n in TOUCH_NS:
        nbytes = n * 8
        stn = pgo.StackAllocator(nbytes + 8192)
        arn = pgo.ArenaAllocator(chunk_size=nbytes + 8192)
        keep += [stn, arn]
        stmt = "a = empty(n); a[::512] = 1.0; del a"
        npa = py_arm(f"py.touch.numpy.{n}", "np.empty(n), touched", stmt,
                     {"empty": np.empty, "n": n}, k=4)
        a_st = py_arm(f"py.touch.stack.{n}", "stack.empty(n), touched", stmt,
                      {"empty": stn.empty, "n": n}, k=4)
        a_ar = py_arm(f"py.touch.arena.{n}", "arena.empty(n), touched", stmt,
                      {"empty": arn.empty, "n": n}, k=4)
        groups.append([npa, a_st, a_ar])
        for name, a in (("stack", a_st), ("arena", a_ar)):
            rows.append(Row("py", "touch", name, a, npa, size=n,
                            pattern=f"empty({n}) float64 = {nbytes:,} B, a page in 512 written"))
    return groups, rows, keep


# ---------------------------------------------------------------------------
# Machine info

def machine_info():
    import Cython

    import pgo

    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    version = common.cmd_out([cc, "--version"])
    return common.machine_info(
        python_impl=platform.python_implementation(),
        cython=Cython.__version__,
        compiler=version.splitlines()[0] if version else cc,
        c_level_cflags=_build.compile_args(),
        pgo_version=pgo.__version__,
        pgo_debug_build=bool(pgo.DEBUG_BUILD),
    )


# ---------------------------------------------------------------------------
# Report

def _fmt_ns(x):
    return f"{x:8.2f}" if x < 1000 else f"{x:8.0f}"


def render(rows, info, args):
    out = []
    w = out.append
    w(f"pgo allocators vs standard  --  {info['cpu']} x{info['cpu_count']}, "
      f"Python {info['python']}, numpy {info['numpy']}, {info['libc']}, "
      f"medians of {args.repeat}")
    if info["pgo_debug_build"]:
        w("!! pgo is a PGO_TEST_BUILD: debug fills are on; these numbers are meaningless")
    sec = None
    for r in rows:
        if r.section != sec:
            sec = r.section
            if sec == "c":
                w("\nC level: ns per op in a nogil loop (speedup = malloc/free ns / pgo ns; "
                  "best peer: the fastest of jemalloc, mimalloc, tcmalloc on the same loop)")
                w(f"{'pattern':<8} {'size':>7}  {'allocator':<20} {'pgo ns':>8} {'glibc ns':>8} "
                  f"{'speedup':>8} {'paired':>7} {'ref ns':>8} {'spread':>6}  "
                  f"{'best peer':>17} {'vs peer':>7}  target")
            else:
                w("\nPython level: ns per statement, loop overhead included "
                  "(speedup = baseline ns / pgo ns)")
                w(f"{'group':<6} {'size':>9}  {'row':<26} {'ns':>8} {'base ns':>8} "
                  f"{'speedup':>8} {'paired':>7} {'spread':>6}  target")
        tgt = r.target(r) if r.target else None
        t = ""
        if tgt is not None:
            t = ("MET   " if tgt["met"] else "MISSED") + "  " + tgt["text"]
        a = median(r.arm.samples)
        b = median(r.baseline.samples)
        spread = f"{100 * spread_iqr(r.arm.samples):5.1f}%"
        if r.section == "c":
            ref = _fmt_ns(median(r.reference.samples)) if r.reference else " " * 8
            best = r.best_peer()
            peer = (f"{best.label:>8} {_fmt_ns(median(best.samples))} "
                    f"{median(best.samples) / a:6.2f}x" if best else " " * 25)
            w(f"{r.group:<8} {size_label(r.size):>7}  {r.name:<20} {_fmt_ns(a)} {_fmt_ns(b)} "
              f"{r.speedup():7.2f}x {r.speedup_paired():6.2f}x {ref} {spread}  {peer}  {t}")
        else:
            size = f"n={r.size}" if r.group in ("empty", "touch") else size_label(r.size)
            ratio = (f"{_fmt_ns(b)} {r.speedup():7.2f}x {r.speedup_paired():6.2f}x"
                     if r.show_ratio else f"{'':8} {'':8} {'':7}")
            w(f"{r.group:<6} {size:>9}  {r.name:<26} {_fmt_ns(a)} {ratio} {spread}  {t}")
    w("\nTargets (each row judged on its own medians):")
    by_text = {}
    for r in rows:
        tgt = r.target(r) if r.target else None
        if tgt is not None:
            by_text.setdefault(tgt["text"], []).append((r, tgt))
    n_met = n_all = 0
    for text, items in by_text.items():
        met = sum(t["met"] for _, t in items)
        n_met += met
        n_all += len(items)
        vals = ", ".join(
            f"{r.name}{' ' + r.group if r.section == 'c' else ''} "
            f"{size_label(r.size) if r.group != 'empty' else 'n=' + str(r.size)}: "
            f"{t['value']}{'x' if t['metric'] == 'speedup' else ' ns'}"
            f"{'' if t['met'] else ' (missed)'}" for r, t in items)
        w(f"  [{met}/{len(items)} met] {text}: {vals}")
    w(f"targets met: {n_met} of {n_all} rows")
    return "\n".join(out)


# ---------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description="pgo allocators vs glibc malloc/free and np.empty")
    ap.add_argument("--repeat", type=int, default=None, help="repetitions per arm (default 7, --quick 3)")
    ap.add_argument("--quick", action="store_true", help="short samples, 3 repetitions: a smoke run")
    ap.add_argument("--sample-ms", type=float, default=None,
                    help="target duration of one sample (default 40, --quick 15)")
    ap.add_argument("--only", choices=("c", "py"), help="run one section only")
    ap.add_argument("-o", "--output", default=str(common.RESULTS / "allocators.json"),
                    help="JSON output path (default benchmarks/results/allocators.json)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild c_level even if up to date")
    # Internal: one sample of a pattern's malloc arm, in a child that a peer
    # allocator was preloaded into; prints ns per op.
    ap.add_argument("--peer-run", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.peer_run:
        call = json.loads(args.peer_run)
        if call["fn"] not in ("lifo", "bulk", "churn", "mixed"):
            ap.error(f"--peer-run: unknown pattern {call['fn']!r}")
        c = _build.load_c_level()
        print(getattr(c, call["fn"])("malloc", ops=args.work, **call["kwargs"]))
        return 0
    if args.repeat is None:
        args.repeat = 3 if args.quick else 7
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    sample_s = (args.sample_ms if args.sample_ms is not None else (15 if args.quick else 40)) / 1e3
    log = common.log

    t_start = time.perf_counter()
    info = machine_info()
    rows, keep = [], []
    # The C section runs first: glibc's state (dynamic mmap threshold, heap
    # top) would otherwise depend on the big numpy arrays of the Python one.
    if args.only in (None, "c"):
        log("building c_level ...")
        c = _build.load_c_level(force=args.rebuild)
        log("C level:")
        groups, crows = c_level_rows(c)
        run_groups(groups, args.repeat, sample_s, log)
        rows += crows
        info["c_level_sink"] = str(c.sink())
    if args.only in (None, "py"):
        log("Python level:")
        groups, prows, keep = py_level_rows()
        run_groups(groups, args.repeat, sample_s, log)
        rows += prows
    common.finish_machine_info(info, t_start)

    settings = {
        "repeat": args.repeat, "quick": args.quick, "sample_ms": sample_s * 1e3,
        "c_sizes": list(C_SIZES), "lifo_depth": LIFO_DEPTH, "bulk_batch": BULK_BATCH,
        "churn_live": CHURN_LIVE, "empty_n": list(EMPTY_NS), "py_batch": PY_BATCH,
        "speedup": "baseline median ns / arm median ns (> 1: pgo faster)",
        "speedup_paired": "median over repetitions of baseline_i / arm_i",
        "spread_iqr": "interquartile range of the repeats / median",
    }
    doc = common.document("pgo allocators vs standard", settings, info,
                          rows=[r.to_json() for r in rows])
    judged = [r["target"] for r in doc["rows"] if "target" in r]
    doc["summary"] = {"targets": len(judged), "met": sum(t["met"] for t in judged)}
    out = common.write_json(args.output, doc)
    print(render(rows, info, args))
    print(f"\nwrote {out}  ({info['elapsed_s']} s)")
    del keep
    return 0


if __name__ == "__main__":
    sys.exit(main())
