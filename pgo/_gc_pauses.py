"""The gc.callbacks entry that times each collection, written once for the
bench's probe and the metrics exporter.

# NOTE: threads.  A GC callback runs in whichever thread collects, at any
# allocation, possibly inside code that holds a lock: ``observe`` must take
# none (the probe and the exporter only add to plain counters).
"""

from __future__ import annotations

import time
from typing import Any


class PauseTimer:
    """Times every collection and hands each pause to ``observe``."""

    def __init__(self) -> None:
        self._t = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t = time.perf_counter_ns()
        elif self._t:
            ns = time.perf_counter_ns() - self._t
            self._t = 0
            self.observe(ns, info)

    def observe(self, ns: int, info: dict[str, Any]) -> None:
        raise NotImplementedError
