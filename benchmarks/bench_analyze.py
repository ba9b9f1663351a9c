"""`pgo analyze` at scale: a synthetic trace with 100k allocation sites.

    python3 benchmarks/bench_analyze.py [--sites 100000] [--repeat 3] [--all-kinds]
        [-o benchmarks/results/analyze.json]

Each repetition runs in a fresh child process (so peak memory is the
analysis's own): it builds a synthetic bundle in memory
(``pgo.analysis.synthetic``: equal numbers of LIFO-scratch, scoped,
fixed-size-churn, large-repeated and long-lived sites, events interleaved
in time; ``--all-kinds`` adds the cross-thread, phase-changing and
fragmenting kinds, which at this scale -- 4 repetitions a site -- have too
few blocks to show their patterns, and twice the events a site), then
times ``ProfileGuidedOptimizer(bundle).analyze()`` alone.
Reported: wall seconds of the analysis (median of the repetitions), the
peak RSS of the child (``ru_maxrss``, which includes the generated trace),
the number of sites and events, and the share of bytes that got the
strategy their pattern was built for.

Targets (MET / MISSED, never a failure): 100k sites in under 10 s and
under 1 GiB on this machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import _common as common

# The kinds the README's numbers were measured on.
FIRST_KINDS = ("lifo-scratch", "scoped-temporaries", "fixed-size-churn", "large-repeated",
               "long-lived")

CHILD = r"""
import json, resource, sys, time
from pgo.analysis.optimizer import ProfileGuidedOptimizer
from pgo.analysis.synthetic import INTENDED, KINDS, make_bundle
n = int(sys.argv[1])
kinds = KINDS if sys.argv[3] == "all" else sys.argv[3].split(",")
b, labels = make_bundle({k: n // len(kinds) for k in kinds}, seed=int(sys.argv[2]),
                        reps=4, passes=2)
events = len(b.events.events)
t = time.perf_counter()
plan = ProfileGuidedOptimizer(b).analyze()
dt = time.perf_counter() - t
total = right = 0.0
for d in plan.decisions:
    total += d.site.bytes
    right += d.site.bytes * (d.strategy == INTENDED[labels[d.site.site_id]])
print(json.dumps({"seconds": dt, "events": events, "sites": len(plan.decisions),
                  "clusters": len(plan.clusters), "right_bytes": right / total,
                  "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--all-kinds", action="store_true",
                        help="every kind of pgo.analysis.synthetic, not only the first five")
    parser.add_argument("-o", "--output", default="benchmarks/results/analyze.json")
    args = parser.parse_args(argv)
    runs = []
    for i in range(args.repeat):
        common.log(f"repetition {i + 1}/{args.repeat}: {args.sites:,} sites ...")
        kinds = "all" if args.all_kinds else ",".join(FIRST_KINDS)
        runs.append(common.run_child_json(["-c", CHILD, str(args.sites), str(i), kinds]))
    seconds = common.median(r["seconds"] for r in runs)
    rss = max(r["maxrss_mib"] for r in runs)
    result = {
        "benchmark": "analyze", "command": " ".join([sys.executable] + sys.argv),
        "date": common.utc_now(),
        "machine": {"host": platform.node(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "sites": args.sites, "all_kinds": args.all_kinds, "runs": runs,
        "median_seconds": seconds, "max_rss_mib": rss,
        "targets": {"under_10_s": seconds < 10, "under_1_gib": rss < 1024},
    }
    common.write_json(args.output, result)
    r0 = runs[0]
    each = ", ".join(f"{r['seconds']:.2f}" for r in runs)
    print(f"{args.sites:,} sites, {r0['events']:,} events, {r0['clusters']} clusters: "
          f"analyze {seconds:.2f} s (median of {len(runs)}; {each}), peak RSS {rss:.0f} MiB; "
          f"{min(r['right_bytes'] for r in runs):.1%} of bytes to the intended strategy")
    print(f"  under 10 s: {'MET' if seconds < 10 else 'MISSED'}; "
          f"under 1 GiB: {'MET' if rss < 1024 else 'MISSED'}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
