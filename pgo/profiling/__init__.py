"""``pgo profile``: collectors that run inside the profiled process
(``session``), the child-process entry point (``child``), the launcher that
runs the target and py-spy beside it (``launcher``).  Profiling records and
writes bundles (``pgo.bundle``); it never decides anything.

``Profiler``, ``Options`` and ``active`` are imported on first use (the
session imports numpy; the launcher's process does not need it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgo.profiling.session import Options, Profiler, active

__all__ = ["Options", "Profiler", "active"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from pgo.profiling import session
        return getattr(session, name)
    raise AttributeError(f"module 'pgo.profiling' has no attribute {name!r}")
