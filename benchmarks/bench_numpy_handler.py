"""numpy under different memory allocators: the same numpy programs, side by side.

    python3 benchmarks/bench_numpy_handler.py [--repeat 5] [--quick]
        [--cases big,mid,small,mid2 | --matrix] [--arms default,pgo,jemalloc,...]
        [--max-cached 512MiB] [-o benchmarks/results/numpy-handler.json]

``--matrix`` runs issue 18's matrix instead: array sizes 1, 4, 8, 16, 48
and 64 MiB x 1, 2 or 3 temporaries alive at once x 1 or 2 threads (cells
``m48x2t1`` ...), each cell's target pgo <= 1.02x the best peer's median, or not
significantly slower than it (one-sided Mann-Whitney, p >= 0.05).

Each *case* is a small numpy loop (elementwise expressions on big, mid-size
and small arrays; see CASES).  Each *arm* is a way of giving numpy its
memory:

  default      numpy's own handler over glibc malloc, as shipped
  pgo          pgo.install(Router([SizeClass(1 MiB, None, CacheAllocator)])):
               arrays of 1 MiB and more come from pgo's cache, the rest
               falls back to numpy's default
  jemalloc     LD_PRELOAD of libjemalloc.so.2 (Debian's)
  mimalloc     LD_PRELOAD of libmimalloc.so.2
  tcmalloc     LD_PRELOAD of libtcmalloc_minimal.so.4
               (each found where ``pgo bench`` finds it:
               ``pgo.bench.runner.find_library``)
  glibc-tuned  glibc with MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_
               raised to 4 GiB: big blocks stay on the heap, nothing is
               given back to the system

Every run of every (case, arm) is a fresh ``python3 -c`` child, so that
LD_PRELOAD and the environment apply and no run inherits another's heap.
The child sets the arm up, builds the case's inputs, runs 2 warm-up
iterations, and then times the loop alone with ``time.perf_counter``,
counting the loop's minor page faults (``ru_minflt`` delta) and reading the
child's peak RSS (``ru_maxrss``) at the end.  It prints one JSON line that
the parent parses.  A preload arm also reports which malloc library is
really mapped, and a run where the preload did not take is an error.

``--repeat`` times each (case, arm); within a repetition the arms of a case
run one after another in a fixed order (A B C ... A B C ...), nothing
randomized.  The table shows medians, ``speedup = default median / arm
median`` (> 1: faster than numpy's default), the median minor faults and
the median peak RSS, and checks the targets (MET / MISSED lines).  Results
go to JSON; this is a measurement, not a test, and a missed target or a
failed arm never changes the exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import _common as common
from _common import MIB, PRELOAD_PEERS, ROOT, median

DEFAULT_MAX_CACHED = 512 * MIB
WARMUP = 2
QUICK_DIVISOR = 4
RUN_TIMEOUT_S = 180
RESULT_TAG = "PGO_NUMPY_BENCH_RESULT "
TUNED_THRESHOLD = 4294967296              # 4 GiB; glibc 2.36 accepts it (0 faults on `big`)


# ---------------------------------------------------------------------------
# Cases: `setup` builds the inputs (not timed), `body` is one iteration.
# `iterations` is chosen so that one run takes ~0.3-1 s under `default` on
# the 2-core dev machine.

CASES = {
    "big": {
        "describe": "c = a * 2.0 + b on 6M float64 (48 MB): one 48 MB temporary per "
                    "iteration (numpy elides the second), the old c freed when the new "
                    "one is bound; above glibc's 32 MiB mmap threshold",
        "setup": "a = np.linspace(0.0, 1.0, 6_000_000)\n"
                 "b = np.linspace(1.0, 2.0, 6_000_000)\n"
                 "c = None",
        "body": "c = a * 2.0 + b",
        "iterations": 48,
    },
    "mid": {
        "describe": "c = a * 2.0 + b on 1M float64 (8 MB)",
        "setup": "a = np.linspace(0.0, 1.0, 1_000_000)\n"
                 "b = np.linspace(1.0, 2.0, 1_000_000)\n"
                 "c = None",
        "body": "c = a * 2.0 + b",
        "iterations": 400,
    },
    "small": {
        "describe": "per iteration, for 9 sizes from 16 to 1024 float64: "
                    "np.empty(n), s * 2.0 + 1.0, np.concatenate((s, y))",
        "setup": "srcs = [np.linspace(0.0, 1.0, n) "
                 "for n in (16, 32, 48, 100, 128, 256, 500, 512, 1024)]",
        "body": "for s in srcs:\n"
                "    e = np.empty(s.size)\n"
                "    y = s * 2.0 + 1.0\n"
                "    z = np.concatenate((s, y))",
        "iterations": 20_000,
    },
    "mid2": {
        "describe": "t = a * 2.0; u = t + a on 1M float64 (8 MB) inside a function: two "
                    "8 MB temporaries alive at once, both freed when it returns (16 MB "
                    "at the top of glibc's heap: trimmed, then faulted in again)",
        "setup": "a = np.linspace(0.0, 1.0, 1_000_000)\n"
                 "def step():\n"
                 "    t = a * 2.0\n"
                 "    u = t + a\n"
                 "    return u[0]",
        "body": "step()",
        "iterations": 300,
    },
}

# The matrix (issue 18): every size x live temporaries x threads, each cell
# a step function whose temporaries are all alive at its end and all freed
# when it returns.  Each thread writes about MATRIX_BYTES of temporaries
# per run, so the cells take about as long as one another.
MATRIX_SIZES_MIB = (1, 4, 8, 16, 48, 64)
MATRIX_TEMPS = (1, 2, 3)
MATRIX_THREADS = (1, 2)
MATRIX_BYTES = 3072 * MIB
MATRIX_BATCHES = 4                # timed iterations of a threaded cell (each: start, join)
_STEP_LINES = ("t1 = a * 2.0", "t2 = t1 + a", "t3 = t2 * t1")


def matrix_case(size_mib, temps, threads):
    n = size_mib * MIB // 8
    steps = max(4, round(MATRIX_BYTES / (temps * size_mib * MIB)))
    step = ("def step(a):\n" + "".join(f"    {line}\n" for line in _STEP_LINES[:temps])
            + f"    return float(t{temps}[0])\n")
    describe = (f"{temps} live {size_mib} MiB temporar{'y' if temps == 1 else 'ies'} "
                f"per step ({', '.join(_STEP_LINES[:temps])}), freed when it returns")
    if threads == 1:
        return {"describe": describe + ", 1 thread",
                "setup": f"a = np.linspace(0.0, 1.0, {n})\n" + step,
                "body": "step(a)", "iterations": steps}
    per = max(1, steps // MATRIX_BATCHES)
    return {"describe": describe + f", {threads} threads, {per} steps each per iteration",
            "setup": ("import threading\n" + step
                      + f"arrs = [np.linspace(0.0, 1.0, {n}) for _ in range({threads})]\n"
                      + "def work(a):\n"
                      + f"    for _ in range({per}):\n"
                      + "        step(a)\n"
                      + "def batch():\n"
                      + "    ts = [threading.Thread(target=work, args=(x,)) for x in arrs]\n"
                      + "    for t in ts:\n"
                      + "        t.start()\n"
                      + "    for t in ts:\n"
                      + "        t.join()\n"),
            "body": "batch()", "iterations": MATRIX_BATCHES}


MATRIX = {f"m{size}x{temps}t{threads}": matrix_case(size, temps, threads)
          for size in MATRIX_SIZES_MIB for temps in MATRIX_TEMPS for threads in MATRIX_THREADS}
ALL_CASES = {**CASES, **MATRIX}
# A matrix cell's target: pgo's median within this of the best peer's.
MATRIX_PEER_SLACK = 1.02

# ---------------------------------------------------------------------------
# Arms

ARMS = ("default", "pgo", *PRELOAD_PEERS, "glibc-tuned")
PEERS = (*PRELOAD_PEERS, "glibc-tuned")

PGO_SETUP = """\
import pgo
cache = pgo.CacheAllocator(max_cached_bytes={max_cached})
router = pgo.Router([pgo.SizeClass(1 << 20, None, cache)])
pgo.install(router)
"""

# Environment variables that would change what an arm measures; cleared in
# every child, then each arm sets its own.
_CLEARED_ENV = ("LD_PRELOAD", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_", "MALLOC_ARENA_MAX", "GLIBC_TUNABLES",
                "MALLOC_CONF", "JE_MALLOC_CONF", "MIMALLOC_OPTIONS")


def arm_plan(name, max_cached):
    """What an arm does to the child: env additions, a preload, setup code.
    `skip` is set (with the reason) when the arm cannot run on this machine."""
    plan = {"arm": name, "env": {}, "preload": None, "setup": "", "skip": None}
    if name == "default":
        plan["describe"] = "numpy's default handler, glibc malloc"
    elif name == "pgo":
        plan["describe"] = ("pgo.install(Router([SizeClass(1 MiB, None, "
                            f"CacheAllocator(max_cached_bytes={max_cached}))]))")
        plan["setup"] = PGO_SETUP.format(max_cached=max_cached)
    elif name in PRELOAD_PEERS:
        lib = common.preload_library(name)
        if lib:
            plan["describe"] = f"LD_PRELOAD={lib}"
            plan["preload"] = lib
            plan["preload_real"] = os.path.realpath(lib)
            plan["env"]["LD_PRELOAD"] = lib
        else:
            plan["describe"] = f"LD_PRELOAD={common.PRELOAD_LIBS[name][0]} (not found here)"
            plan["skip"] = common.preload_missing(name)
    elif name == "glibc-tuned":
        plan["env"] = {"MALLOC_MMAP_THRESHOLD_": str(TUNED_THRESHOLD),
                       "MALLOC_TRIM_THRESHOLD_": str(TUNED_THRESHOLD)}
        plan["describe"] = " ".join(f"{k}={v}" for k, v in plan["env"].items())
    else:
        raise ValueError(name)
    return plan


# ---------------------------------------------------------------------------
# The child: `python3 -c CHILD_SRC SPEC_JSON`.  Exit 3: the arm's setup
# failed; exit 4: the case failed.  Either way one JSON line is printed.

CHILD_SRC = r'''
import json, os, resource, sys, time, traceback
spec = json.loads(sys.argv[1])
TAG = spec["tag"]
out = {"case": spec["case"], "arm": spec["arm"]}

def _emit(code):
    sys.stdout.write(TAG + json.dumps(out, default=repr) + "\n")
    sys.stdout.flush()
    sys.exit(code)

def _malloc_libs():
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                p = line.split()[-1]
                if p.startswith("/") and "malloc" in os.path.basename(p):
                    libs.add(p)
    except OSError:
        pass
    return sorted(libs)

g = {}
try:
    import numpy as np
    g["np"] = np
    exec(spec["arm_setup"], g)
except BaseException:
    out["error"] = "arm setup failed: " + traceback.format_exc(limit=3).strip().splitlines()[-1]
    out["traceback"] = traceback.format_exc()
    _emit(3)

src = "def _run(_iters, _warmup):\n"
src += "".join("    " + l + "\n" for l in spec["setup"].splitlines())
src += "    for _ in range(_warmup):\n"
src += "".join("        " + l + "\n" for l in spec["body"].splitlines())
src += "    _r0 = _getrusage(_SELF).ru_minflt\n"
src += "    _t0 = _perf_counter()\n"
src += "    for _ in range(_iters):\n"
src += "".join("        " + l + "\n" for l in spec["body"].splitlines())
src += "    _t1 = _perf_counter()\n"
src += "    _r1 = _getrusage(_SELF).ru_minflt\n"
src += "    return _t1 - _t0, _r1 - _r0\n"
try:
    g.update(_getrusage=resource.getrusage, _SELF=resource.RUSAGE_SELF,
             _perf_counter=time.perf_counter)
    exec(compile(src, "<case " + spec["case"] + ">", "exec"), g)
    wall, minflt = g["_run"](spec["iterations"], spec["warmup"])
except BaseException:
    out["error"] = "case failed: " + traceback.format_exc(limit=3).strip().splitlines()[-1]
    out["traceback"] = traceback.format_exc()
    _emit(4)

ru = resource.getrusage(resource.RUSAGE_SELF)
out.update(wall_s=wall, minflt=minflt, peak_rss_bytes=ru.ru_maxrss * 1024,
           iterations=spec["iterations"], malloc_libs=_malloc_libs(),
           numpy=np.__version__)
for key, name in (("cache_stats", "cache"), ("router_stats", "router")):
    if name in g:
        try:
            out[key] = dict(g[name].stats())
        except BaseException as e:
            out[key] = {"error": repr(e)}
_emit(0)
'''


def run_one(case, plan, iterations):
    """One fresh child for (case, arm).  Returns the run's dict; `error` is set
    when it failed, `setup_failed` when the arm itself could not be set up."""
    spec = {"tag": RESULT_TAG, "case": case, "arm": plan["arm"], "arm_setup": plan["setup"],
            "setup": ALL_CASES[case]["setup"], "body": ALL_CASES[case]["body"],
            "iterations": iterations, "warmup": WARMUP}
    try:
        p = common.run_python(["-c", CHILD_SRC, json.dumps(spec)],
                              env=common.child_env(_CLEARED_ENV, **plan["env"]), cwd=str(ROOT),
                              timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {RUN_TIMEOUT_S} s"}
    res = common.json_line(p.stdout, RESULT_TAG)
    err_tail = "\n".join(p.stderr.strip().splitlines()[-5:])
    if res is None:
        return {"error": f"exit status {p.returncode}, no result line"
                         + (f": {err_tail.splitlines()[-1]}" if err_tail else ""),
                "stderr_tail": err_tail}
    if p.returncode == 3:
        res["setup_failed"] = True
    if p.returncode not in (0, 3, 4) and "error" not in res:
        res["error"] = f"exit status {p.returncode}"
    if "error" not in res and plan["preload"]:
        if plan["preload_real"] not in res.get("malloc_libs", []) and \
                plan["preload"] not in res.get("malloc_libs", []):
            res["error"] = (f"{plan['preload']} is not mapped in the child (preload did "
                            f"not take): {err_tail}")
    if err_tail and "error" in res:
        res["stderr_tail"] = err_tail
    res.pop("case", None)
    res.pop("arm", None)
    return res


# ---------------------------------------------------------------------------
# Statistics

def summarize(runs):
    ok = [r for r in runs if "error" not in r]
    s = {
        "runs_ok": len(ok),
        "runs_failed": len(runs) - len(ok),
        "median_wall_s": median([r["wall_s"] for r in ok]),
        "median_minflt": median([r["minflt"] for r in ok]),
        "median_peak_rss_bytes": median([r["peak_rss_bytes"] for r in ok]),
        "wall_s": [r["wall_s"] for r in ok],
        "minflt": [r["minflt"] for r in ok],
        "peak_rss_bytes": [r["peak_rss_bytes"] for r in ok],
    }
    hr = [r["cache_stats"]["hit_rate"] for r in ok
          if isinstance(r.get("cache_stats"), dict) and "hit_rate" in r["cache_stats"]]
    if hr:
        s["median_cache_hit_rate"] = median(hr)
    fb = [r["router_stats"]["fallback"] for r in ok
          if isinstance(r.get("router_stats"), dict) and "fallback" in r["router_stats"]]
    if fb:
        s["median_router_fallback"] = median(fb)
    errs = [r["error"] for r in runs if "error" in r]
    if errs:
        s["errors"] = sorted(set(errs))
    return s


# ---------------------------------------------------------------------------
# Targets

def _target(case, text, value, met, detail):
    return {"case": case, "text": text, "value": value, "met": met, "detail": detail}


def judge(results, args):
    """Targets for the pgo arm.  `met` is None when the arms needed did not run."""
    out = []

    def med(case, arm):
        s = results.get(case, {}).get(arm)
        return s["median_wall_s"] if s and s.get("median_wall_s") else None

    def rss(case, arm):
        s = results.get(case, {}).get(arm)
        return s["median_peak_rss_bytes"] if s and s.get("median_peak_rss_bytes") else None

    for case, need in (("big", 2.2), ("mid2", 4.0)):
        if case not in results:
            continue
        d, p = med(case, "default"), med(case, "pgo")
        if d and p:
            out.append(_target(case, f"pgo >= {need}x faster than default", round(d / p, 3),
                               d / p >= need, f"default {d:.4f} s / pgo {p:.4f} s"))
        else:
            out.append(_target(case, f"pgo >= {need}x faster than default", None, None,
                               "pgo or default did not run"))
        peers = {a: med(case, a) for a in PEERS if med(case, a)}
        if p and peers:
            best = min(peers, key=peers.get)
            missing = [a for a in PEERS if a not in peers]
            out.append(_target(case, "pgo no slower than the best peer",
                               round(peers[best] / p, 3), p <= peers[best],
                               f"best peer {best} {peers[best]:.4f} s, pgo {p:.4f} s"
                               + (f"; not run: {', '.join(missing)}" if missing else "")))
        else:
            out.append(_target(case, "pgo no slower than the best peer", None, None,
                               "pgo or every peer did not run"))
    for case in (c for c in results if c in MATRIX):
        p = med(case, "pgo")
        peers = {a: med(case, a) for a in PEERS if med(case, a)}
        text = f"pgo <= {MATRIX_PEER_SLACK}x the best peer (or not significantly slower)"
        if p and peers:
            # As bench_generality judges: missed only when the medians say
            # more than 2% slower and the runs say so significantly (the
            # best of five noisy medians is low by chance alone).
            best = min(peers, key=peers.get)
            runs = results[case]["pgo"]["wall_s"]
            pv = common.p_greater(runs, results[case][best]["wall_s"])
            # Under 4 runs an arm, no one-sided p can be under 0.05: the
            # medians alone decide.
            noise = pv >= 0.05 and len(runs) >= 4
            out.append(_target(case, text, round(p / peers[best], 3),
                               p <= MATRIX_PEER_SLACK * peers[best] or noise,
                               f"pgo/{best} {p / peers[best]:.3f}, p = {pv:.3f} (pgo {p:.4f} s, "
                               f"{best} {peers[best]:.4f} s)"))
        else:
            out.append(_target(case, text, None, None, "pgo or every peer did not run"))
    for case in ("mid", "small"):
        if case not in results:
            continue
        d, p = med(case, "default"), med(case, "pgo")
        text = "pgo no more than 3% slower than default"
        if d and p:
            out.append(_target(case, text, round(p / d, 4), p <= 1.03 * d,
                               f"pgo/default time {p / d:.4f} (limit 1.03)"))
        else:
            out.append(_target(case, text, None, None, "pgo or default did not run"))
    for case in results:
        d, p = rss(case, "default"), rss(case, "pgo")
        text = "pgo peak RSS <= default peak RSS + max_cached_bytes"
        if d and p:
            out.append(_target(case, text, p - d, p <= d + args.max_cached,
                               f"pgo {p / MIB:.1f} MiB, default {d / MIB:.1f} MiB, "
                               f"limit {(d + args.max_cached) / MIB:.1f} MiB"))
        else:
            out.append(_target(case, text, None, None, "pgo or default did not run"))
    return out


def checks(results):
    """Sanity checks that are not targets: does glibc-tuned really keep `big`
    off mmap (about 0 minor faults in the loop)?"""
    out = []
    s = results.get("big", {}).get("glibc-tuned")
    if s and s.get("median_minflt") is not None:
        per_iter = s["median_minflt"] / max(1, s.get("iterations", 1))
        out.append({"text": "glibc-tuned keeps `big` off mmap: median minor faults per "
                            "iteration < 1", "value": round(per_iter, 2),
                    "ok": per_iter < 1})
    return out


# ---------------------------------------------------------------------------
# Machine info

def machine_info(plans):
    try:                                 # informational; the children import it themselves
        import pgo
        pgo_info = {"version": pgo.__version__, "file": pgo.__file__,
                    "debug_build": bool(getattr(pgo, "DEBUG_BUILD", False)),
                    "install_api": all(hasattr(pgo, n) for n in
                                       ("install", "Router", "SizeClass", "CacheAllocator"))}
    except Exception as e:  # noqa: BLE001
        pgo_info = {"import_error": repr(e)}
    return common.machine_info(
        python_executable=sys.executable,
        thp_enabled=common.read_text("/sys/kernel/mm/transparent_hugepage/enabled"),
        thp_defrag=common.read_text("/sys/kernel/mm/transparent_hugepage/defrag"),
        libraries={p["arm"]: p.get("preload_real") or p["preload"] for p in plans
                   if p["arm"] in PRELOAD_PEERS},
        pgo=pgo_info,
    )


# ---------------------------------------------------------------------------
# Report

def _mib(n):
    return f"{n / MIB:9.1f}" if n is not None else f"{'-':>9}"


def render(doc, args):
    info = doc["machine"]
    out = []
    w = out.append
    w(f"numpy under different allocators  --  {info['cpu']} x{info['cpu_count']}, "
      f"Python {info['python']}, numpy {info['numpy']}, {info['libc']}, "
      f"medians of {args.repeat}{' (quick)' if args.quick else ''}")
    if info["pgo"].get("debug_build"):
        w("!! pgo is a PGO_TEST_BUILD: debug fills are on; the pgo numbers are meaningless")
    for a in doc["arms"]:
        if a["skip"]:
            w(f"  arm {a['arm']}: SKIPPED -- {a['skip']}")
    for case, per_arm in doc["results"].items():
        c = doc["cases"][case]
        w(f"\n{case}: {c['describe']}  [{c['iterations']} iterations]")
        w(f"  {'arm':<12} {'wall s':>8} {'ms/iter':>8} {'speedup':>8} {'minflt':>9} "
          f"{'peak MiB':>9}  runs (wall s)")
        for arm, s in per_arm.items():
            if s.get("median_wall_s") is None:
                w(f"  {arm:<12} {'ERROR':>8}  {'; '.join(s.get('errors', ['no runs']))}")
                continue
            sp = s.get("speedup_vs_default")
            sp = f"{sp:7.2f}x" if sp else f"{'-':>8}"
            runs = " ".join(f"{x:.3f}" for x in s["wall_s"])
            extra = ""
            if "median_cache_hit_rate" in s:
                extra += f"  cache hit rate {s['median_cache_hit_rate']:.3f}"
            if "median_router_fallback" in s:
                extra += f", router fallback {s['median_router_fallback']:g}"
            if s.get("errors"):
                extra += f"  ({s['runs_failed']} failed: {'; '.join(s['errors'])})"
            w(f"  {arm:<12} {s['median_wall_s']:8.4f} "
              f"{1e3 * s['median_wall_s'] / c['iterations']:8.3f} {sp} "
              f"{s['median_minflt']:9.0f} {_mib(s['median_peak_rss_bytes'])}  {runs}{extra}")
    w("\nTargets (pgo arm, judged on medians):")
    for t in doc["targets"]:
        tag = "NOT RUN" if t["met"] is None else ("MET    " if t["met"] else "MISSED ")
        w(f"  {tag} {t['case']:<9} {t['text']}: {t['detail']}")
    for ch in doc["checks"]:
        w(f"  {'check ok' if ch['ok'] else 'CHECK FAILED'}: {ch['text']}: {ch['value']}")
    judged = [t for t in doc["targets"] if t["met"] is not None]
    w(f"targets met: {sum(t['met'] for t in judged)} of {len(judged)} judged "
      f"({len(doc['targets']) - len(judged)} not run)")
    return "\n".join(out)


# ---------------------------------------------------------------------------

def _parse_bytes(s):
    s = s.strip()
    for suffix, mult in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10),
                         ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if s.endswith(suffix):
            return int(float(s[:-len(suffix)]) * mult)
    return int(s)


def _parse_list(s, allowed, what):
    items = [x.strip() for x in s.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(
            f"unknown {what}: {', '.join(bad) or '(none)'}; choose from {', '.join(allowed)}")
    return items


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="numpy programs under numpy's default handler, pgo's handler, "
                    "jemalloc, mimalloc, tcmalloc and a tuned glibc, side by side; "
                    "each run a fresh child process",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="cases:\n" + "".join(f"  {k:<6} {v['describe']}\n" for k, v in CASES.items())
               + "\narms:\n" + "".join(f"  {a:<12} {arm_plan(a, DEFAULT_MAX_CACHED)['describe']}\n"
                                      for a in ARMS)
               + "\nEach run is a fresh child; the loop alone is timed after 2 warm-up "
                 "iterations.\nTargets (pgo): big >= 2.2x default and no slower than the best "
                 "peer;\nmid2 >= 4x default and no slower than the best peer; mid, small "
                 "<= 3% slower\nthan default; peak RSS <= default + max_cached_bytes.")
    ap.add_argument("--repeat", type=int, default=5,
                    help="runs per (case, arm), arms interleaved (default 5; use >= 5 "
                         "for a real run)")
    ap.add_argument("--quick", action="store_true",
                    help=f"divide every case's iteration count by {QUICK_DIVISOR}: a smoke run")
    ap.add_argument("--cases", type=lambda s: _parse_list(s, tuple(ALL_CASES), "case"),
                    default=None, help=f"comma-separated (default {','.join(CASES)}); the "
                                       "matrix's cells are named mSIZExTEMPStTHREADS, e.g. "
                                       "m48x2t1")
    ap.add_argument("--matrix", action="store_true",
                    help="the matrix instead (issue 18): sizes "
                         f"{', '.join(map(str, MATRIX_SIZES_MIB))} MiB x "
                         f"{', '.join(map(str, MATRIX_TEMPS))} live temporaries x "
                         f"{', '.join(map(str, MATRIX_THREADS))} threads; target: pgo <= "
                         f"{MATRIX_PEER_SLACK}x the best peer in every cell")
    ap.add_argument("--arms", type=lambda s: _parse_list(s, ARMS, "arm"), default=list(ARMS),
                    help=f"comma-separated (default {','.join(ARMS)}); `default` is the "
                         "baseline and is always run")
    ap.add_argument("--max-cached", type=_parse_bytes, default=DEFAULT_MAX_CACHED,
                    help="pgo CacheAllocator max_cached_bytes (bytes, or e.g. 512MiB; "
                         "default 512 MiB)")
    ap.add_argument("-o", "--output", default=str(common.RESULTS / "numpy-handler.json"),
                    help="JSON output path (default benchmarks/results/numpy-handler.json)")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    if args.cases is None:
        args.cases = list(MATRIX) if args.matrix else list(CASES)
    elif args.matrix:
        ap.error("--matrix and --cases: give one")
    arms = list(args.arms)
    if "default" not in arms:
        arms.insert(0, "default")
    log = common.log

    if args.repeat < 5 and not args.quick:
        log(f"note: --repeat {args.repeat} < 5: not a real run")
    t_start = time.perf_counter()
    plans = [arm_plan(a, args.max_cached) for a in arms]
    info = machine_info(plans)
    iters = {c: max(3, ALL_CASES[c]["iterations"] // (QUICK_DIVISOR if args.quick else 1))
             for c in args.cases}
    runs = {c: {p["arm"]: [] for p in plans if not p["skip"]} for c in args.cases}
    dead = {}                               # arm -> why its setup failed
    for p in plans:
        if p["skip"]:
            log(f"arm {p['arm']}: skipped -- {p['skip']}")
    for rep in range(args.repeat):
        for case in args.cases:
            line = []
            for p in plans:
                a = p["arm"]
                if p["skip"] or a in dead:
                    continue
                r = run_one(case, p, iters[case])
                runs[case][a].append(r)
                if r.get("setup_failed"):
                    dead[a] = r["error"]
                    log(f"arm {a}: ERROR, setup failed; not run again: {r['error']}")
                    line.append(f"{a} ERROR")
                elif "error" in r:
                    log(f"  {case} {a}: ERROR: {r['error']}")
                    line.append(f"{a} ERROR")
                else:
                    line.append(f"{a} {r['wall_s']:.3f}")
            log(f"repeat {rep + 1}/{args.repeat} {case:<9} " + "  ".join(line))

    results = {}
    for case in args.cases:
        results[case] = {}
        for a, rs in runs[case].items():
            s = summarize(rs)
            if not rs and a in dead:
                s["errors"] = [f"not run: {dead[a]}"]
            s["iterations"] = iters[case]
            s["runs"] = rs
            results[case][a] = s
        d = results[case].get("default", {}).get("median_wall_s")
        for a, s in results[case].items():
            m = s.get("median_wall_s")
            s["speedup_vs_default"] = round(d / m, 4) if d and m else None
            s["time_ratio_to_default"] = round(m / d, 4) if d and m else None
    common.finish_machine_info(info, t_start)

    settings = {
        "repeat": args.repeat, "quick": args.quick, "warmup": WARMUP,
        "max_cached_bytes": args.max_cached, "cases": args.cases, "arms": arms,
        "real_run": args.repeat >= 5 and not args.quick,
        "order": "for each repeat, for each case, every arm in order; nothing randomized",
        "speedup_vs_default": "default median wall / arm median wall (> 1: faster)",
        "time_ratio_to_default": "arm median wall / default median wall",
        "wall_s": "perf_counter around the timed loop only, in the child",
        "minflt": "ru_minflt delta around the timed loop",
        "peak_rss_bytes": "child's ru_maxrss * 1024 at the end of the run",
    }
    doc = common.document(
        "numpy under different allocators", settings, info,
        arms=[{k: v for k, v in p.items() if k != "setup"} | {"setup_code": p["setup"],
              "setup_failed": dead.get(p["arm"])} for p in plans],
        cases={c: {**ALL_CASES[c], "iterations": iters[c]} for c in args.cases},
        results=results)
    doc["targets"] = judge(results, args)
    doc["checks"] = checks(results)
    judged = [t for t in doc["targets"] if t["met"] is not None]
    doc["summary"] = {"targets": len(doc["targets"]), "judged": len(judged),
                      "met": sum(t["met"] for t in judged)}
    out = common.write_json(args.output, doc, default=repr)
    print(render(doc, args))
    print(f"\nwrote {out}  ({info['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
