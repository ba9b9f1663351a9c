"""What the Prometheus exporter costs a program (issue 15): the same
program under the same config with ``--metrics-port`` and without,
interleaved, while a scraper reads ``/metrics`` every ``--scrape`` seconds.

    python3 benchmarks/bench_metrics.py [-n 9] [--scrape 0.5] [-o benchmarks/results/metrics.json]

Programs: ``records.py`` (GC-bound: the exporter's GC callback sees every
collection) and ``pipeline.py`` (numpy through a cache: a scrape reads the
allocator's stats under its lock), each with the config ``pgo analyze``
makes for it.  Per program: the median wall time of each arm (the whole
``pgo run`` process), the paired ratio on / off per round with its range,
and the Mann-Whitney p of the two arms' runs.  "Within noise" means p >=
0.05, or a median ratio within the run-to-run spread of the off arm.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import _common as c

TARGETS = c.ROOT / "pgo" / "targets"
PROGRAMS = {"records": ["records.py", "--records", "1500000"], "pipeline": ["pipeline.py"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scraper(port: int, every: float, stop: threading.Event, counts: list[int]) -> None:
    while not stop.is_set():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                r.read()
            counts[0] += 1
        except OSError:
            pass                          # not listening yet, or already gone
        stop.wait(every)


def one_run(config: Path, argv: list[str], port: int | None, every: float) -> tuple[float, int]:
    cmd = [sys.executable, "-m", "pgo", "run", "-c", str(config)]
    if port is not None:
        cmd += ["--metrics-port", str(port)]
    cmd += [str(TARGETS / argv[0]), *argv[1:]]
    stop, counts = threading.Event(), [0]
    t = threading.Thread(target=scraper, args=(port, every, stop, counts)) if port else None
    start = time.perf_counter()
    if t:
        t.start()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=c.child_env())
    wall = time.perf_counter() - start
    stop.set()
    if t:
        t.join()
    return wall, counts[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--runs", type=int, default=9)
    ap.add_argument("--scrape", type=float, default=0.5, help="seconds between scrapes")
    ap.add_argument("-o", "--output", default=str(c.RESULTS / "metrics.json"))
    args = ap.parse_args()
    started = time.perf_counter()
    machine = c.machine_info()
    results = {}
    with tempfile.TemporaryDirectory(prefix="pgo-metrics-") as tmp:
        for name, argv in PROGRAMS.items():
            bundle, config = Path(tmp) / f"{name}-bundle", Path(tmp) / f"{name}.toml"
            c.log(f"{name}: pgo profile + analyze")
            subprocess.run([sys.executable, "-m", "pgo", "profile", "-q", "--no-cpu", "-o",
                            str(bundle), str(TARGETS / argv[0]), *argv[1:]], check=True,
                           env=c.child_env())
            subprocess.run([sys.executable, "-m", "pgo", "analyze", "-q", str(bundle), "-o",
                            str(config)], check=True, env=c.child_env())
            off: list[float] = []
            on: list[float] = []
            scrapes = 0
            for rnd in range(args.runs + 1):          # round 0: warm-up, not kept
                for arm in c.round_order(["off", "on"], rnd):
                    wall, n = one_run(config, argv, free_port() if arm == "on" else None,
                                      args.scrape)
                    if rnd:
                        (on if arm == "on" else off).append(wall)
                        scrapes += n
                c.log(f"  {name} round {rnd}/{args.runs}")
            ratio, lo, hi, _ = c.paired(on, off)
            p = c.p_greater(on, off)
            spread = c.spread_iqr(off)
            within = p >= 0.05 or abs(ratio - 1) <= spread
            results[name] = {"off_s": c.median(off), "on_s": c.median(on), "ratio": ratio,
                             "ratio_range": [lo, hi], "p_on_slower": p, "off_spread": spread,
                             "scrapes": scrapes, "within_noise": within,
                             "off_runs": off, "on_runs": on}
            print(f"{name:9s} off {c.median(off):.3f} s, on {c.median(on):.3f} s: "
                  f"{ratio:.3f}x [{lo:.3f}-{hi:.3f}], p(on slower) = {p:.3f}, "
                  f"{scrapes} scrapes: {'within noise' if within else 'SLOWER'}")
    c.finish_machine_info(machine, started)
    c.write_json(args.output, c.document("metrics", {"runs": args.runs, "scrape_s": args.scrape},
                                         machine, results=results))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
