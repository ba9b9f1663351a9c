"""Entry point of the profiled process: ``python -m pgo.profiling.child
CONTROL`` (CONTROL: JSON from the launcher).  Starts the profiler, runs the
target as ``python`` would, and writes the bundle at exit, after the
target's own atexit handlers and non-daemon threads."""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys

from pgo import _target
from pgo.profiling.options import Options
from pgo.profiling.session import Profiler, register_exit


def main() -> int:
    control, fd, target = _target.child_target(sys.argv[1])
    if target is None:
        return 2
    profiler = Profiler(control["bundle"], Options.from_json(control["options"]),
                        command=target.command(),
                        target={**target.to_json(), **target.identity()})
    exit_code: list[int | None] = [None]
    try:
        profiler.start()
    except Exception as e:
        _target.send_status(fd, error=f"cannot start the profiler: {type(e).__name__}: {e}")
        return 2
    atexit.register(lambda: profiler.stop(exit_code=exit_code[0]))
    _finish_on_sigterm(profiler)
    _target.answer_metrics(control)
    profiler.freeze_own_heap()
    _target.started(fd)
    code = _target.run(target)
    exit_code[0] = code
    return code


def _finish_on_sigterm(profiler: Profiler) -> None:
    """SIGTERM kills a program without its atexit handlers; the bundle is
    written first, then the process dies of the signal as it would have
    (exit status 143).  Only where SIGTERM has its default action: a
    program that handles it (or runs with it ignored) keeps its own way,
    and atexit writes the bundle when it exits.  A Python-level handler
    runs between bytecodes: a program inside one long C call (a numpy
    operation) dies when that call returns, not at once, and a program
    that saves the handler it found and calls it from its own gets pgo's
    (which writes the bundle and ends the process, as SIGTERM would)."""
    if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return

    def terminated(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            profiler.stop()
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, terminated)


def start_child(spec: str) -> None:
    """--follow-children, in a Python child process started by the target
    (called from the sitecustomize hook): profile it into ROOT/PID/."""
    control = json.loads(spec)
    directory = os.path.join(control["root"], str(os.getpid()))
    profiler = Profiler(directory, Options.from_json(control["options"]),
                        command=list(getattr(sys, "orig_argv", sys.argv)),
                        target={"kind": "child", "parent_pid": os.getppid()})
    profiler.start()
    register_exit(profiler)


if __name__ == "__main__":
    sys.exit(main())
