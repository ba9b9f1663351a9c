"""What the benchmark scripts share: where things are, statistics on repeated
samples, the order arms run in, child processes, the peer allocators'
libraries, facts about the machine, and the JSON file.

Built on pgo's own bench where it has the piece: the peer libraries are
found by ``pgo.bench.runner.find_library`` (the names and folders ``pgo
bench`` uses), and a round runs its arms in the order ``pgo.bench.runner``
does.  The statistics here are the ones the scripts report that
``pgo.bench.stats.compare`` (two-sided, bootstrap CI of the ratio) does not
give: paired per-round ratios, the interquartile spread, a one-sided
Mann-Whitney test.

Importing this module puts the repository root first on ``sys.path``, so a
script run as ``python3 benchmarks/x.py`` measures this checkout's pgo.
Nothing here imports numpy or pgo's extension at import time.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence, TypeVar

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
if sys.path[:1] != [str(ROOT)]:
    sys.path.insert(0, str(ROOT))

from pgo.bench import runner  # noqa: E402  (after the root is on the path)

KIB = 1 << 10
MIB = 1 << 20
PRELOAD_LIBS = runner.LIBS              # peer -> the library names, preferred first
PRELOAD_PEERS = tuple(PRELOAD_LIBS)     # jemalloc, mimalloc, tcmalloc
PEER_PACKAGES = "libjemalloc2 libmimalloc2.0 libtcmalloc-minimal4"   # Debian

T = TypeVar("T")


def log(msg: str) -> None:
    """Progress, to stderr (stdout is the report)."""
    print(msg, file=sys.stderr, flush=True)


# -- statistics ---------------------------------------------------------------

def median(xs: Iterable[float | None]) -> float | None:
    """The median of the values that are not None; None when there are none."""
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def paired_ratios(num: Sequence[float], den: Sequence[float]) -> list[float]:
    """``num[i] / den[i]`` per round: both sides measured back to back, so
    drift between rounds cancels out of each ratio."""
    return [a / b for a, b in zip(num, den)]


def paired(num: Sequence[float], den: Sequence[float]) -> tuple[float, float, float, list[float]]:
    """The paired ratios' (median, min, max, list)."""
    ratios = paired_ratios(num, den)
    return statistics.median(ratios), min(ratios), max(ratios), ratios


def spread_iqr(xs: Sequence[float]) -> float:
    """Interquartile range over the median (0.05 = 5 %); with under 4 samples
    the full range over the median (0 when there is nothing to divide)."""
    if len(xs) < 4:
        m = median(xs)
        return (max(xs) - min(xs)) / m if xs and m else 0.0
    q = statistics.quantiles(xs, n=4)
    return (q[2] - q[0]) / statistics.median(xs)


def p_greater(a: Sequence[float], b: Sequence[float]) -> float:
    """One-sided Mann-Whitney U p-value for "``a`` tends to be larger than
    ``b``" (``pgo.bench.stats.compare`` gives the two-sided one)."""
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(a, b, alternative="greater").pvalue)


# -- run order ----------------------------------------------------------------

def round_order(arms: Sequence[T], rnd: int) -> list[T]:
    """The arms of round ``rnd``: A B C, then C B A, and so on (as ``pgo
    bench`` runs them), so that drift on a noisy machine hits all alike."""
    return list(arms) if rnd % 2 == 0 else list(reversed(arms))


# -- child processes ------------------------------------------------------------

def child_env(clear: Iterable[str] = (), **extra: str) -> dict[str, str]:
    """This environment without ``clear``, plus ``extra``, and the repository
    root first on ``PYTHONPATH`` (children import this checkout's pgo)."""
    drop = set(clear)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run_python(args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``python3 ARGS`` with this interpreter, output captured as text;
    ``kwargs`` go to ``subprocess.run`` (env, cwd, timeout, check)."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, **kwargs)


def json_line(stdout: str, tag: str = "") -> dict[str, Any] | None:
    """The last line of ``stdout`` that starts with ``tag`` and holds JSON
    after it (a child's report), or None."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(tag):
            try:
                return json.loads(line[len(tag):])
            except ValueError:
                continue
    return None


def run_child_json(args: Sequence[str], **kwargs: Any) -> dict[str, Any]:
    """Run ``python3 ARGS`` (a failure raises) and return its JSON report,
    the last JSON line of its output."""
    proc = run_python(args, check=True, **kwargs)
    doc = json_line(proc.stdout)
    if doc is None:
        raise RuntimeError(f"no JSON line in the output of {' '.join(args[:2])}: "
                           f"{proc.stdout[-500:]!r}")
    return doc


# -- peer allocators -------------------------------------------------------------

def preload_library(peer: str) -> str | None:
    """The shared library to LD_PRELOAD for ``peer`` (one of
    ``PRELOAD_PEERS``), where ``pgo bench`` looks for it; None if absent."""
    return runner.find_library(peer)


def preload_missing(peer: str) -> str:
    """Why ``peer`` cannot run here, and how to fix it."""
    return (f"{' / '.join(PRELOAD_LIBS[peer])} not found in {', '.join(runner.LIB_DIRS)} "
            f"(apt-get install {PEER_PACKAGES})")


# -- the machine -------------------------------------------------------------------

def cmd_out(cmd: Sequence[str]) -> str:
    """A command's stripped stdout; "" when it cannot run (informational only)."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001  -- informational only
        return ""


def read_text(path: str | Path) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in read_text("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""


def git_commit() -> str:
    return cmd_out(["git", "-C", str(ROOT), "rev-parse", "HEAD"])


def pgo_tree_dirty() -> bool:
    """Whether ``pgo/`` has uncommitted changes (the numbers are then of
    a tree no commit holds)."""
    return bool(cmd_out(["git", "-C", str(ROOT), "status", "--porcelain", "--", "pgo"]))


def utc_now(timespec: str = "auto") -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec=timespec)


def machine_info(**extra: Any) -> dict[str, Any]:
    """What the numbers depend on: date, host, CPU, Python, numpy, libc, the
    git commit and whether pgo/ is dirty, the load at the start; ``extra``
    adds a script's own facts."""
    import numpy

    return {
        "date": utc_now("seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "libc": " ".join(platform.libc_ver()),
        **extra,
        "git_commit": git_commit(),
        "pgo_tree_dirty": pgo_tree_dirty(),
        "loadavg_start": list(os.getloadavg()),
    }


def finish_machine_info(info: dict[str, Any], started: float) -> None:
    """The load at the end and the elapsed seconds (``started``: a
    ``time.perf_counter()`` taken at the start)."""
    info["loadavg_end"] = list(os.getloadavg())
    info["elapsed_s"] = round(time.perf_counter() - started, 1)


# -- the JSON file ------------------------------------------------------------------

def command_line() -> str:
    return " ".join([Path(sys.executable).name, *sys.argv])


def document(benchmark: str, settings: dict[str, Any], machine: dict[str, Any],
             **rest: Any) -> dict[str, Any]:
    """The top of a results file: what ran, how, on what; then ``rest``."""
    return {"benchmark": benchmark, "format_version": 1, "command": command_line(),
            "settings": settings, "machine": machine, **rest}


def write_json(path: str | Path, doc: Any, *, indent: int = 1, default: Any = None) -> Path:
    """Write ``doc`` to ``path`` (its folder made if needed); return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=indent, default=default) + "\n")
    return out


def save_json(path: str | Path, doc: Any, **kwargs: Any) -> Path:
    """``write_json``, then "wrote PATH" on stderr."""
    out = write_json(path, doc, **kwargs)
    log(f"wrote {out}")
    return out


def size_label(n: int | None) -> str:
    """16 B, 4 KiB, 64 MiB: the largest unit that divides ``n``."""
    if n is None:
        return ""
    for unit, div in (("MiB", MIB), ("KiB", KIB)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"
