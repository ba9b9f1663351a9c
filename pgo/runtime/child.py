"""Entry point of the process ``pgo run`` starts: ``python -m
pgo.runtime.child CONTROL``.  Loads and applies the config before any of
the target's code, runs the target as ``python`` would, writes the stats
file (``--stats``) at exit, after the target's own atexit handlers."""

from __future__ import annotations

import atexit
import json
import os
import sys

from pgo import _target
from pgo._errors import PgoError


def main() -> int:
    control = json.loads(sys.argv[1])
    fd = control.get("status_fd")
    target = _target.child_target(control)
    if target is None:
        return 2
    from pgo import runtime
    try:
        rt = runtime.apply(control["config"])
    except PgoError as e:
        _target.send_status(fd, error=str(e))
        return 2
    if control.get("stats"):
        atexit.register(runtime.write_stats, rt, control["stats"])
    _target.send_status(fd, started=True, pid=os.getpid())
    if fd is not None:
        os.close(fd)
    return _target.run(target, compiler=rt.compiler(), init_globals=rt.init_globals())


if __name__ == "__main__":
    sys.exit(main())
