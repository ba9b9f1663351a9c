"""The whole loop on each example target, with no hand edits:
``pgo profile`` -> ``pgo analyze`` -> ``pgo bench`` against every peer.

    python3 benchmarks/bench_end_to_end.py [-n 7] [--targets pipeline,records]
        [-o benchmarks/results/end_to_end.json]

Per target: the config analyze wrote (its rules), and per arm (baseline,
config, jemalloc, mimalloc, tcmalloc, gc-freeze, gc-off) the median wall
time, its ratio to the baseline with the bootstrap 95% CI and the
Mann-Whitney p, peak RSS and page faults, straight from ``pgo bench``.

Targets (from the issue; MET / MISSED, never a failure): pipeline >= 2x
faster; records >= 2x faster, within 10% of gc-off, peak RSS within 10% of
the baseline; no target slower than the baseline beyond noise; each at
least as fast as the best peer (not more than 2% slower by the medians,
or not significantly: one-sided Mann-Whitney on the runs, p >= 0.05).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import _common as common  # first: puts this checkout's pgo on sys.path

from pgo.bench.runner import PEERS as BENCH_PEERS

TARGETS = ("pipeline", "small_arrays", "scoped_temps", "records")
PEERS = ",".join(BENCH_PEERS)             # every peer pgo bench has


def pgo(*args: str) -> subprocess.CompletedProcess[str]:
    proc = common.run_python(["-m", "pgo", *args])
    if proc.returncode != 0:
        raise SystemExit(f"pgo {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=7)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("-o", "--output", default="benchmarks/results/end_to_end.json")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="pgo-e2e-") as tmp:
        for name in args.targets.split(","):
            common.log(f"== {name}")
            d = os.path.join(tmp, name)
            target = ["-m", f"pgo.targets.{name}"]
            pgo("profile", "-q", "-o", os.path.join(d, "profile"), *target)
            pgo("analyze", "-q", os.path.join(d, "profile"), "-o", os.path.join(d, "pgo.toml"))
            pgo("bench", "-q", "-c", os.path.join(d, "pgo.toml"), "-n", str(args.runs),
                "--peers", PEERS, "-o", os.path.join(d, "bench.json"), "--", *target)
            with open(os.path.join(d, "bench.json")) as f:
                doc = json.load(f)
            with open(os.path.join(d, "pgo.toml")) as f:
                config = f.read()
            wall_runs: dict[str, list[float]] = {}
            for run in doc["runs"]:
                if not run.get("error"):           # as pgo bench's summary leaves them out
                    wall_runs.setdefault(run["arm"], []).append(run["wall_s"])
            results[name] = {"config": config, "summary": doc["summary"], "arms": doc["arms"],
                             "wall_runs": wall_runs}
            s = doc["summary"]
            for arm in doc["arms"]:
                w = s[arm]["wall_s"]
                print(f"  {arm:10} {w['median']:.3f} s  x{w['ratio']:.3f} "
                      f"[{w['ci'][0]:.3f}-{w['ci'][1]:.3f}] p={w['p']:.3g}  "
                      f"RSS {s[arm]['max_rss_kib']['median'] / 1024:.0f} MiB  "
                      f"faults {s[arm]['minor_faults']['median']:,.0f}", file=sys.stderr)
    verdicts = {}
    for name, r in results.items():
        s = r["summary"]
        cfg = s["config"]["wall_s"]
        peers = [a for a in r["arms"] if a not in ("baseline", "config", "gc-off")]
        best = min(peers, key=lambda a: s[a]["wall_s"]["median"]) if peers else None
        v: dict[str, object] = {"speedup": 1 / cfg["ratio"],
                                "not_slower": not (cfg["significant"] and cfg["ratio"] > 1),
                                "best_peer": best}
        if best is None:
            v["as_fast_as_best_peer"] = True
        else:
            # Slower than the best peer only when it is so beyond noise:
            # its median is more than 2% higher and the runs say so
            # (one-sided Mann-Whitney, p < 0.05), as pgo bench says
            # "not significant" against the baseline.
            vs = cfg["median"] / s[best]["wall_s"]["median"]
            p = common.p_greater(r["wall_runs"]["config"], r["wall_runs"][best])
            v["vs_best_peer"] = round(vs, 4)
            v["vs_best_peer_p"] = round(p, 4)
            # With 3 runs a side the smallest p is 0.05: no verdict below 4.
            few = min(len(r["wall_runs"]["config"]), len(r["wall_runs"][best])) < 4
            v["as_fast_as_best_peer"] = (True if vs <= 1.02 else "inconclusive (under 4 runs)"
                                         if few else p >= 0.05)
        if name in ("pipeline", "records"):
            v["2x"] = 1 / cfg["ratio"] >= 2.0
        if name == "records":
            off = s["gc-off"]["wall_s"]["median"]
            v["within_10pct_of_gc_off"] = cfg["median"] <= 1.10 * off
            v["rss_within_10pct"] = (s["config"]["max_rss_kib"]["median"]
                                     <= 1.10 * s["baseline"]["max_rss_kib"]["median"])
        verdicts[name] = v
        print(f"{name}: " + ", ".join(f"{k}={'MET' if x is True else 'MISSED' if x is False else x}"
                                      if not isinstance(x, float) or k.startswith("vs_")
                                      else f"{k}={x:.2f}x"
                                      for k, x in v.items()))
    common.write_json(args.output, {"results": results, "verdicts": verdicts, "runs": args.runs})
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
