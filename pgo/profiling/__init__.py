"""``pgo profile``: collectors that run inside the profiled process
(``session``), the child-process entry point (``child``), the launcher that
runs the target and py-spy beside it (``launcher``).  Profiling records and
writes bundles (``pgo.bundle``); it never decides anything."""

from pgo.profiling.session import Options, Profiler, active

__all__ = ["Options", "Profiler", "active"]
