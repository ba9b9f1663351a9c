"""Options several subcommands share, spelled and parsed the same in each."""

from __future__ import annotations

import argparse


def add_html(parser: argparse.ArgumentParser, help: str) -> None:
    """``--html FILE``: the command's page (pgo/commands/_page.py, _render.py)."""
    parser.add_argument("--html", metavar="FILE", help=help)


def add_quiet(parser: argparse.ArgumentParser, help: str) -> None:
    """``-q/--quiet``; ``help`` says what is still printed."""
    parser.add_argument("-q", "--quiet", action="store_true", help=help)
