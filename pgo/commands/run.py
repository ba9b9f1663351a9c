"""``pgo run``: a program with a pgo config applied, no code changes."""

from __future__ import annotations

import argparse
import sys

from pgo.commands._options import add_quiet
from pgo.commands._program import add_arguments, add_metrics_port, check_metrics_port
from pgo.commands._program import target as program_target


class RunCommand:
    """Run a program with a pgo config applied.

        pgo run --config pgo.toml -- python job.py args
        pgo run --config pgo.toml job.py args
        pgo run --config pgo.toml -m package.module args

    Before the program's first line: the GC plan ([gc]), numpy's router
    ([[numpy.size_class]]) in every thread it starts, and per-site routing
    ([[site]]: while the named function runs, numpy's allocations go to its
    allocator; the function is decorated when its module is compiled, so
    nothing else pays).  The program's output, argv, __main__ and exit
    status are its own.  A config that does not load stops here, before
    the program runs.  --stats FILE writes what the runtime did (GC
    collections, allocator statistics, routed calls) as JSON at exit.

    The config says which program it was profiled on (its file name and a
    hash of its source) and with which Python and numpy: another is a
    warning on stderr (--strict: an error, before the program runs).  A
    [[site]] rule that routed nothing (its module never imported, no such
    function) is a warning at exit.

    From inside a program: `import pgo.runtime; pgo.runtime.apply("pgo.toml")`.
    """

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-c", "--config", required=True, metavar="FILE",
                            help="the config (from `pgo analyze`)")
        parser.add_argument("--stats", metavar="FILE", help="write runtime statistics here at exit")
        parser.add_argument("--strict", action="store_true",
                            help="refuse (exit 2, the program does not run) a config made for "
                                 "another program, another version of its source, another "
                                 "Python or numpy; without it those are warnings")
        add_metrics_port(parser)
        add_quiet(parser, "only errors")
        add_arguments(parser, "run")

    def run(self, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
        from pgo import config
        from pgo._errors import CommandError
        from pgo.runtime.launcher import launch
        target = program_target(args, parser)
        try:
            config.load(args.config)          # fails here, before the program runs
        except config.ConfigError as e:
            raise CommandError(str(e), exit_code=2) from None
        check_metrics_port(args, parser)
        code, signal_name = launch(target, args.config, stats=args.stats, strict=args.strict,
                                   metrics_port=args.metrics_port)
        if signal_name:
            print(f"pgo run: the program was killed by {signal_name}", file=sys.stderr)
        return code
