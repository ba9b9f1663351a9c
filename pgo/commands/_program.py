"""The program a command runs (profile, run, bench): the same arguments and
the same parsing everywhere."""

from __future__ import annotations

import argparse
from typing import Any


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
