"""Entry point of the process ``pgo run`` starts: ``python -m
pgo.runtime.child CONTROL``.  Loads and applies the config before any of
the target's code, runs the target as ``python`` would, writes the stats
file (``--stats``) at exit, after the target's own atexit handlers."""

from __future__ import annotations

import atexit
import sys

from pgo import _target
from pgo._errors import PgoError


def main() -> int:
    control, fd, target = _target.child_target(sys.argv[1])
    if target is None:
        return 2
    from pgo import runtime
    try:
        rt = runtime.apply(control["config"], program=target.identity(),
                           strict=bool(control.get("strict")))
    except PgoError as e:
        _target.send_status(fd, error=str(e))
        return 2
    if control.get("stats"):
        atexit.register(runtime.write_stats, rt, control["stats"])
    _target.answer_metrics(control)
    _target.started(fd)
    code = _target.run(target, compiler=rt.compiler(), init_globals=rt.init_globals())
    if code == 0:
        # A [[site]] rule that never found its function routed nothing,
        # which --stats alone would hide.  Not after a failure: the
        # program's traceback stays the last thing it printed, as under
        # python (and it may have stopped before reaching the function).
        for where in rt.unmatched_sites():
            print(f"pgo run: warning: {where}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
