"""The parent side of ``pgo run``: starts the target under the runtime in a
child process with the terminal's stdin/stdout/stderr, and returns its exit
status (128 + N for signal N).  ^C and SIGTERM reach the program as under
``python`` (``_target.signals_to``)."""

from __future__ import annotations

import json
import os
import subprocess

from pgo._errors import CommandError, PgoError
from pgo._target import Target, exit_status, pgo_argv, read_status, signals_to


def launch(target: Target, config_path: str, *, stats: str | None = None,
           env: dict[str, str] | None = None, strict: bool = False,
           metrics_port: int | None = None) -> tuple[int, str | None]:
    relay = None
    if metrics_port:
        from pgo.metrics_relay import Relay
        relay = Relay(metrics_port)          # a port in use is an error before the run
    read_fd, write_fd = os.pipe()
    pass_fds = (write_fd, *([relay.child_fd()] if relay else []))
    control = {"config": os.path.abspath(config_path), "target": target.to_json(),
               "status_fd": write_fd, "stats": os.path.abspath(stats) if stats else None,
               "strict": strict, "metrics_fd": relay.child_fd() if relay else None}
    argv = pgo_argv(target.python, "pgo.runtime.child", json.dumps(control))
    try:
        try:
            child = subprocess.Popen(argv, pass_fds=pass_fds, env=env)
        except OSError as e:
            raise PgoError(f"cannot start {target.python[0]}: {e}") from None
        finally:
            os.close(write_fd)
        with signals_to(child):
            status = read_status(read_fd)
            if relay and status.get("started"):
                relay.started(child.pid)
            returncode = child.wait()
    finally:
        os.close(read_fd)
        if relay:
            relay.close()
    if not status.get("started"):
        if "error" in status:
            # The config was refused in the child (--strict): a config error.
            raise CommandError(str(status["error"]), exit_code=2)
        raise PgoError(f"the runtime did not start in {target.python[0]} (exit status "
                       f"{returncode}); is pgo installed for that interpreter?")
    return exit_status(returncode)
