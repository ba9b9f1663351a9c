"""The program a command runs (profile, run, bench): the same arguments and
the same parsing everywhere."""

from __future__ import annotations

import argparse
from typing import Any


def add_metrics_port(parser: argparse.ArgumentParser) -> None:
    """``--metrics-port`` of the commands that run a program."""
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus metrics (pgo.metrics) on 127.0.0.1:PORT while the "
                             "program runs (needs prometheus_client)")


def check_metrics_port(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.metrics_port is not None and not 0 < args.metrics_port < 65536:
        parser.error("--metrics-port must be within 1 and 65535")


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("-m", dest="module", nargs=argparse.REMAINDER, metavar="MODULE ARGS",
                        help=f"{verb} `python -m MODULE`; the remaining arguments are its own")
    parser.add_argument("program", nargs=argparse.REMAINDER,
                        help="the program and its arguments (after --)")


def target(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Any:
    """The Target of ``args``; a CommandError (exit status 2) when there is
    none to run."""
    from pgo import _target
    from pgo._errors import CommandError
    program = list(args.program)
    if program and program[0] == "--":
        program = program[1:]
    module = None
    if args.module is not None:
        if not args.module:
            parser.error("-m needs a module name")
        module, program = args.module[0], args.module[1:] + program
    try:
        return _target.parse(program, module=module)
    except _target.TargetError as e:
        raise CommandError(str(e), exit_code=2) from None
