"""Terminal output shared by the commands (rich)."""

from __future__ import annotations


def console(min_width: int = 120):
    """A rich console at least ``min_width`` columns wide (tables of sites
    and reasons are unreadable narrower; a pipe gets the full width too)."""
    from rich.console import Console
    return Console(highlight=False, width=max(min_width, Console().width))
