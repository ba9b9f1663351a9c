"""CPU samples of the profiled process from py-spy, run beside it.

``py-spy record --pid PID --format raw --nonblocking`` samples the child
from outside (no code in the target) without stopping it.  ``native=True``
(``pgo profile --native``) adds native frames, so that time in the
collector (``gc_collect_main``), malloc and numpy's C code shows up under
the Python frame that caused it; it has to stop the process for each
sample, which cost 25-30% on the example targets.  The raw output is kept as ``cpu.txt`` and
converted to ``cpu.speedscope.json``.  A missing or failing py-spy is one
warning in the manifest and on stderr; the rest of the bundle is written.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


LOG = ".py-spy.log"
RAW = "cpu.txt"             # pgo.bundle.CPU_RAW (not imported: it loads numpy)


@dataclass
class Options:
    enabled: bool = True
    rate: int = 100          # samples per second
    native: bool = False     # native frames (blocking sampling: ~25% slower); off: --nonblocking
    py_spy: str | None = None


def find_py_spy(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("py-spy")


class Sampler:
    """py-spy attached to ``pid``, writing into ``directory``."""

    def __init__(self, pid: int, directory: Path, options: Options) -> None:
        self.pid = pid
        self.dir = directory
        self.options = options
        self.proc: subprocess.Popen | None = None
        self.exe = find_py_spy(options.py_spy)
        self.native = options.native
        self.error: str | None = None

    def _argv(self, native: bool) -> list[str]:
        assert self.exe is not None
        argv = [self.exe, "record", "--pid", str(self.pid), "--format", "raw",
                "-o", os.fspath(self.dir / RAW), "--rate", str(self.options.rate)]
        argv += ["--native"] if native else ["--nonblocking"]
        return argv

    def start(self) -> None:
        if self.exe is None:
            self.error = ("py-spy not found (pip install py-spy, or --py-spy PATH); "
                          "CPU samples skipped, the rest of the bundle is written")
            return
        self._spawn()

    def _spawn(self) -> None:
        log = open(self.dir / LOG, "ab")
        try:
            self.proc = subprocess.Popen(self._argv(self.native), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        except OSError as e:
            self.error = f"py-spy could not start ({e}); CPU samples skipped"
            self.proc = None
        finally:
            log.close()

    def finish(self) -> dict:
        """After the target exited: wait for py-spy and convert its output."""
        from pgo import bundle as fmt
        from pgo._errors import ProfileFormatError
        info = {"status": "off" if not self.options.enabled else "ok", "tool": "py-spy",
                "rate": self.options.rate, "native": self.native}
        if self.proc is not None:
            try:
                rc = self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGINT)      # py-spy writes what it has on ^C
                try:
                    rc = self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    rc = self.proc.wait()
            raw = self.dir / fmt.CPU_RAW
            if not raw.exists():
                tail = self._log_tail()
                self.error = (f"py-spy exited with status {rc} without samples"
                              + (f": {tail}" if tail else "") + "; CPU samples skipped")
        if self.error is not None:
            info.update(status="failed" if self.exe else "missing", warning=self.error)
            return info
        try:
            stacks = fmt.read_cpu_raw(self.dir / fmt.CPU_RAW, allow_truncated=True)
        except ProfileFormatError as e:
            info.update(status="failed", warning=f"py-spy's output is unreadable: {e}")
            return info
        fmt.write_json(self.dir / fmt.CPU_SPEEDSCOPE,
                       fmt.speedscope_from_samples(stacks, name=f"pid {self.pid}"))
        info["samples"] = sum(stacks.values())
        try:
            (self.dir / LOG).unlink()
        except OSError:
            pass
        return info

    def _log_tail(self) -> str:
        try:
            text = (self.dir / LOG).read_text(errors="replace")
        except OSError:
            return ""
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()
                 and not ln.startswith("py-spy> Sampling")]
        return lines[-1][:200] if lines else ""
