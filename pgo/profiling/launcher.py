"""The parent side of ``pgo profile``: makes the bundle directory, starts the
target in a child process under the in-process profiler, samples it with
py-spy from outside, waits, and completes the manifest (exit status, CPU
collector, children).

The child inherits stdin, stdout and stderr, so the program's output is its
own; this module prints nothing (the command reports what it returns).
The child's exit status is returned (128 + N when it died of signal N).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pgo._errors import PgoError, ProfilerError
from pgo._target import Target, exit_status, launched
from pgo.profiling import cpu
from pgo.profiling.options import FOLLOW_ENV, SKIP_ENV, Options

HOOK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_hook")


@dataclass
class Result:
    bundle: Path
    exit_code: int
    signal: str | None
    warnings: list[str]


def default_bundle_dir(target: Target, root: str | os.PathLike = "profiles") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{target.label()}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def profile(target: Target, directory: Path, options: Options, *,
            cpu_options: cpu.Options, metrics_port: int | None = None) -> Result:
    """Run ``target`` under the profiler, writing the bundle ``directory``
    (created; it must not exist or be empty)."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ProfilerError(f"{directory}: already exists and is not empty; "
                            f"choose another -o or remove it")
    # The outermost folder this run creates: removed again if the program
    # cannot start, so that a failed start leaves nothing behind.
    created = None
    for p in [directory, *directory.parents]:
        if p.exists():
            break
        created = p
    directory.mkdir(parents=True, exist_ok=True)
    control = {"bundle": os.fspath(directory.resolve()), "options": options.to_json(),
               "target": target.to_json()}
    env = dict(os.environ)
    if options.follow_children:
        from pgo import bundle as fmt
        children = directory.resolve() / fmt.CHILDREN
        env[FOLLOW_ENV] = json.dumps({"root": os.fspath(children), "options": options.to_json()})
        env[SKIP_ENV] = "1"
        env["PYTHONPATH"] = os.pathsep.join([HOOK_DIR] + [p for p in [env.get("PYTHONPATH")] if p])
    ran = False
    try:
        with launched(target, "pgo.profiling.child", control, env=env,
                      metrics_port=metrics_port, error=ProfilerError) as (child, status):
            ran = bool(status.get("started"))
            sampler = None
            if status.get("started") and cpu_options.enabled:
                sampler = cpu.Sampler(child.pid, directory, cpu_options)
                sampler.start()
            returncode = child.wait()
    except PgoError:
        if not ran:
            _discard(directory, created)     # a failed start leaves nothing behind
        raise
    if not status.get("started"):
        _discard(directory, created)
        if "error" in status:
            raise ProfilerError(status["error"])
        raise ProfilerError(f"the profiler did not start in {target.python[0]} (exit status "
                            f"{returncode}); is pgo installed for that interpreter?")
    warnings: list[str] = []
    cpu_info = sampler.finish() if sampler is not None else {"status": "off"}
    if cpu_info.get("warning"):
        warnings.append(cpu_info["warning"])
    code, sig = exit_status(returncode)
    _complete_manifest(directory, returncode, sig, cpu_info, warnings)
    return Result(directory, code, sig, warnings)


def _discard(directory: Path, created: Path | None) -> None:
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
    else:
        for p in directory.iterdir():
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _complete_manifest(directory: Path, returncode: int, sig: str | None, cpu_info: dict,
                       warnings: list[str]) -> None:
    from pgo import bundle as fmt
    path = directory / fmt.MANIFEST
    manifest = fmt.read_json(path, fmt.JSON_FORMATS[fmt.MANIFEST])
    if sig is not None:
        # Whole only if the child wrote the bundle before it died (its
        # SIGTERM handler does; SIGKILL leaves what was streamed).
        manifest["complete"] = bool(manifest.get("complete"))
        manifest["exit"] = {"code": None, "signal": sig}
        if manifest.get("duration_s") is None:
            manifest["duration_s"] = round(time.time() - manifest.get("start_unix", time.time()), 6)
    elif not manifest.get("complete"):
        # The child left without writing its parts (os._exit, a crash).
        manifest["exit"] = {"code": returncode, "signal": None}
    else:
        manifest["exit"] = {"code": returncode, "signal": None}
    manifest["collectors"]["cpu"] = cpu_info
    manifest["warnings"] = list(manifest.get("warnings", [])) + warnings
    kids = fmt.CHILDREN
    if (directory / kids).is_dir():
        manifest["children"] = sorted(p.name for p in (directory / kids).iterdir() if p.is_dir())
    fmt.write_json(path, manifest)

