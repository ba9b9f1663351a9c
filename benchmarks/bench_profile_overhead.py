"""Wall-time overhead of ``pgo profile``, whole program, per collector.

    python3 benchmarks/bench_profile_overhead.py [-n 5] [--quick]
        [--programs pipeline,records,...] [--out benchmarks/results/profile_overhead.json]

Programs (each one a fresh ``python3 prog.py`` process, stdout discarded):

    pipeline       pgo/targets/pipeline.py      numpy-heavy  (48 MB temporaries)
    small_arrays   pgo/targets/small_arrays.py  numpy-heavy  (many small arrays)
    scoped_temps   pgo/targets/scoped_temps.py  numpy-heavy  (temporaries in a function)
    records        pgo/targets/records.py       object-heavy (GC-heavy dicts and lists)
    numpy_stats    written below into a temp dir     numpy-heavy  (FFT, linear algebra,
                                                     sort, percentiles, reductions)
    objects_graph  written below into a temp dir     object-heavy (a graph of small class
                                                     instances, BFS, rank, json round
                                                     trip, Counter over strings)

The last two are not pgo's own examples: they are there so that the
numbers do not only come from programs written to show what pgo finds.

Arms (one process each; the wall time is taken by this script around
``subprocess.run``, so it includes interpreter start-up, pgo's launcher,
py-spy's start and the writing of the bundle):

    baseline       python3 prog.py
    default        python3 -m pgo profile -q -o DIR -- python3 prog.py
    no-cpu / no-events / no-objects / no-gc
                   default minus one collector
    only-cpu / only-events / only-objects / only-gc
                   one collector alone
    none           all four off: the launcher, the child bootstrap and the manifest
    tracemalloc    default plus --tracemalloc (exact sites)

``--quick`` runs baseline, default, none and tracemalloc only, with 3
repetitions.  Each program first runs every arm once (warm-up: page cache,
.pyc files, py-spy's binary), then ``-n`` repetitions.  In a repetition the
arms run back to back, A B C ... and in reverse order in every other
repetition, so that drift on a shared, noisy machine hits every arm alike.
The bundle directory is measured (``du``: allocated blocks, and the bytes
of the files) and removed after every run.

Reported per program and arm: the median wall time, and the ratio to
baseline as the median of the per-repetition ratios (``arm / baseline`` of
the same repetition) with its min and max.  Per collector X: ``default /
no-X`` (what X adds on top of the others: its share of the default cost)
and ``only-X / none`` (what X costs alone).  The CPU time of the whole
process tree (user + sys of this script's reaped children, py-spy included)
is recorded too: on 2 cores a sampler that burns CPU shows there even when
the wall time hides it; and so are the tree's minor page faults (``minflt``):
``scoped_temps`` is bistable (about 157k faults per run, or about 300-350k
when glibc keeps trimming and re-faulting its 128-512 KiB temporaries, 0.3-0.6 s
more), in the baseline too but far more often under pgo, and that, not any
collector, is what its slow runs are.

Targets (from the issue; reported as MET / MISSED, never a failure): the
default arm's ratio <= 1.5x on numpy-heavy programs and <= 2.5x on
object-heavy ones, judged on the median of the per-repetition ratios.

Every child gets ``PYTHONPATH`` starting with the repo root and, by
default, ``OPENBLAS_NUM_THREADS=OMP_NUM_THREADS=MKL_NUM_THREADS=1``
(``--blas-threads``; 0 leaves the environment alone).  On a 2-core machine
OpenBLAS's second thread spins against anything else that runs (py-spy, a
neighbour's job): ``numpy_stats`` then swings between 2.1 s and 8.7 s
without pgo at all, and its ratios measure the scheduler, not pgo.

Bytecode: unless ``--bytecode-as-env``, every child runs with
``PYTHONDONTWRITEBYTECODE`` unset and ``PYTHONPYCACHEPREFIX`` a temp dir,
so the warm-up compiles pgo's (and everything else's) modules once and
the timed runs load .pyc files, as with an installed pgo.  Without that, in
an environment that sets ``PYTHONDONTWRITEBYTECODE=1`` on a source
checkout, every run recompiles pgo's modules (~0.1 s more per run).

This is a measurement, not a test: the script exits 0 whatever it finds
(1 only if a program or pgo itself fails to run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import _common as common
from _common import ROOT, median, paired

TARGETS = ROOT / "pgo" / "targets"

NUMPY, OBJECTS = "numpy-heavy", "object-heavy"
TARGET_RATIO = {NUMPY: 1.5, OBJECTS: 2.5}
COLLECTORS = ("cpu", "events", "objects", "gc")
FAULT_SPREAD = 1.5      # flag an arm whose runs' minor faults differ by more than this
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

# ---------------------------------------------------------------------------
# Programs that are not pgo's own examples.

NUMPY_STATS = '''\
"""FFT, linear algebra and statistics on mid-sized arrays (not a pgo example)."""
import numpy as np


def one_round(rng):
    x = rng.standard_normal(1 << 18)                       # 2 MiB signal
    spec = np.fft.rfft(x)
    power = np.abs(spec) ** 2
    y = np.fft.irfft(spec * (power > np.median(power)), n=x.size)   # low-power filter
    img = rng.standard_normal((256, 256))
    yy, xx = np.meshgrid(np.arange(256), np.arange(256))
    img2 = np.real(np.fft.ifft2(np.fft.fft2(img) * np.exp(-np.hypot(xx, yy) / 64)))
    a = rng.standard_normal((200, 200))
    b = a @ a.T + np.eye(200) * 200.0
    sol = np.linalg.solve(b, rng.standard_normal(200))
    w = np.linalg.eigvalsh(b)
    s = np.sort(y)
    order = np.argsort(x)
    q = np.percentile(x, [5, 50, 95])
    hist, _ = np.histogram(y, bins=64)
    c = np.corrcoef(x[:4096], y[:4096])[0, 1]
    z = (x - x.mean()) / x.std()
    cs = np.cumsum(z)
    return float(s[-1] + sol.sum() + w.max() + q.sum() + c + cs[-1] + img2.mean()
                 + hist.max() + x[order[0]])


def main(rounds=30):
    rng = np.random.default_rng(0)
    acc = 0.0
    for _ in range(rounds):
        acc += one_round(rng)
    print(f"numpy_stats: {rounds} rounds, checksum {acc:.6g}")


if __name__ == "__main__":
    main()
'''

OBJECTS_GRAPH = '''\
"""A graph of small class instances, json round trips and string counting
(not a pgo example): lots of short- and long-lived Python objects."""
import json
import random
from collections import Counter, defaultdict, deque

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi "
         "omicron pi rho sigma tau upsilon phi chi psi omega").split()


class Node:
    def __init__(self, ident, label, weight):
        self.ident = ident
        self.label = label
        self.weight = weight
        self.edges = []
        self.attrs = {"seen": False, "tags": set()}


class Edge:
    def __init__(self, src, dst, weight):
        self.src = src
        self.dst = dst
        self.weight = weight


def build(rng, n, degree):
    nodes = [Node(i, f"{rng.choice(WORDS)}-{i}", rng.random()) for i in range(n)]
    for node in nodes:
        for _ in range(degree):
            node.edges.append(Edge(node, nodes[rng.randrange(n)], rng.random()))
    return nodes


def bfs(nodes):
    dist = {0: 0}
    todo = deque([nodes[0]])
    while todo:
        node = todo.popleft()
        for e in node.edges:
            if e.dst.ident not in dist:
                dist[e.dst.ident] = dist[node.ident] + 1
                todo.append(e.dst)
    return dist


def rank(nodes, rounds):
    base = 0.15 / len(nodes)
    score = {node.ident: 1.0 / len(nodes) for node in nodes}
    for _ in range(rounds):
        nxt = defaultdict(float)
        for node in nodes:
            share = score[node.ident] / max(1, len(node.edges))
            for e in node.edges:
                nxt[e.dst.ident] += share * 0.85
        score = {node.ident: nxt.get(node.ident, 0.0) + base for node in nodes}
    return score


def round_trip(nodes):
    doc = [{"id": n.ident, "label": n.label, "w": round(n.weight, 4),
            "edges": [[e.dst.ident, round(e.weight, 3)] for e in n.edges]} for n in nodes]
    back = json.loads(json.dumps(doc))
    rebuilt = [Node(d["id"], d["label"], d["w"]) for d in back]
    for d, node in zip(back, rebuilt):
        node.edges = [Edge(node, rebuilt[i], w) for i, w in d["edges"]]
    return rebuilt


def text_stats(rng, lines):
    words = Counter()
    bigrams = Counter()
    for i in range(lines):
        line = " ".join(rng.choice(WORDS) for _ in range(12)) + f" #{i % 97}"
        toks = line.upper().split()
        words.update(toks)
        bigrams.update(zip(toks, toks[1:]))
    return words.most_common(5), bigrams.most_common(5)


def main():
    rng = random.Random(1)
    nodes = build(rng, 40_000, 4)
    dist = bfs(nodes)
    score = rank(nodes, 3)
    nodes2 = round_trip(nodes)
    for node in nodes2:
        node.attrs["tags"].add(node.label.split("-")[0])
    top_words, top_bigrams = text_stats(rng, 30_000)
    best = max(score, key=score.get)
    print(f"objects_graph: {len(nodes2)} nodes, reach {len(dist)}, best {best}, "
          f"top {top_words[0][0]}, {top_bigrams[0][0]}")


if __name__ == "__main__":
    main()
'''

# name -> (kind, source: a path under pgo/targets or inline code, what it is)
PROGRAMS = {
    "pipeline": (NUMPY, TARGETS / "pipeline.py", "pgo example: 48 MB numpy temporaries"),
    "small_arrays": (NUMPY, TARGETS / "small_arrays.py",
                     "pgo example: many small numpy arrays in Python loops"),
    "scoped_temps": (NUMPY, TARGETS / "scoped_temps.py",
                     "pgo example: numpy temporaries freed when a function returns"),
    "records": (OBJECTS, TARGETS / "records.py", "pgo example: dicts/lists, GC-heavy"),
    "numpy_stats": (NUMPY, NUMPY_STATS, "not a pgo example: FFT, linalg, sort, stats"),
    "objects_graph": (OBJECTS, OBJECTS_GRAPH,
                      "not a pgo example: class-instance graph, json, Counter"),
}

# ---------------------------------------------------------------------------
# Arms: name -> extra `pgo profile` flags (None: the baseline, no pgo).

def _off(*collectors):
    return [f"--no-{c}" for c in collectors]


ARMS = {
    "baseline": None,
    "default": [],
    "no-cpu": _off("cpu"),
    "no-events": _off("events"),
    "no-objects": _off("objects"),
    "no-gc": _off("gc"),
    "only-cpu": _off("events", "objects", "gc"),
    "only-events": _off("cpu", "objects", "gc"),
    "only-objects": _off("cpu", "events", "gc"),
    "only-gc": _off("cpu", "events", "objects"),
    "none": _off(*COLLECTORS),
    "tracemalloc": ["--tracemalloc"],
}
QUICK_ARMS = ("baseline", "default", "none", "tracemalloc")


# ---------------------------------------------------------------------------
# Running one arm once.

def _children_usage():
    """(user + sys seconds, minor faults) of every child reaped so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime, ru.ru_minflt


def _du(path):
    """(allocated bytes, as `du` counts them; apparent bytes; file count)."""
    blocks = size = files = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            blocks += st.st_blocks * 512
            size += st.st_size
            files += 1
    return blocks, size, files


def _manifest_digest(bundle):
    """The few manifest fields worth keeping per run (counts, self-measured cost)."""
    try:
        m = json.loads((bundle / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        return {"error": f"manifest: {e}"}
    out = {"duration_s": m.get("duration_s"), "complete": m.get("complete"),
           "warnings": m.get("warnings"), "overhead": m.get("overhead"), "collectors": {}}
    for name, c in (m.get("collectors") or {}).items():
        out["collectors"][name] = {k: c[k] for k in ("status", "samples", "recorded", "seen",
                                                     "sample_level", "write_errors")
                                   if k in c}
    return out


class RunFailed(RuntimeError):
    pass


def run_once(prog_path, arm, flags, workdir, env):
    """Run one arm once; return a dict with wall_s, cpu_s and (pgo arms) the bundle."""
    bundle = workdir / f"bundle-{arm}"
    if bundle.exists():
        shutil.rmtree(bundle)
    if flags is None:
        cmd = [sys.executable, str(prog_path)]
    else:
        cmd = [sys.executable, "-m", "pgo", "profile", "-q", *flags, "-o", str(bundle),
               "--", sys.executable, str(prog_path)]
    c0, f0 = _children_usage()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    c1, f1 = _children_usage()
    cpu_s, minflt = c1 - c0, f1 - f0
    stderr = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        raise RunFailed(f"{arm}: `{' '.join(cmd)}` exited with {proc.returncode}:\n"
                        f"{stderr[-3000:]}")
    rec = {"wall_s": wall, "cpu_s": cpu_s, "minflt": minflt, "loadavg_1m_after": os.getloadavg()[0]}
    if stderr.strip():
        rec["stderr"] = stderr[-2000:]
    if flags is not None:
        if bundle.exists():
            rec["bundle_du_bytes"], rec["bundle_bytes"], rec["bundle_files"] = _du(bundle)
            rec["manifest"] = _manifest_digest(bundle)
            shutil.rmtree(bundle)
        else:
            rec["bundle_du_bytes"] = None
    return rec


# ---------------------------------------------------------------------------
# Statistics.

def summarize(prog, kind, runs, arms):
    """runs[arm] = list of run records (timed repetitions only)."""
    wall = {a: [r["wall_s"] for r in runs[a]] for a in arms}
    cpu = {a: [r["cpu_s"] for r in runs[a]] for a in arms}
    base = wall["baseline"]
    res = {"kind": kind, "arms": {}, "collectors": {}}
    for a in arms:
        med, lo, hi, ratios = paired(wall[a], base)
        res["arms"][a] = {
            "median_wall_s": median(wall[a]),
            "median_cpu_s": median(cpu[a]),
            "median_minflt": median(r["minflt"] for r in runs[a]),
            "ratio_paired": med, "ratio_min": lo, "ratio_max": hi,
            "ratio_of_medians": median(wall[a]) / median(base),
            "ratios": ratios,
            "cpu_ratio_paired": paired(cpu[a], cpu["baseline"])[0],
            "wall_s": wall[a], "cpu_s": cpu[a], "minflt": [r["minflt"] for r in runs[a]],
        }
        du = [r.get("bundle_du_bytes") for r in runs[a]]
        if a != "baseline" and any(d is not None for d in du):
            res["arms"][a]["median_bundle_du_bytes"] = median(du)
            res["arms"][a]["median_bundle_bytes"] = median(
                [r.get("bundle_bytes") for r in runs[a]])
    for c in COLLECTORS:
        entry = {}
        if "default" in arms and f"no-{c}" in arms:
            med, lo, hi, _ = paired(wall["default"], wall[f"no-{c}"])
            entry["default_over_without"] = med
            entry["default_over_without_min"] = lo
            entry["default_over_without_max"] = hi
            entry["default_over_without_cpu"] = paired(cpu["default"], cpu[f"no-{c}"])[0]
        if f"only-{c}" in arms and "none" in arms:
            med, lo, hi, _ = paired(wall[f"only-{c}"], wall["none"])
            entry["only_over_none"] = med
            entry["only_over_none_min"] = lo
            entry["only_over_none_max"] = hi
            entry["only_over_none_cpu"] = paired(cpu[f"only-{c}"], cpu["none"])[0]
        if entry:
            res["collectors"][c] = entry
    d = res["arms"].get("default")
    if d is not None:
        limit = TARGET_RATIO[kind]
        res["target"] = {"text": f"default <= {limit}x baseline ({kind})", "threshold": limit,
                         "value": d["ratio_paired"],
                         "met": d["ratio_paired"] <= limit}
    return res


# ---------------------------------------------------------------------------
# Output.

def _mib(b):
    return "-" if b is None else f"{b / (1 << 20):.2f} MiB"


def _x(r):
    return "-" if r is None else f"{r:.2f}x"


def print_report(results, arms, out=sys.stdout):
    for prog, res in results.items():
        print(f"\n== {prog} ({res['kind']}): {PROGRAMS[prog][2]}", file=out)
        hdr = (f"  {'arm':<13} {'median s':>9} {'ratio':>7} {'min':>7} {'max':>7} "
               f"{'ratio of med':>12} {'cpu s':>7} {'cpu ratio':>9} {'minflt':>8} {'bundle (du)':>12}")
        print(hdr, file=out)
        print("  " + "-" * (len(hdr) - 2), file=out)
        for a in arms:
            r = res["arms"][a]
            print(f"  {a:<13} {r['median_wall_s']:>9.3f} {_x(r['ratio_paired']):>7} "
                  f"{_x(r['ratio_min']):>7} {_x(r['ratio_max']):>7} "
                  f"{_x(r['ratio_of_medians']):>12} {r['median_cpu_s']:>7.2f} "
                  f"{_x(r['cpu_ratio_paired']):>9} {r['median_minflt'] / 1000:>7.0f}k "
                  f"{_mib(r.get('median_bundle_du_bytes')) if a != 'baseline' else '-':>12}",
                  file=out)

    if any(res["collectors"] for res in results.values()):
        print("\nPer collector: default / default-without-X (what X adds to the default run)"
              "\n               and only-X / none (X alone over the bare launcher);"
              " medians of per-repetition ratios", file=out)
        hdr = f"  {'program':<14}" + "".join(f" {c + ' (d/-X, X/none)':>24}" for c in COLLECTORS)
        print(hdr, file=out)
        print("  " + "-" * (len(hdr) - 2), file=out)
        for prog, res in results.items():
            cells = []
            for c in COLLECTORS:
                e = res["collectors"].get(c, {})
                cells.append(f"{_x(e.get('default_over_without')):>11}, "
                             f"{_x(e.get('only_over_none')):>11}")
            print(f"  {prog:<14}" + "".join(f" {cell:>24}" for cell in cells), file=out)

    print("\nTargets: default / baseline (median of per-repetition ratios)", file=out)
    hdr = (f"  {'program':<14} {'kind':<13} {'baseline s':>10} {'default s':>10} "
           f"{'ratio':>7} {'[min-max]':>15} {'launcher':>9} {'tracemalloc':>11} "
           f"{'bundle (du)':>12} {'target':>7}  result")
    print(hdr, file=out)
    print("  " + "-" * (len(hdr) - 2), file=out)
    met = total = 0
    for prog, res in results.items():
        a = res["arms"]
        t = res.get("target")
        d = a.get("default")
        rng_txt = f"[{d['ratio_min']:.2f}-{d['ratio_max']:.2f}]" if d else "-"
        result = "-"
        if t:
            total += 1
            met += t["met"]
            result = "MET" if t["met"] else "MISSED"
        print(f"  {prog:<14} {res['kind']:<13} {a['baseline']['median_wall_s']:>10.3f} "
              f"{d['median_wall_s'] if d else float('nan'):>10.3f} "
              f"{_x(d['ratio_paired'] if d else None):>7} {rng_txt:>15} "
              f"{_x(a['none']['ratio_paired'] if 'none' in a else None):>9} "
              f"{_x(a['tracemalloc']['ratio_paired'] if 'tracemalloc' in a else None):>11} "
              f"{_mib(d.get('median_bundle_du_bytes') if d else None):>12} "
              f"{'<=' + str(t['threshold']) + 'x' if t else '-':>7}  {result}", file=out)
    print(f"\ntargets met: {met}/{total}", file=out)

    notes = []
    for prog, res in results.items():
        odd = [f"{a} {min(r['minflt']) / 1000:.0f}k-{max(r['minflt']) / 1000:.0f}k"
               for a, r in res["arms"].items()
               if min(r["minflt"]) > 0 and max(r["minflt"]) > FAULT_SPREAD * min(r["minflt"])]
        if odd:
            res["fault_bistable_arms"] = odd
            notes.append(f"  {prog}: minor faults vary > {FAULT_SPREAD}x between runs of the same "
                         f"arm ({', '.join(odd)}): the slow runs are page faults, not pgo's "
                         f"collectors; its ratios depend on how many runs landed in that mode")
    if notes:
        print("\nNotes:", file=out)
        for n in notes:
            print(n, file=out)


# ---------------------------------------------------------------------------

def _machine():
    info = {"platform": platform.platform(), "python": sys.version,
            "executable": sys.executable, "cpu_count": os.cpu_count(),
            "loadavg_start": os.getloadavg()}
    cpu = common.cpu_model()
    if cpu:
        info["cpu"] = cpu
    try:
        import numpy
        info["numpy"] = numpy.__version__
    except ImportError:
        info["numpy"] = None
    info["py_spy"] = common.cmd_out(["py-spy", "--version"]) or None
    info["git_commit"] = common.git_commit()
    info["pgo_dirty"] = common.pgo_tree_dirty()
    info["blas_env"] = {k: os.environ.get(k) for k in BLAS_ENV}
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Wall-time overhead of `pgo profile` per program and per collector.")
    ap.add_argument("-n", "--repeat", type=int, default=None,
                    help="timed repetitions per arm after one warm-up (default 5; 3 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="arms baseline, default, none, tracemalloc only; -n 3 unless given")
    ap.add_argument("--programs", default=",".join(PROGRAMS),
                    help=f"comma-separated subset of: {', '.join(PROGRAMS)}")
    ap.add_argument("--blas-threads", type=int, default=1, metavar="N",
                    help="set OPENBLAS/OMP/MKL_NUM_THREADS=N in every child (default 1; "
                         "0: leave the environment as it is)")
    ap.add_argument("--bytecode-as-env", action="store_true",
                    help="leave PYTHONDONTWRITEBYTECODE / PYTHONPYCACHEPREFIX as they are "
                         "(default: children cache bytecode in a temp dir, as an installed "
                         "pgo would have its .pyc files)")
    ap.add_argument("--out", "-o", default=str(common.RESULTS / "profile_overhead.json"),
                    help="JSON results (default: benchmarks/results/profile_overhead.json)")
    args = ap.parse_args(argv)
    repeat = args.repeat if args.repeat is not None else (3 if args.quick else 5)
    if repeat < 1:
        ap.error("--repeat must be >= 1")
    progs = [p.strip() for p in args.programs.split(",") if p.strip()]
    unknown = [p for p in progs if p not in PROGRAMS]
    if unknown or not progs:
        ap.error(f"unknown program(s) {unknown}; choose from {', '.join(PROGRAMS)}")
    arms = list(QUICK_ARMS) if args.quick else list(ARMS)

    env = common.child_env(["PYTHONTRACEMALLOC"] +
                           ([] if args.bytecode_as_env else ["PYTHONDONTWRITEBYTECODE"]))
    if args.blas_threads > 0:
        for k in BLAS_ENV:
            env[k] = str(args.blas_threads)

    machine = _machine()
    started = time.time()
    print(f"bench_profile_overhead: programs={','.join(progs)} arms={len(arms)} "
          f"repeat={repeat} (+1 warm-up), Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load {machine['loadavg_start'][0]:.2f}, "
          f"BLAS threads {args.blas_threads or 'as in the environment'}", file=sys.stderr)

    results, raw, programs_json = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="pgo-overhead-") as tmp:
        tmp = Path(tmp)
        if not args.bytecode_as_env:
            env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        for prog in progs:
            kind, source, what = PROGRAMS[prog]
            workdir = tmp / prog
            workdir.mkdir()
            if isinstance(source, Path):
                prog_path = source
                programs_json[prog] = {"kind": kind, "what": what,
                                       "path": os.fspath(source.relative_to(ROOT))}
            else:
                prog_path = workdir / f"{prog}.py"
                prog_path.write_text(textwrap.dedent(source))
                programs_json[prog] = {"kind": kind, "what": what, "inline": True,
                                       "source": source}
            runs = {a: [] for a in arms}
            warm = {}
            try:
                for a in arms:
                    print(f"  [{prog}] warm-up {a}", file=sys.stderr, flush=True)
                    warm[a] = run_once(prog_path, a, ARMS[a], workdir, env)
                for r in range(repeat):
                    for a in common.round_order(arms, r):
                        rec = run_once(prog_path, a, ARMS[a], workdir, env)
                        runs[a].append(rec)
                        print(f"  [{prog}] rep {r + 1}/{repeat} {a:<13} "
                              f"{rec['wall_s']:.3f} s", file=sys.stderr, flush=True)
                    b = runs["baseline"][r]["wall_s"]
                    print(f"  [{prog}] rep {r + 1}/{repeat} ratios: " + ", ".join(
                        f"{a} {runs[a][r]['wall_s'] / b:.2f}x" for a in arms if a != "baseline")
                        + f"; load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
            except RunFailed as e:
                print(f"bench_profile_overhead: {prog} failed: {e}", file=sys.stderr)
                return 1
            results[prog] = summarize(prog, kind, runs, arms)
            raw[prog] = {"warmup": warm, "runs": runs}
            elapsed = time.time() - started
            print(f"  [{prog}] done; {elapsed:.0f} s elapsed", file=sys.stderr, flush=True)

    machine["loadavg_end"] = os.getloadavg()
    print_report(results, arms)

    doc = {
        "benchmark": "profile_overhead",
        "date": common.utc_now(),
        "command": [sys.executable, *sys.argv],
        "settings": {"repeat": repeat, "quick": args.quick, "arms": arms,
                     "blas_threads": args.blas_threads or "environment",
                     "bytecode": "environment" if args.bytecode_as_env else
                                 "cached under a temp PYTHONPYCACHEPREFIX",
                     "arm_flags": {a: ARMS[a] for a in arms}, "programs": progs,
                     "warmup_runs": 1, "order": "A B C ..., reversed every other repetition"},
        "targets": {k: v for k, v in TARGET_RATIO.items()},
        "machine": machine,
        "elapsed_s": time.time() - started,
        "programs": programs_json,
        "results": results,
        "raw": raw,
    }
    common.save_json(args.out, doc, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
