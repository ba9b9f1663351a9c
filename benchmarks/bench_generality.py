"""Does a config made on a small run hold on the real one, on programs
nobody tuned pgo for?  (issue 19)

    python3 benchmarks/bench_generality.py [-n 7] [--programs a,b] [--scales 1,3]
        [--pyperformance] [--pyperf-benchmarks gc_collect,go] [--quick]
        [--peers LIST] [--keep DIR] [-o benchmarks/results/generality.json]

For every program of the corpus (``benchmarks/corpus/``, see its
``CORPUS`` table) and, with ``--pyperformance``, for a set of
pyperformance benchmarks run in pyperf's worker mode:

1. ``pgo profile`` at the program's profile scale (a third of its scale-1
   size for the corpus; ``--loops L`` for pyperformance);
2. ``pgo analyze`` into a config;
3. ``pgo bench -c CONFIG -n N --peers jemalloc,mimalloc,tcmalloc,gc-freeze,gc-off``
   at 1x and 3x the profile scale (``--scales``): the same config on the
   profiled size and on a run three times bigger.

A cell is one program at one scale.  Per cell: each arm's median wall
time, its ratio to the baseline's median with the bootstrap 95% CI and the
Mann-Whitney p (from ``pgo bench``), each arm's median peak RSS, and the
config's rules (GC plan, size classes, sites).

Verdicts (issue 19's targets; MET / MISSED, never a failure, exit 0):

* ``not-slower`` (every cell): the config is not slower than the baseline
  beyond noise (``pgo bench``'s "significant": p < 0.05 and a CI that
  excludes 1).
* ``rss`` (every cell): the config's peak RSS <= 1.10x the baseline's;
  "declared" when it is over that but within what the config says its
  allocators may hold (the sum of their ``max_cached_bytes`` /
  ``limit_bytes`` / ``capacity``; for a cache with a headroom, that
  share of the peak it reached in the run).
* ``gc`` (kinds gc-bound and mixed): the config's median within 10% of
  GC-off's, and its peak RSS <= 1.10x the baseline's.
* ``alloc`` (kinds alloc-bound and mixed): the config's median <= 1.02x
  the best LD_PRELOAD peer's (jemalloc / mimalloc / tcmalloc), or not
  significantly slower than it (one-sided Mann-Whitney on the runs,
  p >= 0.05; with under 4 runs a side that test cannot say no, so the
  verdict is "inconclusive").  With no peer library installed: n/a.

pyperformance (``--pyperformance``): ``pip download --no-deps
pyperformance==1.14.0`` into a temporary folder at run time (its code is
never committed), the chosen benchmarks' ``run_benchmark.py`` unpacked from
the wheel and run as ``run_benchmark.py --worker --loops L --values 1
--warmups 0`` (pyperf's worker mode: one process, no calibration, no
spawning; the flags pyperf 2.10 and 2.11 accept).  pyperf (and psutil, its
requirement) is pip-installed into this interpreter's environment if it is
missing.  Their targets: not-slower and rss.

Options: ``-n RUNS`` (default 7), ``--programs a,b`` (exactly these, by
name, from the corpus or the pyperformance list; a pyperformance name
fetches pyperformance without ``--pyperformance``; default: the whole
corpus, plus ``--pyperf-benchmarks`` with ``--pyperformance``),
``--scales 1,3`` (multiples of the profile scale), ``--quick`` (n = 3,
scales 1 only), ``--peers`` (default all five; a peer whose library is
missing is skipped by ``pgo bench``, and said so under the matrix),
``--profile-args ARGS`` (extra options for ``pgo profile``, e.g.
``--no-objects``), ``--keep DIR`` (keep every bundle, config and bench
JSON there), ``-o PATH``.  The JSON is rewritten after each program (``"complete": false``
until the end), so a stopped run keeps what it measured.  Progress goes to
stderr; the matrix and the summary to stdout.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    PRELOAD_PEERS,
    RESULTS,
    ROOT,
    child_env,
    document,
    finish_machine_info,
    log,
    machine_info,
    p_greater,
    size_label,
    write_json,
)
from corpus import CORPUS, TARGETS_BY_KIND

PEERS = "jemalloc,mimalloc,tcmalloc,gc-freeze,gc-off"
PYPERFORMANCE = "pyperformance==1.14.0"
STEP_TIMEOUT_S = 3600          # one pgo command; a hung program is an error, not a hang

# pyperformance benchmarks that need nothing but pyperf and the standard
# library (no data files, no network): name -> (loops at the profile
# scale, what it exercises).  The loops give 0.4-0.55 s a run at 1x on the
# 2-core dev machine (0.09 s of it interpreter and pyperf start-up).
PYPERF_BENCHMARKS: dict[str, tuple[int, str]] = {
    "gc_collect": (30, "explicit gc.collect() of 100 freshly made cycles of 21 nodes"),
    "gc_traversal": (20, "explicit gc.collect() over a live nest of 500k list references"),
    "deepcopy": (600, "copy.deepcopy of nested dicts/lists/instances (3 tasks)"),
    "json_dumps": (16, "json.dumps of mixed dicts, lists and strings"),
    "nbody": (3, "float arithmetic on a few lists: next to no allocation"),
    "richards": (6, "the OS-scheduler simulation: instances, attribute access"),
    "float": (3, "100k Point instances made, normalised and dropped"),
    "deltablue": (60, "constraint solver: many small objects, lists, method calls"),
    "raytrace": (1, "a ray tracer: Vector instances made and dropped by the million"),
    "go": (2, "Go-playing MCTS: board and square objects, random play-outs"),
}


# -- what runs ---------------------------------------------------------------------

@dataclass
class Item:
    """One program of the matrix: a corpus script or a pyperformance benchmark."""

    name: str
    kind: str
    targets: tuple[str, ...]
    what: str
    profile_scale: float
    argv: Callable[[float], list[str]]        # the program's command line at a scale
    scale_label: Callable[[float], str]
    source: str = "corpus"


def fmt_scale(s: float) -> str:
    return f"{s:.6g}"


def corpus_items() -> list[Item]:
    out = []
    for p in CORPUS:
        out.append(Item(p.name, p.kind, p.targets, p.what, p.profile_scale,
                        argv=lambda s, path=str(p.path): [path, "--scale", fmt_scale(s)],
                        scale_label=lambda s: f"scale {fmt_scale(s)}"))
    return out


def ensure_pyperf() -> str:
    """pyperf's version, pip-installing it (with its requirements) into this
    interpreter's environment first if it is missing."""
    probe = [sys.executable, "-c", "import pyperf; print(pyperf.__version__)"]
    proc = subprocess.run(probe, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        log("pyperf is missing: pip install pyperf (into this interpreter's environment)")
        inst = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "pyperf"],
                              capture_output=True, text=True, check=False)
        if inst.returncode != 0:
            raise SystemExit(f"pip install pyperf failed:\n{inst.stdout}{inst.stderr}")
        proc = subprocess.run(probe, capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def fetch_pyperformance(dest: Path, names: list[str]) -> dict[str, Path]:
    """Download the pyperformance wheel into ``dest`` and unpack the chosen
    benchmarks' folders; name -> its run_benchmark.py."""
    log(f"pip download --no-deps {PYPERFORMANCE}")
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                           PYPERFORMANCE, "-d", str(dest)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"pip download {PYPERFORMANCE} failed:\n{proc.stdout}{proc.stderr}")
    wheel = next(dest.glob("pyperformance-*.whl"))
    prefix = "pyperformance/data-files/benchmarks/"
    out = {}
    with zipfile.ZipFile(wheel) as z:
        for name in names:
            members = [m for m in z.namelist() if m.startswith(f"{prefix}bm_{name}/")]
            if not members:
                raise SystemExit(f"{wheel.name} has no benchmark {name!r}")
            z.extractall(dest, members)
            out[name] = dest / prefix / f"bm_{name}" / "run_benchmark.py"
    return out


def pyperf_items(names: list[str], scripts: dict[str, Path]) -> list[Item]:
    out = []
    for name in names:
        loops, what = PYPERF_BENCHMARKS[name]

        def argv(s: float, script: str = str(scripts[name]), loops: int = loops) -> list[str]:
            return [script, "--worker", "--loops", str(max(1, round(loops * s))),
                    "--values", "1", "--warmups", "0"]

        out.append(Item(name, "pyperformance", (), what, 1.0, argv,
                        lambda s, loops=loops: f"loops {max(1, round(loops * s))}",
                        source="pyperformance"))
    return out


# -- running pgo ---------------------------------------------------------------------

def pgo(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """``python -m pgo ARGS`` from the repository root (this checkout's pgo);
    a failure raises with its output."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pgo", *args], capture_output=True, text=True,
                          env=child_env(), cwd=ROOT, timeout=STEP_TIMEOUT_S, check=False)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        errors = [ln for ln in lines if "error" in ln.lower() and "warning:" not in ln]
        head = (errors or lines or [f"exit status {proc.returncode}"])[-1]
        tail = "\n".join(lines[-15:])
        raise RuntimeError(f"pgo {args[0]} failed: {head}\n{tail}")
    return proc, dt


def config_rules(path: Path) -> dict[str, Any]:
    """What the config does: its GC plan, size classes and sites, and the
    bytes its allocators say they may hold."""
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    gc = {k: v for k, v in doc.get("gc", {}).items() if k != "reason"}
    size_classes = [{k: v for k, v in d.items() if k != "reason"}
                    for d in doc.get("numpy", {}).get("size_class", [])]
    sites = [{k: v for k, v in d.items() if k != "reason"} for d in doc.get("site", [])]
    declared = 0
    for d in size_classes + sites:
        # A cache with a headroom declares a share of its own peak, which
        # only the run knows (headroom_bytes), not its max_cached_bytes.
        keys = (("limit_bytes", "capacity") if d.get("headroom_percent") is not None else
                ("max_cached_bytes", "limit_bytes", "capacity"))
        for key in keys:
            if isinstance(d.get(key), int):
                declared += d[key]
    return {"gc": gc, "gc_reason": doc.get("gc", {}).get("reason", ""),
            "size_classes": size_classes, "sites": sites, "declared_bytes": declared}


def rules_label(rules: dict[str, Any]) -> str:
    parts = []
    gc = rules["gc"]
    if gc.get("thresholds") is not None:
        parts.append("gc " + "/".join(str(x) for x in gc["thresholds"]))
    if gc.get("full_collection") == "growth":
        parts.append(f"full@growth x{gc.get('growth_factor', 0):g}")
    if gc.get("freeze_after_startup"):
        parts.append("freeze")
    for sc in rules["size_classes"]:
        rng = size_label(sc["min_bytes"]) + (f"-{size_label(sc['max_bytes'])}"
                                             if sc.get("max_bytes") else "+")
        parts.append(f"{sc['allocator']} {rng}")
    for site in rules["sites"]:
        parts.append(f"{site['allocator']} in {site['function'].split(':')[-1]}")
    return ", ".join(parts) or "none (leave as is)"


# -- one cell ---------------------------------------------------------------------------

def headroom_bytes(doc: dict[str, Any]) -> int:
    """What the config's headroom caches said they may add in this run:
    headroom_percent of the peak each reached (from the config arm's
    runtime statistics in ``pgo bench``'s JSON)."""
    stats = ((doc.get("summary") or {}).get("config") or {}).get("runtime_stats") or {}
    total = 0
    allocators = list((stats.get("numpy") or {}).get("allocators") or [])
    allocators += list(((stats.get("sites") or {}).get("allocators") or {}).values())
    for a in allocators:
        if isinstance(a, dict) and a.get("headroom_percent") is not None:
            total += int(a.get("peak", 0)) * int(a["headroom_percent"]) // 100
    return total


def cell_from_bench(doc: dict[str, Any]) -> dict[str, Any]:
    """Per arm: median wall, ratio to baseline (CI, p, significant), median
    peak RSS and faults, and every run's wall time."""
    summary = doc["summary"]
    walls: dict[str, list[float]] = {}
    for run in doc["runs"]:
        if not run.get("error"):
            walls.setdefault(run["arm"], []).append(run["wall_s"])
    arms = {}
    for arm in doc["arms"]:
        s = summary.get(arm)
        if not s:
            continue
        w = s["wall_s"]
        arms[arm] = {"median_s": w["median"], "ratio": w.get("ratio"), "ci": w.get("ci"),
                     "p": w.get("p"), "significant": w.get("significant", False),
                     "n": w.get("n"),
                     "max_rss_kib": s.get("max_rss_kib", {}).get("median"),
                     "minor_faults": s.get("minor_faults", {}).get("median"),
                     "wall_runs": walls.get(arm, [])}
    failed = sum(1 for r in doc["runs"] if r.get("error"))
    return {"arms": arms, "failed_runs": failed, "warnings": doc.get("warnings", [])}


def verdicts(cell: dict[str, Any], targets: tuple[str, ...], declared_bytes: int
             ) -> dict[str, Any]:
    """The targets' verdicts for one cell: True (met), False (missed),
    a string (inconclusive / declared / n/a), and the numbers behind them."""
    arms = cell["arms"]
    base, cfg = arms["baseline"], arms["config"]
    v: dict[str, Any] = {}
    v["not_slower"] = not (cfg["significant"] and (cfg["ratio"] or 0) > 1)
    rss_ratio = cfg["max_rss_kib"] / base["max_rss_kib"]
    v["rss_ratio"] = round(rss_ratio, 4)
    if rss_ratio <= 1.10:
        v["rss"] = True
    elif (cfg["max_rss_kib"] - 1.10 * base["max_rss_kib"]) * 1024 <= declared_bytes:
        v["rss"] = "declared"
    else:
        v["rss"] = False
    if "gc" in targets:
        off = arms.get("gc-off")
        if off is None:
            v["gc"] = "n/a (no gc-off arm)"
        else:
            v["vs_gc_off"] = round(cfg["median_s"] / off["median_s"], 4)
            v["gc"] = cfg["median_s"] <= 1.10 * off["median_s"] and rss_ratio <= 1.10
    if "alloc" in targets:
        peers = [a for a in PRELOAD_PEERS if a in arms and arms[a]["wall_runs"]]
        if not peers:
            v["alloc"] = "n/a (no LD_PRELOAD peer)"
        else:
            best = min(peers, key=lambda a: arms[a]["median_s"])
            vs = cfg["median_s"] / arms[best]["median_s"]
            p = p_greater(cfg["wall_runs"], arms[best]["wall_runs"])
            few = min(len(cfg["wall_runs"]), len(arms[best]["wall_runs"])) < 4
            v.update(best_peer=best, vs_best_peer=round(vs, 4), vs_best_peer_p=round(p, 4))
            v["alloc"] = True if vs <= 1.02 else ("inconclusive (under 4 runs)" if few
                                                  else p >= 0.05)
    return v


# -- the report ----------------------------------------------------------------------------

def mark(x: Any) -> str:
    if x is True:
        return "MET"
    if x is False:
        return "MISSED"
    if x is None:
        return "-"
    s = str(x)
    return {"declared": "declared"}.get(s, s.split(" ")[0])


def ratio_str(a: dict[str, Any] | None) -> str:
    if not a or a.get("ratio") is None:
        return "-"
    return f"{a['ratio']:.3f}" + ("*" if a.get("significant") else "")


def print_matrix(results: list[dict[str, Any]]) -> None:
    head = ("program", "kind", "x", "size", "base s", "config x [95% CI]", "best peer x",
            "gc-off x", "RSS c/b", "not-slower", "rss", "gc", "alloc")
    rows = []
    for r in results:
        for c in r["cells"]:
            if c.get("error"):
                rows.append((r["name"], r["kind"], f"{c['multiple']:g}", c["size"],
                             "ERROR: " + c["error"].splitlines()[0]))
                continue
            arms, v = c["arms"], c["verdicts"]
            cfg = arms["config"]
            ci = cfg.get("ci") or [None, None]
            cfg_s = (ratio_str(cfg) + (f" [{ci[0]:.2f}-{ci[1]:.2f}]" if ci[0] is not None else ""))
            peers = [a for a in PRELOAD_PEERS if a in arms]
            if peers:
                best = min(peers, key=lambda a: arms[a]["median_s"])
                peer_s = f"{best} {ratio_str(arms[best])}"
            else:
                peer_s = "-"
            rows.append((r["name"], r["kind"], f"{c['multiple']:g}", c["size"],
                         f"{arms['baseline']['median_s']:.3f}", cfg_s, peer_s,
                         ratio_str(arms.get("gc-off")), f"{v['rss_ratio']:.3f}",
                         mark(v["not_slower"]), mark(v["rss"]),
                         mark(v.get("gc")), mark(v.get("alloc"))))
    # Error rows (5 fields: the message runs on) do not widen the columns.
    widths = [max(len(str(x)) for x in col) for col in zip(head, *(r for r in rows
                                                                   if len(r) == len(head)))]

    def line(xs: tuple[str, ...] | list[str]) -> str:
        return "  ".join(str(x).ljust(w) for x, w in zip(xs, widths)).rstrip()

    print(line(head))
    print(line("-" * w for w in widths))
    for row in rows:
        print(line(row) if len(row) == len(head) else line(row[:4]) + "  " + row[4])
    print("x: time ratio to the baseline's median (< 1: faster); *: significant "
          "(p < 0.05 and the CI excludes 1); RSS c/b: median peak RSS, config / baseline.")


def print_configs(results: list[dict[str, Any]]) -> None:
    print("\nconfigs (made at the 1x size):")
    w = max((len(r["name"]) for r in results), default=0)
    for r in results:
        label = r.get("rules_label") or "(no config: " + \
            (str(r.get("error", "")).strip().splitlines() or [""])[0][:70] + ")"
        print(f"  {r['name'].ljust(w)}  {label}")


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cells = [(r, c) for r in results for c in r["cells"] if not c.get("error")]
    for key in ("not_slower", "rss", "gc", "alloc"):
        applicable = [(r, c) for r, c in cells if key in c["verdicts"]]
        met = [(r, c) for r, c in applicable if c["verdicts"][key] is True]
        missed = [(r, c) for r, c in applicable if c["verdicts"][key] is False]
        other = [(r, c) for r, c in applicable if c["verdicts"][key] not in (True, False)]
        out[key] = {"applicable": len(applicable), "met": len(met), "missed": len(missed),
                    "other": len(other),
                    "missed_cells": [f"{r['name']}@{c['multiple']:g}x" for r, c in missed],
                    "other_cells": [f"{r['name']}@{c['multiple']:g}x: {c['verdicts'][key]}"
                                    for r, c in other]}
    out["cells"] = len(cells)
    out["errors"] = [f"{r['name']}@{c['multiple']:g}x" for r in results for c in r["cells"]
                     if c.get("error")] + [r["name"] for r in results
                                           if r.get("error") and not r["cells"]]
    out["all_met"] = sum(1 for _, c in cells
                         if all(c["verdicts"].get(k) in (True, None) or
                                (k == "rss" and c["verdicts"][k] == "declared")
                                for k in ("not_slower", "rss", "gc", "alloc")))
    return out


def print_summary(s: dict[str, Any]) -> None:
    names = {"not_slower": "not slower than baseline beyond noise (every cell)",
             "rss": "peak RSS <= 1.10x baseline (declared: over, within the config's allocator limits)",
             "gc": "gc-bound/mixed: within 10% of gc-off at <= +10% RSS",
             "alloc": "alloc-bound/mixed: <= 1.02x best LD_PRELOAD peer or n.s. slower"}
    print(f"\nsummary over {s['cells']} cells ({s['all_met']} meet every target that applies):")
    for key, text in names.items():
        t = s[key]
        line = f"  {text}: {t['met']}/{t['applicable']} met"
        if t["missed"]:
            line += f"; missed: {', '.join(t['missed_cells'])}"
        if t["other"]:
            line += f"; other: {'; '.join(t['other_cells'])}"
        print(line)
    if s["errors"]:
        print(f"  errors: {', '.join(s['errors'])}")


# -- main -------------------------------------------------------------------------------------

def run_item(item: Item, work: Path, scales: list[float], runs: int, peers: str,
             progress: Callable[[str], None], profile_args: list[str]) -> dict[str, Any]:
    d = work / item.name
    # A --keep folder used before holds that run's files: this run's replace them.
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    res: dict[str, Any] = {"name": item.name, "source": item.source, "kind": item.kind,
                           "targets": list(item.targets), "what": item.what,
                           "profile_scale": item.profile_scale,
                           "profile_size": item.scale_label(item.profile_scale), "cells": []}
    try:
        progress(f"{item.name}: pgo profile at {item.scale_label(item.profile_scale)}")
        _, res["profile_s"] = pgo("profile", "-q", *profile_args, "-o", str(d / "profile"), "--",
                                  *item.argv(item.profile_scale))
        progress(f"{item.name}: pgo analyze")
        _, res["analyze_s"] = pgo("analyze", "-q", str(d / "profile"), "-o", str(d / "pgo.toml"))
        rules = config_rules(d / "pgo.toml")
        res["rules"] = rules
        res["rules_label"] = rules_label(rules)
        res["config"] = (d / "pgo.toml").read_text()
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        res["error"] = str(e)
        log(f"  {item.name}: {e}")
        return res
    log(f"  config: {res['rules_label']}")
    for m in scales:
        s = item.profile_scale * m
        cell: dict[str, Any] = {"multiple": m, "scale": s, "size": item.scale_label(s)}
        out = d / f"bench-{m:g}x.json"
        try:
            progress(f"{item.name}: pgo bench at {m:g}x ({item.scale_label(s)}), n={runs}")
            _, cell["bench_s"] = pgo("bench", "-q", "-c", str(d / "pgo.toml"), "-n", str(runs),
                                        "--peers", peers, "-o", str(out), "--", *item.argv(s))
            doc = json.loads(out.read_text())
            cell.update(cell_from_bench(doc))
            cell["verdicts"] = verdicts(cell, item.targets,
                                        rules["declared_bytes"] + headroom_bytes(doc))
            a, v = cell["arms"], cell["verdicts"]
            log(f"  {m:g}x: baseline {a['baseline']['median_s']:.3f} s, config "
                f"x{a['config']['ratio']:.3f}, RSS x{v['rss_ratio']:.3f}"
                + (f", gc-off x{a['gc-off']['ratio']:.3f}" if "gc-off" in a else "")
                + f" ({cell['bench_s']:.0f} s)")
        except (RuntimeError, subprocess.TimeoutExpired, KeyError, ValueError) as e:
            cell["error"] = str(e) if isinstance(e, RuntimeError) else f"{type(e).__name__}: {e}"
            log(f"  {item.name} {m:g}x: {cell['error']}")
        res["cells"].append(cell)
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("-n", "--runs", type=int, default=7, help="runs per arm (default 7)")
    parser.add_argument("--programs", default="",
                        help="comma-separated names, from the corpus or the pyperformance "
                             "list (exactly these); default: the whole corpus")
    parser.add_argument("--scales", default="1,3",
                        help="multiples of the profile scale to bench at (default 1,3)")
    parser.add_argument("--quick", action="store_true", help="n = 3, scales 1 only")
    parser.add_argument("--pyperformance", action="store_true",
                        help=f"also pyperformance benchmarks ({PYPERFORMANCE}, fetched now)")
    parser.add_argument("--pyperf-benchmarks", default=",".join(PYPERF_BENCHMARKS),
                        help="which pyperformance benchmarks (default: %(default)s)")
    parser.add_argument("--peers", default=PEERS, help="pgo bench peers (default: %(default)s)")
    parser.add_argument("--profile-args", default="", metavar="ARGS",
                        help="extra options for pgo profile, e.g. '--no-objects'")
    parser.add_argument("--keep", metavar="DIR",
                        help="keep bundles, configs and bench JSON files in DIR")
    parser.add_argument("-o", "--output", default=str(RESULTS / "generality.json"))
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs
    scales = [1.0] if args.quick else [float(x) for x in args.scales.split(",") if x]

    started = time.perf_counter()
    corpus = corpus_items()
    known = {i.name for i in corpus}
    wanted = [x for x in args.programs.split(",") if x]
    ppf_names = [x for x in args.pyperf_benchmarks.split(",") if x] if args.pyperformance else []
    # --programs may name pyperformance benchmarks too (they are then fetched).
    unknown = [x for x in wanted + ppf_names if x not in known and x not in PYPERF_BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown program(s) {', '.join(unknown)}; corpus: {', '.join(sorted(known))}; "
                         f"pyperformance: {', '.join(PYPERF_BENCHMARKS)}")
    if wanted:                     # exactly those named, from either list
        items = [i for i in corpus if i.name in wanted]
        ppf_names = [x for x in wanted if x in PYPERF_BENCHMARKS]
    else:
        items = corpus
    machine = machine_info()

    def settings() -> dict[str, Any]:
        return {"runs": runs, "scales": scales, "peers": args.peers,
                "profile_args": args.profile_args,
                "programs": [i.name for i in items], "pyperformance": ppf_names,
                "kinds": {**{k: list(v) for k, v in TARGETS_BY_KIND.items()}, "pyperformance": []}}
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pgo-generality-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        if ppf_names:
            machine["pyperf"] = ensure_pyperf()
            machine["pyperformance"] = PYPERFORMANCE
            scripts = fetch_pyperformance(tmp / "pyperformance", ppf_names)
            items += pyperf_items(ppf_names, scripts)
        steps = len(items) * (2 + len(scales))
        done = [0]

        def progress(msg: str) -> None:
            done[0] += 1
            log(f"[{done[0]}/{steps} {time.perf_counter() - started:6.0f} s] {msg}")

        results = []
        for item in items:
            results.append(run_item(item, tmp / "work", scales, runs, args.peers, progress,
                                    shlex.split(args.profile_args)))
            # What is done so far, in case a long run is stopped.
            write_json(args.output, document("generality", settings(), machine,
                                             complete=False, results=results))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    print_matrix(results)
    print_configs(results)
    summary = summarize(results)
    print_summary(summary)
    warnings = sorted({w for r in results for c in r["cells"] for w in c.get("warnings", [])})
    for w in warnings:
        print(f"note: {w}")
    finish_machine_info(machine, started)
    doc = document("generality", settings(), machine, complete=True, results=results,
                   summary=summary, warnings=warnings)
    path = write_json(args.output, doc)
    print(f"wrote {path} ({machine['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
