"""``pgo demo``: the whole loop on a bundled example, step by step."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

from pgo._target import pgo_argv


class DemoCommand:
    """Run pgo's whole loop on a bundled example, printing each step.

    On pgo.targets.pipeline (48 MB numpy temporaries; --target picks another
    of pgo.targets): `pgo profile` -> `pgo analyze --explain` -> `pgo bench`
    (baseline vs the config vs a peer allocator and the hand-set GC
    recipe), each printed with its command, ending with the before/after
    table and the report's path.  About a minute.

    --allocators instead shows the allocator library at work (the earlier
    demo).
    """

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        from pgo import targets

        parser.add_argument("--target", default="pipeline", choices=targets.NAMES,
                            help="the example program (default: pipeline)")
        parser.add_argument("-n", "--runs", type=int, default=5,
                            help="bench runs per arm (default: 5)")
        parser.add_argument("-o", "--output", metavar="DIR",
                            help="where to keep the bundle, config and report (default: a "
                                 "new folder under the system's temp dir)")
        parser.add_argument("--quick", action="store_true",
                            help="smaller runs, for a smoke test")
        tour = parser.add_argument_group("the allocator tour")
        tour.add_argument("--allocators", action="store_true",
                          help="show the allocators at work instead (a few seconds)")
        tour.add_argument("--repeat", type=int, default=5, metavar="N",
                          help="with --allocators: repetitions per timing")

    def run(self, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
        if args.allocators:
            from pgo.commands._allocator_tour import AllocatorTour
            return AllocatorTour().run(args, parser)
        if args.runs < 2:
            parser.error("--runs must be at least 2")
        out = args.output or tempfile.mkdtemp(prefix="pgo-demo-")
        os.makedirs(out, exist_ok=True)
        bundle = os.path.join(out, "profile")
        config = os.path.join(out, "pgo.toml")
        bench = os.path.join(out, "bench.json")
        target = ["-m", f"pgo.targets.{args.target}"]
        if args.quick:
            target += {"pipeline": ["--frames", "4"], "scoped_temps": ["--tiles", "400"],
                       "records": ["--records", "150000"],
                       "small_arrays": ["--steps", "20"]}[args.target]
        from pgo.bench.runner import find_library
        peers = ["gc-freeze"] + [p for p in ("tcmalloc", "jemalloc") if find_library(p)][:1]
        t0 = time.perf_counter()
        print(f"pgo demo: the whole loop on pgo.targets.{args.target}, in {out}\n")
        steps = [
            ("1. Profile the program as it is", ["profile", "-o", bundle, *target]),
            ("2. Analyze the profile into a config", ["analyze", bundle, "-o", config,
                                                      "--explain", "--top", "6"]),
            ("3. Benchmark: without and with the config, and peers",
             ["bench", "-c", config, "-n", str(args.runs), "--peers", ",".join(peers),
              "-o", bench, "-q", "--", *target]),
        ]
        for title, argv in steps:
            print(f"{title}\n   $ pgo {' '.join(shlex.quote(a) for a in argv)}", flush=True)
            proc = subprocess.run(pgo_argv([sys.executable], "pgo.commands", *argv),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            print("   " + proc.stdout.rstrip().replace("\n", "\n   ") + "\n", flush=True)
            if proc.returncode != 0:
                print(f"pgo demo: step failed (exit status {proc.returncode})", file=sys.stderr)
                return proc.returncode
        with open(bench) as f:
            doc = json.load(f)
        w = doc["summary"]["config"]["wall_s"]
        print(f"Before/after: {w['baseline_median']:.3f} s -> {w['median']:.3f} s "
              f"({1 / w['ratio']:.2f}x faster; 95% CI of the time ratio "
              f"{w['ci'][0]:.3f}-{w['ci'][1]:.3f}, "
              f"{'significant' if w['significant'] else 'not significant'})")
        print(f"Report: {os.path.splitext(bench)[0] + '.html'}  (open it in a browser)")
        print(f"Apply it to the program yourself: pgo run --config {config} -- python "
              f"{' '.join(target)}")
        print(f"pgo demo took {time.perf_counter() - t0:.0f} s")
        return 0
