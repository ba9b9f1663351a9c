"""AdaptiveAllocator vs each fixed choice of its backends, on a workload
that changes phase.

    python3 benchmarks/bench_adaptive.py [--repeat 5] [--ops 100000] [--quick]
        [-o benchmarks/results/adaptive.json]

The workload (``pgo._core.adaptive._run_phases``, C, ``nogil``, through the
allocator's C API ``adaptive_alloc`` / ``adaptive_free``) runs four phases
of ``--ops`` allocations each, every block freed by the end of its phase:

1. slab:   churn of one 256-byte size (a pool of 256, replaced at random)
2. arena:  scoped temporaries of 4-64 KiB, eight at a time, freed together
3. system: long-lived blocks of 16-512 B, all freed at the end of the phase
4. cache:  varied sizes, 64 B - 16 KiB, made and freed in no order (a pool of 1024)

Each block gets an 8-byte stamp when made, checked when freed, so every arm
touches its memory alike.  Arms: ``adaptive`` (``AdaptiveAllocator()``, the
default window of 4096), ``fixed-slab`` / ``fixed-arena`` / ``fixed-cache``
/ ``fixed-system`` (``AdaptiveAllocator(fixed=...)``: the same code, the
same headers and counters, one backend kept; what it cannot serve goes to
malloc), and ``malloc`` (libc's malloc and free in the same loop).  Every
run makes a fresh allocator, so the adaptive arm learns each phase anew.

Each round runs every arm once, A B C then C B A in turn (after one untimed
warm-up run of each), ``--repeat`` rounds; the table reports medians of ns
per operation (one allocation and its free) by phase and in total, and the
adaptive total over the worst and the best fixed choice (medians, and the
median of the ratios within each round).  Target (reported, never a
failure): adaptive <= 1.05 x the worst fixed choice.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

# numpy's BLAS threads wait busy on a small machine: one, before numpy loads.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import _common as common  # noqa: E402
from _common import median  # noqa: E402

from pgo._core import adaptive  # noqa: E402

TARGET = 1.05
FIXED = tuple(f"fixed-{b}" for b in adaptive.BACKENDS)
ARMS = ("adaptive",) + FIXED + ("malloc",)


def make(arm):
    if arm == "malloc":
        return None
    if arm == "adaptive":
        return adaptive.AdaptiveAllocator()
    return adaptive.AdaptiveAllocator(fixed=arm.removeprefix("fixed-"))


def run_arm(arm, ops, seed):
    """One run: ns per operation by phase, and the allocator's stats."""
    a = make(arm)
    gc.collect()
    got = adaptive._run_phases(a, ops, seed)
    if got["mismatches"]:
        raise RuntimeError(f"{arm}: {got['mismatches']} blocks lost their stamp")
    phases = {name: ns / n for name, n, ns in got["phases"]}
    stats = a.stats() if a is not None else None
    return phases, stats


def bench(ops, repeat, seed):
    samples = {arm: [] for arm in ARMS}           # per round: {phase: ns/op}
    last_stats = {}
    for arm in ARMS:                              # warm-up: page faults, glibc's thresholds
        run_arm(arm, ops, seed)
    for rnd in range(repeat):
        for arm in common.round_order(ARMS, rnd):
            phases, stats = run_arm(arm, ops, seed)
            samples[arm].append(phases)
            last_stats[arm] = stats
        common.log(f"  round {rnd + 1}/{repeat} done")
    return samples, last_stats


def total(phases):
    return sum(phases.values()) / len(phases)


def summarize(samples, last_stats, ops, repeat, seed):
    arms = {}
    for arm, rounds in samples.items():
        arms[arm] = {
            "ns_per_op": median(total(p) for p in rounds),
            "phases_ns_per_op": {ph: median(p[ph] for p in rounds) for ph in adaptive.PHASES},
            "samples_ns_per_op": [total(p) for p in rounds],
            "spread": common.spread_iqr([total(p) for p in rounds]),
        }
        st = last_stats.get(arm)
        if st is not None:
            arms[arm].update(peak_in_use=st["peak"], capacity=st["capacity"],
                             switches=st["switches"],
                             allocations_by_backend=st["allocations_by_backend"])
    worst = max(FIXED, key=lambda a: arms[a]["ns_per_op"])
    best = min(FIXED, key=lambda a: arms[a]["ns_per_op"])
    ad = arms["adaptive"]["ns_per_op"]
    per_round_worst = [total(samples["adaptive"][r]) / max(total(samples[f][r]) for f in FIXED)
                       for r in range(repeat)]
    per_round_best = [total(samples["adaptive"][r]) / min(total(samples[f][r]) for f in FIXED)
                      for r in range(repeat)]
    for arm in ARMS:
        arms[arm]["ratio_to_worst_fixed"] = arms[arm]["ns_per_op"] / arms[worst]["ns_per_op"]
        arms[arm]["ratio_to_best_fixed"] = arms[arm]["ns_per_op"] / arms[best]["ns_per_op"]
    # Per phase: which fixed choice was best, and how the adaptive did there.
    phases = {}
    for ph in adaptive.PHASES:
        fixed_ns = {f: arms[f]["phases_ns_per_op"][ph] for f in FIXED}
        phases[ph] = {"best_fixed": min(fixed_ns, key=fixed_ns.get),
                      "worst_fixed": max(fixed_ns, key=fixed_ns.get),
                      "adaptive_ratio_to_best": arms["adaptive"]["phases_ns_per_op"][ph]
                      / min(fixed_ns.values())}
    decisions = last_stats["adaptive"]["decisions"]
    return {
        "arms": arms,
        "phases": phases,
        "worst_fixed": worst,
        "best_fixed": best,
        "adaptive_ratio_to_worst_fixed": ad / arms[worst]["ns_per_op"],
        "adaptive_ratio_to_worst_fixed_paired": median(per_round_worst),
        "adaptive_ratio_to_best_fixed": ad / arms[best]["ns_per_op"],
        "adaptive_ratio_to_best_fixed_paired": median(per_round_best),
        "target": {"adaptive_over_worst_fixed_at_most": TARGET,
                   "result": "MET" if ad / arms[worst]["ns_per_op"] <= TARGET else "MISSED"},
        "adaptive_decisions": [{k: d[k] for k in ("window", "from", "to", "rule", "reason")}
                               for d in decisions],
    }


def print_table(summary, out=sys.stdout):
    arms = summary["arms"]
    cols = "".join(f"{ph + ' ns':>11}" for ph in adaptive.PHASES)
    hdr = f"{'arm':<14}{cols}{'total ns':>11}{'vs worst':>10}{'vs best':>9}{'spread':>8}"
    print(hdr, file=out)
    print("-" * len(hdr), file=out)
    for arm in ARMS:
        r = arms[arm]
        ph = "".join(f"{r['phases_ns_per_op'][p]:>11.1f}" for p in adaptive.PHASES)
        print(f"{arm:<14}{ph}{r['ns_per_op']:>11.1f}{r['ratio_to_worst_fixed']:>9.3f}x"
              f"{r['ratio_to_best_fixed']:>8.3f}x{r['spread'] * 100:>7.1f}%", file=out)
    print(file=out)
    print("best fixed per phase: "
          + ", ".join(f"{ph}: {v['best_fixed']} (adaptive {v['adaptive_ratio_to_best']:.2f}x)"
                      for ph, v in summary["phases"].items()), file=out)
    print(f"adaptive / worst fixed ({summary['worst_fixed']}): "
          f"{summary['adaptive_ratio_to_worst_fixed']:.3f} "
          f"(paired {summary['adaptive_ratio_to_worst_fixed_paired']:.3f}); "
          f"target <= {TARGET}: {summary['target']['result']}", file=out)
    print(f"adaptive / best fixed ({summary['best_fixed']}): "
          f"{summary['adaptive_ratio_to_best_fixed']:.3f} "
          f"(paired {summary['adaptive_ratio_to_best_fixed_paired']:.3f})", file=out)
    print("adaptive switches (last run): " + "; ".join(
        f"w{d['window']} {d['from']}->{d['to']}" for d in summary["adaptive_decisions"]),
        file=out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", default=str(common.RESULTS / "adaptive.json"),
                    help="JSON results file (default: benchmarks/results/adaptive.json)")
    ap.add_argument("--repeat", type=int, default=5,
                    help="timed rounds; medians are reported (default 5)")
    ap.add_argument("--ops", type=int, default=100_000,
                    help="allocations per phase (default 100000, at least 1024)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="--ops 20000 and at most 3 rounds")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    if args.ops < 1024:
        ap.error("--ops must be >= 1024")
    ops = 20_000 if args.quick else args.ops
    repeat = min(args.repeat, 3) if args.quick else args.repeat
    started = time.perf_counter()
    machine = common.machine_info()
    common.log(f"bench_adaptive: {len(ARMS)} arms, ops={ops} per phase, repeat={repeat}")
    samples, last_stats = bench(ops, repeat, args.seed)
    summary = summarize(samples, last_stats, ops, repeat, args.seed)
    print_table(summary)
    common.finish_machine_info(machine, started)
    doc = common.document("adaptive", {"ops_per_phase": ops, "repeat": repeat, "seed": args.seed,
                                       "window": adaptive.AdaptiveAllocator().window,
                                       "phases": list(adaptive.PHASES), "arms": list(ARMS),
                                       "quick": args.quick},
                          machine, unit="ns per allocation + free", **summary)
    common.save_json(args.output, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
