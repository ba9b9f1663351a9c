"""The process every bench arm runs: ``python -m pgo.bench.probe ARM`` (ARM:
JSON).  It measures the GC (every pause, through ``gc.callbacks``), sets the
arm up (nothing; a pgo config; the hand-set GC recipe), runs the target as
``python`` would, and at exit writes what it measured to the arm's result
file.  Every arm runs through the same probe, so its own cost (a callback
per collection) is the same in all of them; LD_PRELOAD peers get their
allocator from the environment the runner gives them.
"""

from __future__ import annotations

import atexit
import gc
import json
import sys
import time
from typing import Any

from pgo import _target
from pgo._gc_pauses import PauseTimer


class _GCTimer:
    """Every collection's count and total pause."""

    def __init__(self) -> None:
        self.pauses = 0
        self.total_ns = 0
        self.callback = PauseTimer(self._add)

    def _add(self, ns: int, info: dict[str, Any]) -> None:
        self.pauses += 1
        self.total_ns += ns


def main() -> int:
    arm = json.loads(sys.argv[1])
    timer = _GCTimer()
    gc.callbacks.append(timer.callback)
    runtime = None
    target = _target.Target.from_json(arm["target"])
    if arm.get("config"):
        from pgo import runtime as rtmod
        # The program is the target, not this module (__main__ here).
        runtime = rtmod.apply(arm["config"], program=target.identity())
    elif arm.get("gc_recipe"):
        gc.freeze()
        gc.set_threshold(*arm["gc_recipe"])
    elif arm.get("gc_off"):
        gc.disable()
    t0 = time.perf_counter()

    def report() -> None:
        out = {"wall_in_process_s": time.perf_counter() - t0, "gc_pauses": timer.pauses,
               "gc_pause_s": timer.total_ns / 1e9,
               "gc_collections": [s["collections"] for s in gc.get_stats()]}
        if runtime is not None:
            out["runtime"] = runtime.stats()
        with open(arm["result"], "w") as f:
            json.dump(out, f, default=str)

    atexit.register(report)
    compiler = runtime.compiler() if runtime is not None else None
    init = runtime.init_globals() if runtime is not None else None
    return _target.run(target, compiler=compiler, init_globals=init)


if __name__ == "__main__":
    sys.exit(main())
