"""``pgo profile``: run a program under the profiler into a bundle."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pgo._errors import PgoError
from pgo.commands._options import add_quiet
from pgo.commands._program import add_arguments, add_metrics_port, check_metrics_port
from pgo.commands._program import target as program_target
from pgo.profiling import cpu
from pgo.profiling.options import Options


class ProfileCommand:
    """Profile a program into a bundle directory.

        pgo profile [options] -- python job.py args
        pgo profile [options] job.py args
        pgo profile [options] -m package.module args

    The program runs as it would with `python`: its output, exit status,
    argv and `__main__` are its own.  The bundle (default: a new folder
    under profiles/) holds every numpy data allocation and free (with its
    site), sampled Python object allocations and their frees, GC pauses,
    py-spy CPU samples and a manifest; with --tracemalloc also exact
    tracemalloc sites and their live bytes over time.  Read it with
    `pgo show BUNDLE`; turn it into a config with `pgo analyze BUNDLE`.

    pgo's own messages go to stderr (-q: only errors and warnings).  The
    exit status is the program's (128+N if it died of signal N).
    """

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-o", "--output", metavar="DIR",
                            help="bundle directory to create (default: profiles/NAME-TIMESTAMP)")
        g = parser.add_argument_group("collectors")
        g.add_argument("--sample-bytes", type=int, default=32768, metavar="N",
                       help="sample a Python object allocation about once per N bytes "
                            "allocated (default: 32768)")
        g.add_argument("--tracemalloc", action="store_true",
                       help="also record exact allocation sites with tracemalloc (measured "
                            "1.3-5.9x slower on allocation-heavy code)")
        g.add_argument("--frames", type=int, default=1, metavar="N",
                       help="tracemalloc traceback depth (default: 1, the cheapest: each "
                            "frame more costs more on every allocation)")
        g.add_argument("--snapshot-interval", type=float, default=0.25, metavar="SECONDS",
                       help="least time between tracemalloc snapshots; it grows so that "
                            "snapshots take at most ~5%% of the run (default: 0.25)")
        g.add_argument("--max-events", type=int, default=1_000_000, metavar="N",
                       help="bound on recorded numpy events (48 bytes each); beyond half of "
                            "it events are sampled by address (default: 1,000,000)")
        g.add_argument("--no-events", action="store_true", help="skip the numpy event trace")
        g.add_argument("--no-objects", action="store_true",
                       help="skip sampling Python object allocations")
        g.add_argument("--no-gc", action="store_true", help="skip GC pauses")
        g.add_argument("--no-cpu", action="store_true", help="skip py-spy CPU samples")
        g.add_argument("--rate", type=int, default=100, metavar="HZ",
                       help="py-spy samples per second (default: 100)")
        g.add_argument("--native", action="store_true",
                       help="py-spy with native frames (GC, malloc, numpy's C code); it "
                            "stops the program for each sample: ~25%% slower")
        g.add_argument("--py-spy", metavar="PATH", help="the py-spy executable to use")
        g.add_argument("--follow-children", action="store_true",
                       help="also profile Python processes the program starts (spawned or "
                            "forked), each into DIR/children/PID/")
        parser.add_argument("--from-tracemalloc", metavar="DUMP",
                            help="instead of running a program, make a bundle from a "
                                 "tracemalloc Snapshot.dump() file (a pickle: needs "
                                 "--trust-pickle)")
        parser.add_argument("--trust-pickle", action="store_true",
                            help="allow unpickling --from-tracemalloc (runs code from the file: "
                                 "only for files you made yourself)")
        add_metrics_port(parser)
        add_quiet(parser, "only errors and warnings")
        add_arguments(parser, "profile")

    def run(self, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
        from pgo._errors import CommandError
        program = list(args.program)
        if program and program[0] == "--":
            program = program[1:]
        log = (lambda msg: None) if args.quiet else (lambda msg: print(f"pgo profile: {msg}",
                                                                        file=sys.stderr))
        if args.frames < 1 or args.frames > 100:
            parser.error("--frames must be 1..100")
        if args.sample_bytes < 1:
            parser.error("--sample-bytes must be at least 1")
        if args.max_events < 2:
            parser.error("--max-events must be at least 2")
        if args.snapshot_interval <= 0:
            parser.error("--snapshot-interval must be positive")
        if args.rate < 1:
            parser.error("--rate must be at least 1")
        check_metrics_port(args, parser)
        if args.from_tracemalloc:
            if program or args.module:
                parser.error("--from-tracemalloc takes no program")
            from pgo.profiling.tracemalloc_import import bundle_from_dump
            out = Path(args.output) if args.output else Path("profiles") / (
                Path(args.from_tracemalloc).stem + "-tracemalloc")
            try:
                bundle_from_dump(args.from_tracemalloc, out, trust_pickle=args.trust_pickle)
            except PgoError as e:
                raise CommandError(str(e), exit_code=2) from None
            log(f"wrote {out}")
            return 0
        target = program_target(args, parser)
        from pgo.profiling import launcher
        options = Options(tracemalloc=args.tracemalloc, nframes=args.frames,
                          snapshot_interval=args.snapshot_interval, events=not args.no_events,
                          max_events=args.max_events, objects=not args.no_objects,
                          sample_bytes=args.sample_bytes, objects_max_events=args.max_events,
                          gc=not args.no_gc, follow_children=args.follow_children)
        cpu_options = cpu.Options(enabled=not args.no_cpu, rate=args.rate,
                                  native=args.native, py_spy=args.py_spy)
        directory = Path(args.output) if args.output else launcher.default_bundle_dir(target)
        log(f"profiling `{' '.join(target.command()[1:])}` into {directory}")
        try:
            result = launcher.profile(target, directory, options, cpu_options=cpu_options,
                                      metrics_port=args.metrics_port)
        except PgoError as e:
            raise CommandError(str(e), exit_code=2) from None
        for w in result.warnings:
            print(f"pgo profile: warning: {w}", file=sys.stderr)
        if result.signal:
            print(f"pgo profile: the program was killed by {result.signal}; the bundle holds "
                  f"what was written before", file=sys.stderr)
        elif result.exit_code:
            log(f"the program exited with status {result.exit_code}")
        log(f"wrote {os.fspath(result.bundle)}; next: pgo show {result.bundle}")
        return result.exit_code
