"""The gc.callbacks entry that times each collection, written once for the
bench's probe and the metrics exporter.

# NOTE: threads.  A GC callback runs in whichever thread collects, at any
# allocation, possibly inside code that holds a lock: ``on_pause`` must take
# none (the probe and the exporter only add to plain counters).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class PauseTimer:
    """Times every collection and hands each pause (ns) and the callback's
    info to ``on_pause``."""

    def __init__(self, on_pause: Callable[[int, dict[str, Any]], None]) -> None:
        self._on_pause = on_pause
        self._t = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t = time.perf_counter_ns()
        elif self._t:
            ns = time.perf_counter_ns() - self._t
            self._t = 0
            self._on_pause(ns, info)
