"""The parent side of ``pgo run``: starts the target under the runtime in a
child process with the terminal's stdin/stdout/stderr, and returns its exit
status (128 + N for signal N).  ^C and SIGTERM reach the program as under
``python`` (``_target.signals_to``)."""

from __future__ import annotations

import os

from pgo._errors import CommandError, PgoError
from pgo._target import Target, exit_status, launched


def launch(target: Target, config_path: str, *, stats: str | None = None,
           env: dict[str, str] | None = None, strict: bool = False,
           metrics_port: int | None = None) -> tuple[int, str | None]:
    control = {"config": os.path.abspath(config_path), "target": target.to_json(),
               "stats": os.path.abspath(stats) if stats else None, "strict": strict}
    with launched(target, "pgo.runtime.child", control, env=env,
                  metrics_port=metrics_port) as (child, status):
        returncode = child.wait()
    if not status.get("started"):
        if "error" in status:
            # The config was refused in the child (--strict): a config error.
            raise CommandError(str(status["error"]), exit_code=2)
        raise PgoError(f"the runtime did not start in {target.python[0]} (exit status "
                       f"{returncode}); is pgo installed for that interpreter?")
    return exit_status(returncode)
