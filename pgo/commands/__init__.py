"""The ``pgo`` command line: one module per subcommand.

Each subcommand is a class with a docstring (its help) and two methods,
``prepare_parser(parser)`` and ``run(args, parser) -> int``; its name is the
class name without the ``Command`` suffix, lower-cased.  Only ``main``
prints errors: a subcommand raises ``CommandError`` (or a ``PgoError``) and
``main`` turns it into a message and an exit code.
"""

from __future__ import annotations

import argparse
import sys
from typing import Protocol

from pgo._errors import CommandError, PgoError
from pgo._version import __version__
from pgo.commands.analyze import AnalyzeCommand
from pgo.commands.bench import BenchCommand
from pgo.commands.demo import DemoCommand
from pgo.commands.merge import MergeCommand
from pgo.commands.profile import ProfileCommand
from pgo.commands.report import ReportCommand
from pgo.commands.run import RunCommand
from pgo.commands.show import ShowCommand


class Command(Protocol):
    def prepare_parser(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int: ...


_COMMANDS: list[type[Command]] = [ProfileCommand, ShowCommand, AnalyzeCommand, MergeCommand, RunCommand, BenchCommand,
                                 ReportCommand, DemoCommand]


def _name(cls: type) -> str:
    return cls.__name__.removesuffix("Command").lower()


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgo",
        description=(
            "Profile-guided memory and GC optimization for Python: profile a "
            "program, analyze the profile into an allocator + GC config, run "
            "with it, and benchmark the gain."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pgo {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for cls in _COMMANDS:
        command = cls()
        doc = (cls.__doc__ or "").strip()
        sub = subparsers.add_parser(
            _name(cls),
            help=doc.splitlines()[0] if doc else None,
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.prepare_parser(sub)
        sub.set_defaults(entry=command.run, subparser=sub)
    return parser


def main(args: list[str] | None = None) -> int:
    parser = get_parser()
    parsed = parser.parse_args(args)
    if not getattr(parsed, "entry", None):
        parser.print_help()
        return 2
    try:
        return parsed.entry(parsed, parsed.subparser)
    except CommandError as e:
        print(f"pgo {parsed.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except PgoError as e:
        print(f"pgo {parsed.command}: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader (`| head`) went away: stop quietly, as other CLIs do.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print(f"pgo {parsed.command}: interrupted", file=sys.stderr)
        return 130
