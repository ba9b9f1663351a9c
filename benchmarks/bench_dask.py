"""pgo on a Dask cluster (issue 17): two jobs on a LocalCluster of worker
processes, plain and with the config ``pgo analyze`` makes from the fleet's
own profile (PgoPlugin(profile=...) -> pgo merge -> pgo analyze ->
PgoPlugin(config=...)), interleaved.

    python3 benchmarks/bench_dask.py [-n 5] [--workers 2] [-o benchmarks/results/dask.json]

Jobs:

* ``bag-records``: a dask.bag of many small dicts built, grouped and kept
  by each partition (GC-bound: every worker's collector scans a heap with
  no garbage).  Target: the config >= 1.5x.
* ``array-temporaries``: a dask.array computation whose chunks make large
  numpy temporaries (allocation-bound).

Every run gets a LocalCluster of its own (fresh worker processes, as a
new job would; ``client.restart()`` between runs once left the workers
hanging past its timeout), and its wall time is the job's ``compute()``
alone, not the cluster's start.  Reported: medians, the paired ratio plain /
config per round, the Mann-Whitney p.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as c

PARTITIONS = 8


def bag_records(scale: float):
    import dask.bag as db

    def build(part: int) -> int:
        groups: dict[int, list[dict]] = {}
        for i in range(int(150_000 * scale)):
            rec = {"id": i, "part": part, "tags": [f"t{i % 11}", "x"], "v": [i, i % 7]}
            groups.setdefault(i % 500, []).append(rec)
        return sum(len(g) for g in groups.values())
    return db.from_sequence(range(PARTITIONS), npartitions=PARTITIONS).map(build).sum()


def array_temporaries(scale: float):
    import dask.array as da
    side = int(1024 * scale ** 0.5)
    x = da.random.default_rng(1).random((side * 4, side * 4), chunks=(side, side))
    y = (x * 2.0 + 1.0) / (x + 3.0)
    return (da.sqrt(y * y + x) - y.mean()).sum()


JOBS = {"bag-records": bag_records, "array-temporaries": array_temporaries}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--runs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("-o", "--output", default=str(c.RESULTS / "dask.json"))
    args = ap.parse_args()
    started = time.perf_counter()
    machine = c.machine_info(workers=args.workers)
    results = {}
    with tempfile.TemporaryDirectory(prefix="pgo-dask-") as tmp:
        for name, job in JOBS.items():
            try:
                results[name] = run_job(name, job, Path(tmp), args)
            except (TimeoutError, OSError, subprocess.CalledProcessError) as e:
                # A job that cannot finish is reported, and the next one still runs.
                results[name] = {"error": f"{type(e).__name__}: {e}"}
                print(f"{name:18s} FAILED: {type(e).__name__}: {e}")
    c.finish_machine_info(machine, started)
    c.write_json(args.output, c.document("dask", {"runs": args.runs, "workers": args.workers,
                                                  "scale": args.scale}, machine,
                                         results=results))
    print(f"wrote {args.output}")
    return 0


def on_cluster(workers: int, plugin: Any, job: Any, scale: float) -> float:
    """The job's compute() time on a new LocalCluster, with ``plugin``
    registered first (None: plain)."""
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=40) as cluster, \
            Client(cluster) as client:
        if plugin is not None:
            client.register_plugin(plugin)
        t = time.perf_counter()
        job(scale).compute()
        wall = time.perf_counter() - t
        if plugin is not None:
            client.unregister_worker_plugin("pgo")     # a profile is written now
    return wall


def run_job(name: str, job: Any, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    from pgo.dask import PgoPlugin
    fleet, merged = tmp / f"{name}-fleet", tmp / f"{name}-merged"
    cfg = tmp / f"{name}.toml"
    c.log(f"{name}: profile the fleet, merge, analyze")
    on_cluster(args.workers, PgoPlugin(profile=fleet), job, args.scale / 3)  # a third of the input
    bundles = sorted(str(p) for p in fleet.iterdir() if p.is_dir())
    for cmd in (["merge", *bundles, "-o", str(merged)],
                ["analyze", "-q", str(merged), "-o", str(cfg)]):
        subprocess.run([sys.executable, "-m", "pgo", *cmd], check=True,
                       env=c.child_env())
    times: dict[str, list[float]] = {"plain": [], "config": []}
    for rnd in range(args.runs + 1):             # round 0: warm-up, not kept
        for arm in c.round_order(["plain", "config"], rnd):
            plugin = PgoPlugin(config=cfg) if arm == "config" else None
            wall = on_cluster(args.workers, plugin, job, args.scale)
            if rnd:
                times[arm].append(wall)
        c.log(f"  {name} round {rnd}/{args.runs}")
    speedup, lo, hi, _ = c.paired(times["plain"], times["config"])
    p = c.p_greater(times["plain"], times["config"])
    print(f"{name:18s} plain {c.median(times['plain']):.3f} s, config "
          f"{c.median(times['config']):.3f} s: {speedup:.2f}x [{lo:.2f}-{hi:.2f}], "
          f"p = {p:.3f}")
    return {"plain_s": c.median(times["plain"]), "config_s": c.median(times["config"]),
            "speedup": speedup, "speedup_range": [lo, hi], "p_config_faster": p,
            "config": cfg.read_text(), "runs": times}


if __name__ == "__main__":
    sys.exit(main())
