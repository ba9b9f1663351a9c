"""Runs the bench arms: each run a fresh process through ``pgo.bench.probe``,
interleaved A B C A B C ... after one warm-up run of each arm.

Per run: wall time (around the process), CPU time, peak RSS and minor page
faults (the child's rusage from ``os.wait4``), GC collections and total
pause (the probe), allocator statistics (the config arm's runtime).

Arms: ``baseline`` (nothing changed), ``config`` (the pgo config), and the
peers asked for: ``jemalloc`` / ``mimalloc`` / ``tcmalloc`` (LD_PRELOAD of
the system's library), ``gc-freeze`` (``gc.freeze()`` then thresholds
50000/20/100: the usual hand-set recipe), ``gc-off`` (``gc.disable()``:
the floor for GC-bound programs).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pgo._errors import PgoError
from pgo._target import Target, pgo_argv

PEERS = ("jemalloc", "mimalloc", "tcmalloc", "gc-freeze", "gc-off")
LIBS = {"jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
        "mimalloc": ("libmimalloc.so.2", "libmimalloc.so"),
        "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so")}
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
            "/usr/local/lib")
GC_RECIPE = (50_000, 20, 100)


@dataclass
class Arm:
    name: str
    env: dict[str, str] = field(default_factory=dict)
    setup: dict[str, Any] = field(default_factory=dict)


def find_library(peer: str) -> str | None:
    for d in LIB_DIRS:
        for name in LIBS[peer]:
            p = os.path.join(d, name)
            if os.path.exists(p):
                return p
    return None


def make_arms(config: str | None, peers: list[str]) -> tuple[list[Arm], list[str]]:
    """The arms, and a warning per peer that cannot run here."""
    arms = [Arm("baseline")]
    if config:
        arms.append(Arm("config", setup={"config": os.path.abspath(config)}))
    warnings = []
    for peer in peers:
        if peer not in PEERS:
            raise PgoError(f"unknown peer {peer!r}; valid: {', '.join(PEERS)}")
        if peer in LIBS:
            lib = find_library(peer)
            if lib is None:
                warnings.append(f"{peer}: library not found ({', '.join(LIBS[peer])}); "
                                f"install it (Debian: libjemalloc2, libmimalloc2.0, "
                                f"libtcmalloc-minimal4) to compare; arm skipped")
                continue
            arms.append(Arm(peer, env={"LD_PRELOAD": lib}))
        elif peer == "gc-freeze":
            arms.append(Arm(peer, setup={"gc_recipe": list(GC_RECIPE)}))
        else:
            arms.append(Arm(peer, setup={"gc_off": True}))
    return arms, warnings


def run_once(arm: Arm, target: Target, workdir: str) -> dict[str, Any]:
    fd, result = tempfile.mkstemp(suffix=".json", dir=workdir)
    os.close(fd)
    spec = dict(arm.setup, target=target.to_json(), result=result)
    env = dict(os.environ, **arm.env)
    argv = pgo_argv(target.python, "pgo.bench.probe", json.dumps(spec))
    t = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    run: dict[str, Any] = {"arm": arm.name, "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime,
                           "max_rss_kib": ru.ru_maxrss, "minor_faults": ru.ru_minflt,
                           "exit_code": proc.returncode}
    try:
        with open(result) as f:
            run.update(json.load(f))
    except (OSError, ValueError):
        run["error"] = (err.strip().splitlines() or ["no result written"])[-1]
    finally:
        try:
            os.unlink(result)
        except OSError:
            pass
    if proc.returncode != 0:
        last = (err.strip().splitlines() or [""])[-1]
        run["error"] = run.get("error") or last or f"exit status {proc.returncode}"
    return run


def bench(target: Target, arms: list[Arm], runs: int, *,
          progress: Callable[[str, int, int], None] | None = None) -> list[dict[str, Any]]:
    """Warm-up (one run per arm, not kept), then ``runs`` rounds of every
    arm, in reversed order every other round."""
    out: list[dict[str, Any]] = []
    total = len(arms) * (runs + 1)
    done = 0
    with tempfile.TemporaryDirectory(prefix="pgo-bench-") as workdir:
        for rnd in range(runs + 1):
            order = arms if rnd % 2 == 0 else list(reversed(arms))
            for arm in order:
                if progress:
                    progress(arm.name, done, total)
                r = run_once(arm, target, workdir)
                done += 1
                if rnd == 0:
                    if r.get("error"):
                        raise PgoError(f"the {arm.name} arm failed on its warm-up run: "
                                       f"{r['error']} (exit status {r['exit_code']})")
                    continue
                r["round"] = rnd
                out.append(r)
    if progress:
        progress("", total, total)
    return out
