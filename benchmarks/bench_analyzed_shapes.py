"""Does what `pgo analyze` writes do as well as the hand-made router?  (issue 18)

    python3 benchmarks/bench_analyzed_shapes.py [-n 7] [-o benchmarks/results/analyzed-shapes.json]

Issue 18 measured a hand-made router (every numpy block from 1 MiB to a
CacheAllocator of 1 GiB) on two shapes of large temporaries.  Here each
shape is a program nobody tuned (``step()`` makes ``t = a * 2.0; u = t +
a``, both freed when it returns), profiled with ``pgo profile`` at a third
of its steps, analyzed with ``pgo analyze``, and run at its full size in one
interleaved ``pgo.bench.runner`` run with these arms: the baseline, the
analyzed config, the hand-made config, and jemalloc, mimalloc and tcmalloc
(LD_PRELOAD).  Each arm is a fresh process through ``pgo.bench.probe``,
exactly as ``pgo bench`` runs it.  Reported: medians, the analyzed
config's time over the hand-made one's and over the best peer's (with the
one-sided Mann-Whitney p of "slower"), peak RSS, page faults.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import _common as common
from _common import median

from pgo._target import Target
from pgo.bench import runner

SHAPES = {                                   # name -> (array MiB, steps at full size)
    "48MiBx2": (48, 45),
    "8MiBx2": (8, 270),
}
PROGRAM = """\
import sys
import numpy as np

a = np.linspace(0.0, 1.0, ({mib} << 20) // 8)

def step():
    t = a * 2.0
    u = t + a
    return float(u[-1])

print(sum(step() for _ in range(int(sys.argv[1]))))
"""
HAND_MADE = """\
[pgo]
version = 1

[[numpy.size_class]]
min_bytes = 1048576
allocator = "cache"
max_cached_bytes = 1073741824
"""
PEERS = ["jemalloc", "mimalloc", "tcmalloc"]


def pgo(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pgo", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"pgo {' '.join(args)} failed:\n{proc.stderr[-2000:]}")


def run_shape(name: str, mib: int, steps: int, runs: int, work: Path) -> dict:
    d = work / name
    d.mkdir()
    prog = d / "shape.py"
    prog.write_text(PROGRAM.format(mib=mib))
    (d / "hand.toml").write_text(HAND_MADE)
    common.log(f"{name}: pgo profile at {steps // 3} steps, pgo analyze")
    pgo("profile", "-q", "--no-cpu", "-o", str(d / "profile"), "--", sys.executable, str(prog),
        str(steps // 3))
    pgo("analyze", "-q", str(d / "profile"), "-o", str(d / "pgo.toml"))
    arms, warnings = runner.make_arms(str(d / "pgo.toml"), PEERS)
    arms.insert(2, runner.Arm("hand-made", setup={"config": str(d / "hand.toml")}))
    for w in warnings:
        common.log(f"  {w}")
    target = Target("script", str(prog), [str(steps)], [sys.executable])
    common.log(f"{name}: {len(arms)} arms x {runs} runs at {steps} steps")
    rows = runner.bench(target, arms, runs)
    by_arm: dict[str, list[dict]] = {}
    for r in rows:
        if not r.get("error"):
            by_arm.setdefault(r["arm"], []).append(r)
    wall = {a: [r["wall_s"] for r in rs] for a, rs in by_arm.items()}
    med = {a: median(v) for a, v in wall.items()}
    peers = {a: med[a] for a in PEERS if a in med}
    best = min(peers, key=lambda a: peers[a]) if peers else None
    out = {
        "shape": name, "array_mib": mib, "steps": steps, "profile_steps": steps // 3,
        "config": (d / "pgo.toml").read_text(),
        "arms": {a: {"median_wall_s": med[a], "wall_s": wall[a],
                     "median_peak_rss_mib": median(r["max_rss_kib"] / 1024 for r in by_arm[a]),
                     "median_minor_faults": median(r["minor_faults"] for r in by_arm[a])}
                 for a in by_arm},
        "analyzed_over_hand_made": med["config"] / med["hand-made"],
        "p_analyzed_slower_than_hand_made": common.p_greater(wall["config"], wall["hand-made"]),
    }
    if best:
        out.update(best_peer=best, analyzed_over_best_peer=med["config"] / peers[best],
                   p_analyzed_slower_than_best_peer=common.p_greater(wall["config"], wall[best]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--runs", type=int, default=7, help="runs per arm (default 7)")
    ap.add_argument("-o", "--output", default=str(common.RESULTS / "analyzed-shapes.json"))
    args = ap.parse_args()
    if args.runs < 2:
        ap.error("--runs must be at least 2")
    results = []
    with tempfile.TemporaryDirectory(prefix="pgo-shapes-") as tmp:
        for name, (mib, steps) in SHAPES.items():
            results.append(run_shape(name, mib, steps, args.runs, Path(tmp)))
    print(f"{'shape':<9} {'arm':<10} {'median s':>9} {'peak MiB':>9} {'faults':>8}")
    for res in results:
        for arm, a in res["arms"].items():
            print(f"{res['shape']:<9} {arm:<10} {a['median_wall_s']:9.3f} "
                  f"{a['median_peak_rss_mib']:9.0f} {a['median_minor_faults']:8.0f}")
        print(f"  analyzed / hand-made {res['analyzed_over_hand_made']:.3f} "
              f"(p slower {res['p_analyzed_slower_than_hand_made']:.3f})"
              + (f"; analyzed / {res['best_peer']} {res['analyzed_over_best_peer']:.3f} "
                 f"(p slower {res['p_analyzed_slower_than_best_peer']:.3f})"
                 if "best_peer" in res else ""))
    doc = common.document("pgo analyze's config against the hand-made router (issue 18)",
                          {"runs": args.runs, "shapes": SHAPES},
                          common.machine_info(), results=results)
    print(f"wrote {common.write_json(args.output, doc)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
