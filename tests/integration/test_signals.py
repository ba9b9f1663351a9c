"""^C and SIGTERM under `pgo profile` and `pgo run` reach the program as
they would under `python`: KeyboardInterrupt and exit 130 for a terminal's
^C (sent to the whole foreground process group), death by SIGTERM and exit
143 for a `kill` of pgo's own process, and a profile's bundle written and
loadable either way.  The real CLI in a session of its own, so that a
process-group signal reaches what a terminal's would, and nothing else."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pgo import bundle

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))

# Says how it sees SIGINT and SIGTERM, then waits to be interrupted while
# it allocates (so the profile has something in it).
PROGRAM = textwrap.dedent("""
    import signal, sys, time
    import numpy as np
    print("sigint", "default" if signal.getsignal(signal.SIGINT) is signal.default_int_handler
          else signal.getsignal(signal.SIGINT), flush=True)
    keep = []
    for i in range(200):
        keep.append(np.ones(1000 + i))
    try:
        print("ready", flush=True)            # inside the try: a ^C right after is unwound
        while True:
            keep.append(np.ones(10))
            time.sleep(0.01)
    finally:
        print("finally ran", flush=True)
""")

# Handles SIGTERM itself: a server's graceful shutdown.
GRACEFUL = textwrap.dedent("""
    import signal, sys, time
    def stop(signum, frame):
        print("graceful shutdown", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    while True:
        time.sleep(0.01)
""")

CONFIG = textwrap.dedent("""
    [pgo]
    version = 1

    [gc]
    thresholds = [10000, 10, 10]
""")


def start(args, cwd):
    # As a shell starts a foreground job: SIGINT and SIGTERM at their
    # defaults, whatever this test runner inherited (a runner started in the
    # background by a shell without job control has SIGINT ignored, which
    # its children would keep: see test_an_ignored_sigint_stays_ignored).
    def as_a_shell_does():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return subprocess.Popen([sys.executable, "-m", "pgo", *args], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=as_a_shell_does)


def wait_ready(proc, timeout=120):
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
        if line.strip() == "ready":
            return lines
    _kill_session(proc)
    raise AssertionError(f"the program never said ready: {lines}, {proc.stderr.read()}")


def _kill_session(proc):
    # Everything the test started (pgo, its child, the program): a pgo that
    # ignored the signal must not leave them running after the test.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def finish(proc):
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        _kill_session(proc)
        out, err = proc.communicate()
        raise AssertionError(f"pgo did not exit after the signal: {out} {err}") from None
    finally:
        _kill_session(proc)
    return out, err


@pytest.fixture
def program(tmp_path):
    (tmp_path / "job.py").write_text(PROGRAM)
    (tmp_path / "graceful.py").write_text(GRACEFUL)
    (tmp_path / "pgo.toml").write_text(CONFIG)
    return tmp_path


COMMANDS = {
    "profile": lambda d, script: ["profile", "--no-cpu", "-q", "-o", str(d / "bundle"), script],
    "run": lambda d, script: ["run", "-c", str(d / "pgo.toml"), "--", sys.executable, script],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_ctrl_c_is_a_keyboard_interrupt_and_exit_130(program, command):
    proc = start(COMMANDS[command](program, "job.py"), program)
    lines = wait_ready(proc)
    assert "sigint default" in lines          # not SIG_IGN, as it was
    os.killpg(proc.pid, signal.SIGINT)        # what a terminal's ^C does
    out, err = finish(proc)
    assert proc.returncode == 130, err
    assert "KeyboardInterrupt" in err
    assert "finally ran" in out               # the program unwound as under python
    if command == "profile":
        b = bundle.load(program / "bundle")
        assert b.complete and b.manifest["exit"] == {"code": 130, "signal": None}
        assert len(b.events.events) >= 200


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_sigterm_to_pgo_reaches_the_program_and_exits_143(program, command):
    proc = start(COMMANDS[command](program, "job.py"), program)
    wait_ready(proc)
    os.kill(proc.pid, signal.SIGTERM)         # pgo's own process only: kill, timeout
    out, err = finish(proc)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "killed by SIGTERM" in err
    assert "finally ran" not in out           # SIGTERM's default: no unwinding, as under python
    if command == "profile":
        # The profiler wrote the bundle before the program died of it.
        b = bundle.load(program / "bundle")
        assert b.complete, b.warnings
        assert b.manifest["exit"] == {"code": None, "signal": "SIGTERM"}
        assert len(b.events.events) >= 200
        assert not any("truncated" in w for w in b.warnings), b.warnings


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_program_that_handles_sigterm_keeps_its_handler(program, command):
    proc = start(COMMANDS[command](program, "graceful.py"), program)
    wait_ready(proc)
    os.kill(proc.pid, signal.SIGTERM)
    out, err = finish(proc)
    assert proc.returncode == 0, err
    assert "graceful shutdown" in out
    if command == "profile":
        b = bundle.load(program / "bundle")
        assert b.complete and b.manifest["exit"] == {"code": 0, "signal": None}


def test_an_ignored_sigint_stays_ignored(program):
    # Started with SIGINT ignored (a background job of a non-interactive
    # shell): python leaves it so, and under pgo the program sees the same.
    probe = "import signal; print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)"
    seen = {}
    for name, cmd in (("python", [sys.executable, "-c", probe]),
                      ("pgo run", [sys.executable, "-m", "pgo", "run", "-c", "pgo.toml", "--",
                                   sys.executable, "-c", probe])):
        proc = subprocess.run(cmd, cwd=program, env=ENV, capture_output=True, text=True,
                              timeout=120,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        assert proc.returncode == 0, proc.stderr
        seen[name] = proc.stdout.strip()
    assert seen == {"python": "True", "pgo run": "True"}
