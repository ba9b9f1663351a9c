"""Running a user's program the way ``python`` would, from inside a process
pgo controls (the profiler's and the runner's child).

A target is ``script.py args``, ``-m module args`` or ``-c code args``,
optionally after a Python interpreter and its options (``python -X dev
job.py``).  Inside the process it runs with ``__name__ == "__main__"``,
``sys.argv`` as Python would set it, ``sys.path[0]`` the script's folder
(the current directory for ``-m``), its exit status and its traceback
(without pgo's frames) as without pgo.
"""

from __future__ import annotations

import os
import re
import runpy
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import CodeType
from typing import TYPE_CHECKING, Any, Callable

from pgo._errors import PgoError

if TYPE_CHECKING:
    import subprocess

# The children of `pgo run` and of a bench's config arm import this module
# before the program starts: what only the launchers need (shutil,
# subprocess, traceback) is imported where it is used.

# Interpreter options that take a value (python --help).
_OPTS_WITH_VALUE = {"-W", "-X", "--check-hash-based-pycs"}
_PYTHON = re.compile(r"^(python|pypy)[0-9.]*(d|m|dm)?(\.exe)?$")


class TargetError(PgoError):
    """The program to run cannot be found or the command is malformed."""


@dataclass
class Target:
    kind: str                 # "script", "module" or "code"
    name: str                 # path, module name or code
    args: list[str]
    python: list[str]         # interpreter and its options

    def to_json(self) -> dict:
        return {"kind": self.kind, "name": self.name, "args": list(self.args),
                "python": list(self.python)}

    @classmethod
    def from_json(cls, d: dict) -> Target:
        return cls(d["kind"], d["name"], list(d["args"]), list(d["python"]))

    def label(self) -> str:
        if self.kind == "script":
            return os.path.splitext(os.path.basename(self.name))[0] or "script"
        if self.kind == "module":
            return self.name.rsplit(".", 1)[-1] or "module"
        return "code"

    def identity(self) -> dict[str, str]:
        """What a config records of the program it was made for, and
        ``pgo run`` compares: its name (a script's file name, a module's
        name, ``-c``) and the SHA-256 of its source (empty when it cannot
        be read).  A path is not part of it: the same job is often profiled
        in one checkout and run in another."""
        source: bytes | None = None
        if self.kind == "script":
            path = os.path.realpath(self.name)
            program = os.path.basename(path.rstrip(os.sep)) or self.name
            if os.path.isdir(path):
                path = os.path.join(path, "__main__.py")
            try:
                with open(path, "rb") as f:
                    source = f.read()
            except OSError:
                pass
        elif self.kind == "module":
            program = self.name
            origin = _module_file(self.name)
            if origin is not None:
                try:
                    with open(origin, "rb") as f:
                        source = f.read()
                except OSError:
                    pass
        else:
            program, source = "-c", self.name.encode()
        return {"program": program,
                "program_sha256": _sha256(source).hexdigest() if source is not None else ""}

    def command(self) -> list[str]:
        head = {"script": [self.name], "module": ["-m", self.name], "code": ["-c", self.name]}
        return [*self.python, *head[self.kind], *self.args]


def parse(argv: list[str], *, module: str | None = None) -> Target:
    """A Target from a command line: ``[python [opts]] script args``,
    ``[python [opts]] -m mod args``, ``-c code args``.  ``module``: a module
    given separately (``pgo profile -m mod``)."""
    argv = list(argv)
    python = [sys.executable]
    if module is not None:
        return Target("module", module, argv, python)
    if not argv:
        raise TargetError("no program given: pass `script.py args`, `-m module args` or "
                          "`-- python script.py args`")
    if _PYTHON.match(os.path.basename(argv[0])):
        import shutil
        exe = shutil.which(argv[0]) if os.sep not in argv[0] else argv[0]
        if exe is None or not os.access(exe, os.X_OK):
            raise TargetError(f"{argv[0]}: no such Python interpreter")
        python = [exe]
        argv = argv[1:]
        while argv and argv[0].startswith("-") and argv[0] not in ("-m", "-c", "-"):
            opt = argv.pop(0)
            python.append(opt)
            if opt in _OPTS_WITH_VALUE and argv:
                python.append(argv.pop(0))
        if not argv:
            raise TargetError("no program after the interpreter: give a script, -m module "
                              "or -c code")
    if argv[0] == "-m":
        if len(argv) < 2:
            raise TargetError("-m needs a module name")
        return Target("module", argv[1], argv[2:], python)
    if argv[0] == "-c":
        if len(argv) < 2:
            raise TargetError("-c needs code")
        return Target("code", argv[1], argv[2:], python)
    if argv[0].startswith("-"):
        raise TargetError(f"unknown option {argv[0]!r} before the program")
    script = argv[0]
    if not os.path.exists(script):
        raise TargetError(f"{script}: no such file")
    if os.path.isdir(script) and not os.path.exists(os.path.join(script, "__main__.py")):
        raise TargetError(f"{script}: a directory without __main__.py")
    return Target("script", script, argv[1:], python)


def check_module(name: str) -> None:
    """Raise TargetError when ``-m name`` cannot run (as ``python -m`` would
    say), importing only its parent packages."""
    try:
        runpy._get_module_details(name)           # type: ignore[attr-defined]
    except ImportError as e:
        raise TargetError(f"-m {name}: {e}") from None
    except Exception as e:
        raise TargetError(f"-m {name}: {type(e).__name__}: {e}") from None


Compiler = Callable[[bytes, str], CodeType]


def run(target: Target, *, compiler: Compiler | None = None,
        init_globals: dict[str, Any] | None = None) -> int:
    """Run the target in this process, as ``python`` would, and return its
    exit status (uncaught exceptions are printed through sys.excepthook).

    ``compiler(source, filename)``, when given, compiles the ``__main__``
    module (a script, or the ``-m`` module) instead of the built-in compile
    (``pgo run`` adds its routing decorators there); ``init_globals`` go into
    that module's namespace first."""
    if target.kind == "script":
        path = os.path.abspath(target.name)
        sys.argv = [target.name, *target.args]
        sys.path[0] = os.path.dirname(os.path.realpath(path)) if os.path.isfile(path) else path
        if compiler is not None and os.path.isfile(path):
            with open(path, "rb") as f:
                code = compiler(f.read(), path)
            main = lambda: _keep(runpy._run_module_code(  # type: ignore[attr-defined]  # noqa: E731
                code, init_globals, "__main__", pkg_name="", script_name=path))
        else:
            main = lambda: _keep(runpy.run_path(path, init_globals,  # noqa: E731
                                                run_name="__main__"))
        frame_file = os.path.realpath(path)
    elif target.kind == "module":
        sys.argv = [target.name, *target.args]     # runpy puts the file in argv[0]
        sys.path[0] = os.getcwd()
        if compiler is not None:
            def main() -> None:
                name, spec, code = runpy._get_module_details(target.name)  # type: ignore[attr-defined]
                source = spec.loader.get_source(name) if spec.loader else None
                if source is not None and spec.origin:
                    code = compiler(source.encode(), spec.origin)
                _keep(runpy._run_module_code(  # type: ignore[attr-defined]
                    code, init_globals, "__main__", mod_spec=spec))
        else:
            main = lambda: _keep(runpy.run_module(target.name, init_globals,  # noqa: E731
                                                  run_name="__main__", alter_sys=True))
        frame_file = None
    else:
        sys.argv = ["-c", *target.args]
        sys.path[0] = ""

        def main() -> None:
            import __main__
            __main__.__dict__.update(init_globals or {})
            code = (compiler(target.name.encode(), "<string>") if compiler is not None
                    else compile(target.name, "<string>", "exec"))
            exec(code, __main__.__dict__)
        frame_file = "<string>"
    try:
        main()
    except SystemExit as e:
        return _exit_status(e)
    except KeyboardInterrupt:
        import traceback
        traceback.print_exc()
        return 130
    except BaseException as e:
        tb = e.__traceback__
        # Drop pgo's and runpy's frames, as python's own traceback has none.
        while tb is not None and tb.tb_next is not None and not _is_target_frame(tb, frame_file):
            tb = tb.tb_next
        sys.excepthook(type(e), e.with_traceback(tb), tb)
        return 1
    return 0


_globals: list[dict] = []


def _keep(namespace: dict) -> None:
    # runpy drops the module it ran when it returns; python keeps __main__'s
    # globals until shutdown, so objects they hold live until then here too.
    _globals.append(namespace)


def _is_target_frame(tb, frame_file: str | None) -> bool:
    filename = tb.tb_frame.f_code.co_filename
    if frame_file is not None:
        return os.path.realpath(filename) == frame_file if frame_file != "<string>" \
            else filename == "<string>"
    here = os.path.dirname(os.path.abspath(__file__))
    return not (filename.startswith(here) or os.path.basename(filename) == "runpy.py")


def _exit_status(e: SystemExit) -> int:
    code = e.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _module_file(name: str) -> str | None:
    """The file ``python -m name`` runs (a package's ``__main__.py``),
    found on sys.path without importing anything: importing a package to
    ask would run its ``__init__`` before pgo is in place."""
    from importlib.machinery import PathFinder
    path: list[str] | None = None
    spec = None
    parts = name.split(".")
    for i in range(len(parts)):
        spec = PathFinder.find_spec(".".join(parts[:i + 1]), path)
        if spec is None:
            return None
        path = list(spec.submodule_search_locations or [])
    if spec is not None and spec.submodule_search_locations:
        spec = PathFinder.find_spec(f"{name}.__main__", list(spec.submodule_search_locations))
    origin = spec.origin if spec is not None else None
    return origin if origin and os.path.isfile(origin) else None


def _sha256(data: bytes) -> Any:
    # The built-in implementation: hashlib loads OpenSSL first (2 ms more
    # before the program starts, under `pgo run`); the digest is the same.
    try:
        from _sha2 import sha256  # type: ignore[import-not-found]   # 3.12+
    except ImportError:
        try:
            from _sha256 import sha256  # type: ignore[import-not-found,no-redef]
        except ImportError:
            from hashlib import sha256  # type: ignore[assignment]
    return sha256(data)


# -- starting pgo's own child processes ------------------------------------------

def pgo_argv(python: list[str], module: str, *args: str) -> list[str]:
    """A command running ``module.main()`` under ``python`` with the
    installed pgo: ``python -m`` would put the working directory first on
    sys.path, and in a checkout of pgo (README's ``pip install . && pgo
    demo``) its source tree, without the compiled core, would shadow the
    install.  The slot is put back (empty) for the target's runner to set,
    as python would."""
    boot = (f"import sys; sys.path.pop(0); from {module} import main; "
            f"sys.path.insert(0, ''); sys.exit(main())")
    return [*python, "-c", boot, *args]


@contextmanager
def launched(target: Target, module: str, control: dict[str, Any], *,
             env: dict[str, str] | None = None, metrics_port: int | None = None,
             error: type[PgoError] = PgoError
             ) -> Iterator[tuple[subprocess.Popen, dict[str, Any]]]:
    """In a launcher (``pgo run``, ``pgo profile``): start ``python -m
    module CONTROL`` for ``target`` and yield (child, its status line) once
    the child said it started or why it cannot, with ^C and SIGTERM
    reaching the program (``signals_to``) until the block ends.  With
    ``metrics_port`` the launcher serves the program's metrics
    (pgo.metrics_relay): the port is bound first, so a port in use is an
    error before anything runs.  ``error``: what a failed start raises."""
    import json
    import subprocess
    relay = None
    if metrics_port:
        from pgo.metrics_relay import Relay
        relay = Relay(metrics_port)
    read_fd, write_fd = os.pipe()
    control = {**control, "status_fd": write_fd,
               "metrics_fd": relay.child_fd() if relay else None}
    pass_fds = (write_fd, *([relay.child_fd()] if relay else []))
    argv = pgo_argv(target.python, module, json.dumps(control))
    try:
        try:
            child = subprocess.Popen(argv, pass_fds=pass_fds, env=env)
        except OSError as e:
            raise error(f"cannot start {target.python[0]}: {e}") from None
        finally:
            os.close(write_fd)
        with signals_to(child):
            status = read_status(read_fd)
            if relay and status.get("started"):
                relay.started(child.pid)
            yield child, status
    finally:
        os.close(read_fd)
        if relay:
            relay.close()


@contextmanager
def signals_to(child: subprocess.Popen) -> Iterator[None]:
    """In a launcher, while its child runs the program: signals reach the
    program as they would reach ``python job.py``.

    A terminal's ^C goes to the whole foreground process group, so the
    child gets SIGINT itself (KeyboardInterrupt, exit 130) and this process
    ignores it.  SIGTERM is sent to this process alone (kill, timeout, a
    supervisor), so it is passed on, and the child dies of it.  Set only
    once the child has started: a child inherits an ignored SIGINT, and
    Python then never raises KeyboardInterrupt (the old launchers' bug)."""
    def forward(signum: int, frame: object) -> None:
        try:
            child.send_signal(signum)
        except OSError:
            pass
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def exit_status(returncode: int) -> tuple[int, str | None]:
    """A child's Popen returncode as a shell's status (128 + N for signal
    N) and the signal's name."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:              # a real-time signal has no name
            name = f"signal {-returncode}"
        return 128 - returncode, name
    return returncode, None


# -- the status line a child sends its launcher ------------------------------------

def send_status(fd: int | None, **msg: object) -> None:
    """One JSON line on the launcher's pipe: {"started": true} once the
    target is about to run, or {"error": "..."} when it cannot."""
    import json
    if fd is None:
        return
    try:
        os.write(fd, (json.dumps(msg) + "\n").encode())
    except OSError:
        pass


def read_status(fd: int) -> dict[str, Any]:
    """The child's status line, or {} when it died before saying anything."""
    import json
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    try:
        out = json.loads(data.decode() or "{}")
        return out if isinstance(out, dict) else {}
    except ValueError:
        return {}


def child_target(spec: str) -> tuple[dict[str, Any], int | None, Target | None]:
    """In a child process: the control its launcher sent (JSON), the status
    pipe's fd, and the target; None for the target (and an error on the
    status line) when a ``-m`` module cannot run."""
    import json
    control = json.loads(spec)
    fd = control.get("status_fd")
    target = Target.from_json(control["target"])
    if target.kind == "module":
        try:
            check_module(target.name)
        except TargetError as e:
            send_status(fd, error=str(e))
            return control, fd, None
    return control, fd, target


def answer_metrics(control: dict[str, Any]) -> None:
    """In a child process: answer the launcher's metrics requests when it
    serves ``--metrics-port`` (pgo.metrics_relay)."""
    fd = control.get("metrics_fd")
    if fd is not None:
        from pgo import metrics_relay
        metrics_relay.answer(int(fd))


def started(fd: int | None) -> None:
    """In a child process: tell the launcher the target is about to run, and
    close the status pipe (the target must not inherit it)."""
    send_status(fd, started=True, pid=os.getpid())
    if fd is not None:
        os.close(fd)
