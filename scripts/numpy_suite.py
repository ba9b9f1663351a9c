#!/usr/bin/env python3
"""Run a slice of numpy's own test suite twice -- plain, then with a pgo
Router installed as numpy's global data-memory handler -- and compare.

    python scripts/numpy_suite.py                      # the default five files
    python scripts/numpy_suite.py --files test_indexing.py test_shape_base.py -m "not slow"
    python scripts/numpy_suite.py -o numpy_suite.json

The test files are numpy's installed ones (``numpy/_core/tests`` next to the
``numpy`` this Python imports).  Each run is ``python -m pytest`` in a
subprocess, in a temporary directory with an empty ini file (so no project's
pytest settings apply) and numpy's own ``conftest.py`` in effect, with the
options ``np.test()`` uses.  The pgo run adds ``-p pgo_numpy_plugin``
(``scripts/pgo_numpy_plugin.py``): slab for 1..1024 bytes, arena for
1 KiB..1 MiB, cache above, all installed with ``pgo.install``.

Exit status 0 only if: both runs finished (no crash, no timeout), the
passed/failed/skipped/xfailed/xpassed/errors/deselected counts of pytest's
summary are identical, pytest's exit status is the same, and in the pgo run
every route served allocations, the router counted no errors and the
handler was still pgo's at the end.  1 otherwise; 2 for a usage error.
Tests whose outcome differs (from the runs' junit XML) are listed.
"""

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLUGIN = "pgo_numpy_plugin"
STATS_PREFIX = "PGO_NUMPY_STATS "

DEFAULT_FILES = (
    "test_multiarray.py",
    "test_numeric.py",
    "test_umath.py",
    "test_shape_base.py",
    "test_indexing.py",
)

# pytest's summary words, normalized; COMPARED must be identical in both runs.
COMPARED = ("passed", "failed", "skipped", "xfailed", "xpassed", "errors", "deselected")
_WORDS = {"error": "errors", "warning": "warnings"}

# What np.test() passes to pytest besides the tests (numpy/_pytesttester.py).
NP_TEST_ARGS = (
    "-l",
    "-W", "ignore:Not importing directory",
    "-W", "ignore:numpy.dtype size changed",
    "-W", "ignore:numpy.ufunc size changed",
    "-W", "ignore::UserWarning:cpuinfo",
    "-W", "ignore:the matrix subclass is not",
    "-W", "ignore:Importing from numpy.matlib is",
)


# -- locating the tests ----------------------------------------------------

def numpy_tests_dir():
    """numpy/_core/tests of the numpy this interpreter imports."""
    import numpy
    return Path(numpy.__file__).resolve().parent / "_core" / "tests"


def resolve_files(names, tests_dir=None):
    """Paths of the named test files (``test_x``, ``test_x.py`` or a path).

    Raises FileNotFoundError naming the file and where it was looked for.
    """
    tests_dir = Path(tests_dir) if tests_dir is not None else numpy_tests_dir()
    out = []
    for name in names:
        p = Path(name)
        if not p.suffix:
            p = p.with_suffix(".py")
        if not p.is_absolute() and len(p.parts) == 1:
            p = tests_dir / p
        if not p.is_file():
            raise FileNotFoundError(f"numpy test file {name!r} not found (looked for {p})")
        out.append(p.resolve())
    return out


def _pgo_path():
    """The directory to put on PYTHONPATH so the subprocess imports the
    same pgo as this process: an installed one, else the checkout this
    script is in (an in-place build)."""
    try:
        import pgo
    except ImportError:
        sys.path.insert(0, str(HERE.parent))
        try:
            import pgo
        except ImportError:
            sys.path.remove(str(HERE.parent))
            raise
    return str(Path(pgo.__file__).resolve().parent.parent)


def _has_module(name):
    import importlib.util
    return importlib.util.find_spec(name) is not None


# -- reading pytest's results ------------------------------------------------

_SUMMARY = re.compile(r"^=*\s*(?P<body>.*?)\s+in\s+[\d.]+s(?:\s+\([^)]*\))?\s*=*\s*$")


def parse_summary(text):
    """The counts of pytest's final summary line (``3 failed, 10 passed, 1
    warning in 2.00s``), as {word: count} with plural words; None when the
    output has no summary line (a crash, a timeout)."""
    for line in reversed(text.splitlines()):
        m = _SUMMARY.match(line.strip())
        if not m:
            continue
        body = m.group("body")
        if body == "no tests ran":
            return {}
        parts = re.findall(r"(\d+) ([a-z]+)", body)
        if not parts or not body.replace(",", "").strip()[0].isdigit():
            continue
        counts = {}
        for n, word in parts:
            word = _WORDS.get(word, word)
            counts[word] = counts.get(word, 0) + int(n)
        return counts
    return None


def _module_of(classname):
    for part in classname.split("."):
        if part.startswith("test_"):
            return part + ".py"
    return classname


def parse_junit(path):
    """Per-test outcomes from a junit XML file: ({test id: outcome},
    {file: {"time": seconds, outcome: count}}).  Outcomes: passed (an
    xpass too: junit does not tell them apart), failed, error, skipped,
    xfailed; a test with a failure and a teardown error is "failed+error".
    """
    outcomes = {}
    per_file = {}
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        cls = case.get("classname", "")
        test_id = f"{cls}::{case.get('name', '')}"
        tags = {child.tag: child for child in case}
        kinds = []
        if "failure" in tags:
            kinds.append("failed")
        if "error" in tags:
            kinds.append("error")
        if not kinds and "skipped" in tags:
            kinds.append("xfailed" if tags["skipped"].get("type") == "pytest.xfail" else "skipped")
        outcome = "+".join(kinds) or "passed"
        key = test_id
        n = 2
        while key in outcomes:           # the same id twice: keep both
            key = f"{test_id}#{n}"
            n += 1
        outcomes[key] = outcome
        f = per_file.setdefault(_module_of(cls), {"time": 0.0})
        f["time"] += float(case.get("time") or 0.0)
        f[outcome] = f.get(outcome, 0) + 1
    for f in per_file.values():
        f["time"] = round(f["time"], 2)
    return outcomes, per_file


def parse_stats(text):
    """The plugin's JSON stats line from a run's output, or None."""
    for line in reversed(text.splitlines()):
        if line.startswith(STATS_PREFIX):
            try:
                return json.loads(line[len(STATS_PREFIX):])
            except ValueError:
                return None
    return None


# -- running ------------------------------------------------------------------------

def pytest_command(files, *, junit, ini, rootdir, keyword=None, markers=None, pgo=False):
    cmd = [sys.executable, "-m", "pytest", "-c", str(ini), "--rootdir", str(rootdir),
           "-q", "-rN", "-p", "no:cacheprovider", *NP_TEST_ARGS,
           f"--junitxml={junit}", "-o", "junit_family=xunit2"]
    if _has_module("pytest_randomly"):
        cmd += ["-p", "no:randomly"]
    if pgo:
        cmd += ["-p", PLUGIN]
    if keyword:
        cmd += ["-k", keyword]
    if markers:
        cmd += ["-m", markers]
    cmd += [str(f) for f in files]
    return cmd


def run_pytest(name, files, *, work, keyword=None, markers=None, timeout=None, pgo=False):
    """One pytest run in a subprocess; returns a dict describing it."""
    import numpy
    rootdir = Path(numpy.__file__).resolve().parent.parent
    ini = work / "pytest.ini"
    if not ini.exists():
        ini.write_text("[pytest]\n")
    junit = work / f"{name}.xml"
    log = work / f"{name}.log"
    stats_file = work / f"{name}.stats.json"
    for p in (junit, stats_file):
        if p.exists():
            p.unlink()
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_PLUGINS", None)
    env["PYTHONHASHSEED"] = "0"
    env["PYTHONFAULTHANDLER"] = "1"
    if pgo:
        path = [str(HERE), _pgo_path()]
        if env.get("PYTHONPATH"):
            path.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(path)
        env["PGO_NUMPY_STATS"] = str(stats_file)
    cmd = pytest_command(files, junit=junit, ini=ini, rootdir=rootdir, keyword=keyword,
                         markers=markers, pgo=pgo)
    t0 = time.perf_counter()
    timed_out = False
    with open(log, "w", encoding="utf-8", errors="replace") as out:
        out.write("$ " + shlex.join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        except BaseException:            # Ctrl-C: no orphaned pytest left running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    wall = time.perf_counter() - t0
    text = log.read_text(encoding="utf-8", errors="replace")
    result = {
        "name": name,
        "command": cmd,
        "returncode": rc,
        "timed_out": timed_out,
        "wall_s": round(wall, 2),
        "log": str(log),
        "counts": parse_summary(text),
        "outcomes": {},
        "per_file": {},
    }
    if junit.exists():
        try:
            result["outcomes"], result["per_file"] = parse_junit(junit)
        except ET.ParseError as exc:
            result["junit_error"] = str(exc)
    if pgo:
        stats = None
        if stats_file.exists():
            try:
                stats = json.loads(stats_file.read_text())
            except ValueError:
                stats = None
        result["pgo_stats"] = stats if stats is not None else parse_stats(text)
    if result["counts"] is None or rc < 0 or timed_out:
        result["tail"] = text[-4000:]
    return result


# -- comparing ------------------------------------------------------------------

def compare(plain, pgo):
    """Checks on the two runs: a list of problems (empty: identical) and the
    tests whose outcome differs."""
    problems = []
    for run in (plain, pgo):
        if run["timed_out"]:
            problems.append(f"{run['name']} run timed out after {run['wall_s']} s")
        elif run["returncode"] < 0:
            problems.append(f"{run['name']} run killed by signal {-run['returncode']} "
                            f"(crash; see {run['log']})")
        if run["counts"] is None:
            problems.append(f"{run['name']} run printed no pytest summary line (see {run['log']})")
    if plain["counts"] is not None and pgo["counts"] is not None:
        for key in COMPARED:
            a, b = plain["counts"].get(key, 0), pgo["counts"].get(key, 0)
            if a != b:
                problems.append(f"{key}: {a} plain, {b} with pgo")
        if sum(plain["counts"].get(k, 0) for k in COMPARED) == 0:
            problems.append("no tests ran")
    if plain["returncode"] != pgo["returncode"] and not problems:
        problems.append(f"pytest exit status: {plain['returncode']} plain, "
                        f"{pgo['returncode']} with pgo")

    stats = pgo.get("pgo_stats")
    if stats is None:
        problems.append("the pgo run reported no router stats (was the plugin loaded?)")
    else:
        router = stats["router"]
        for route in router["routes"]:
            if route["allocations"] <= 0:
                problems.append(f"route {route['allocator']} {route['min_bytes']}.."
                                f"{route['max_bytes'] or ''} served no allocation")
        if router["errors"]:
            problems.append(f"router errors: {router['errors']} (frees an allocator refused)")
        if not stats.get("installed_at_end") or stats.get("handler_at_end") != router["name"]:
            problems.append(f"numpy's handler at the end was {stats.get('handler_at_end')!r}, "
                            f"not the installed router {router['name']!r}")

    differing = []
    a, b = plain.get("outcomes") or {}, pgo.get("outcomes") or {}
    if a and b:
        for test_id in sorted(set(a) | set(b)):
            if a.get(test_id) != b.get(test_id):
                differing.append({"test": test_id, "plain": a.get(test_id), "pgo": b.get(test_id)})
        if differing and not problems:
            problems.append(f"{len(differing)} tests changed outcome")
    return problems, differing


def run_suite(files=DEFAULT_FILES, *, keyword=None, markers=None, timeout=None, log_dir=None,
              echo=None):
    """Both runs and their comparison, as a JSON-able dict (``ok`` says
    whether everything matched)."""
    paths = resolve_files(files)
    work = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="pgo-numpy-suite-"))
    work.mkdir(parents=True, exist_ok=True)
    import numpy
    runs = {}
    for name, pgo in (("plain", False), ("pgo", True)):
        if echo:
            echo(f"running {name} ({len(paths)} files) ... ")
        runs[name] = run_pytest(name, paths, work=work, keyword=keyword, markers=markers,
                                timeout=timeout, pgo=pgo)
        if echo:
            echo(f"  {name}: {runs[name]['wall_s']} s, exit {runs[name]['returncode']}\n")
    problems, differing = compare(runs["plain"], runs["pgo"])
    return {
        "ok": not problems,
        "problems": problems,
        "differing_tests": differing,
        "files": [p.name for p in paths],
        "tests_dir": str(paths[0].parent) if paths else None,
        "keyword": keyword,
        "markers": markers,
        "numpy_version": numpy.__version__,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "log_dir": str(work),
        "plain": {k: v for k, v in runs["plain"].items() if k != "outcomes"},
        "pgo": {k: v for k, v in runs["pgo"].items() if k != "outcomes"},
    }


# -- reporting ---------------------------------------------------------------------

def format_report(res):
    plain, pgo = res["plain"], res["pgo"]
    lines = []
    sel = ""
    if res["keyword"]:
        sel += f" -k {res['keyword']!r}"
    if res["markers"]:
        sel += f" -m {res['markers']!r}"
    lines.append(f"numpy {res['numpy_version']} tests ({res['tests_dir']}): "
                 f"{' '.join(res['files'])}{sel}")
    lines.append("")
    lines.append(f"{'':<12}{'plain':>10}{'pgo':>10}")
    pc, gc = plain["counts"] or {}, pgo["counts"] or {}
    for key in COMPARED + ("warnings",):
        a, b = pc.get(key, 0), gc.get(key, 0)
        if key in COMPARED or a or b:
            mark = "" if a == b or key == "warnings" else "   <-- differs"
            lines.append(f"{key:<12}{a:>10}{b:>10}{mark}")
    lines.append(f"{'exit status':<12}{plain['returncode']:>10}{pgo['returncode']:>10}")
    lines.append(f"{'wall (s)':<12}{plain['wall_s']:>10.1f}{pgo['wall_s']:>10.1f}")
    files = sorted(set(plain["per_file"]) | set(pgo["per_file"]))
    if len(files) > 1:
        lines.append("")
        lines.append(f"{'test time (s)':<24}{'plain':>10}{'pgo':>10}")
        for f in files:
            a = plain["per_file"].get(f, {}).get("time", 0.0)
            b = pgo["per_file"].get(f, {}).get("time", 0.0)
            lines.append(f"{f:<24}{a:>10.1f}{b:>10.1f}")
    stats = pgo.get("pgo_stats")
    if stats:
        router = stats["router"]
        lines.append("")
        lines.append(f"pgo router {router['name']!r} (pgo {stats.get('pgo_version')}, "
                     f"{'test' if stats.get('pgo_debug_build') else 'normal'} build): "
                     f"errors {router['errors']}, fallback {router['fallback']}, "
                     f"handler at end {stats.get('handler_at_end')!r}")
        by_type = {a["allocator"]: a for a in stats["allocators"].values()}
        for route in router["routes"]:
            hi = route["max_bytes"] if route["max_bytes"] is not None else ""
            a = by_type.get(route["allocator"], {})
            lines.append(f"  {route['allocator']:<15} {route['min_bytes']:>8}..{hi:<8}"
                         f" allocations {route['allocations']:>9}"
                         f"  peak {a.get('peak', 0):>12} B  live at end {a.get('live_blocks', 0)}")
    if res["differing_tests"]:
        lines.append("")
        lines.append(f"tests whose outcome differs ({len(res['differing_tests'])}):")
        for d in res["differing_tests"][:50]:
            lines.append(f"  {d['test']}: plain {d['plain']}, pgo {d['pgo']}")
    for run in (plain, pgo):
        if run.get("tail"):
            lines.append("")
            lines.append(f"--- end of the {run['name']} run's output ({run['log']}) ---")
            lines.append(run["tail"].rstrip())
    lines.append("")
    if res["ok"]:
        lines.append("OK: identical counts; every route used; no router errors")
    else:
        lines.append("FAIL:")
        lines.extend(f"  - {p}" for p in res["problems"])
    lines.append(f"logs: {res['log_dir']}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Run numpy's own tests plain and with a pgo Router installed; "
                    "compare the outcome counts.")
    ap.add_argument("--files", nargs="+", default=list(DEFAULT_FILES), metavar="FILE",
                    help="test files in numpy/_core/tests (default: %(default)s)")
    ap.add_argument("-k", dest="keyword", default=None, help="pytest -k expression")
    ap.add_argument("-m", dest="markers", default=None,
                    help="pytest -m expression (e.g. 'not slow', as np.test() runs by default)")
    ap.add_argument("-o", "--output", default=None, help="write the results as JSON here")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds each of the two runs may take (default: no limit)")
    ap.add_argument("--log-dir", default=None,
                    help="where the runs' logs and junit XML go (default: a new temp dir)")
    args = ap.parse_args(argv)
    try:
        res = run_suite(args.files, keyword=args.keyword, markers=args.markers,
                        timeout=args.timeout, log_dir=args.log_dir,
                        echo=lambda s: print(s, end="", file=sys.stderr, flush=True))
    except FileNotFoundError as exc:
        print(f"numpy_suite: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"numpy_suite: {exc}", file=sys.stderr)
        return 2
    print(format_report(res))
    if args.output:
        Path(args.output).write_text(json.dumps(res, indent=2, default=str) + "\n")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
