"""``--metrics-port`` of ``pgo run`` and ``pgo profile``: the launcher
serves the program's metrics, so that the program itself never imports
prometheus_client (~40-100 ms of imports under the program's GIL, which a
short job would feel) nor answers HTTP.

The launcher binds the port before the program starts (a port in use is an
error before anything runs) and hands the program one end of a socket
pair.  In the program, a thread waits on it without the GIL; at each scrape
the launcher sends a byte and the thread answers with ``pgo.metrics``'s
``snapshot`` (its allocators, pools and GC plan, the pause histogram,
``gc.get_stats()`` and the interpreter's version) as a length-prefixed
JSON document: well under a millisecond of the program's time.  The
launcher turns it into prometheus_client's metric families, next to
prometheus_client's process collector pointed at the program's pid (RSS,
CPU, open files are the program's, not the launcher's).

# NOTE: threads.  In the program, the answering thread reads what
# ``snapshot`` reads (each allocator's stats() takes its lock for a copy)
# and only sends; the GC pause callback adds to plain counters.  In the
# launcher, the HTTP server answers each scrape in a thread of its own, so
# requests on the socket pair are serialized by a lock.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from pgo import metrics

# A request is its number; an answer is (that number, the JSON document's
# length) and the document.  Numbers let the launcher drop an answer that
# came after its scrape gave up on it, instead of serving it to the next.
_REQUEST = struct.Struct("!I")
_HEADER = struct.Struct("!II")
MAX_ANSWER_BYTES = 64 << 20            # anything longer is a broken stream
ANSWER_TIMEOUT_S = 5.0


# -- in the program ---------------------------------------------------------------

def answer(fd: int) -> None:
    """Count GC pauses from now and answer the launcher's snapshot requests
    on ``fd`` (its end of the socket pair) from a daemon thread, until the
    launcher closes its end."""
    os.set_inheritable(fd, False)          # not the program's children's
    conn = socket.socket(fileno=fd)
    pauses = metrics.Pauses()
    gc.callbacks.append(pauses.callback)
    threading.Thread(target=_answer_loop, args=(conn, pauses, time.monotonic()),
                     name="pgo-metrics", daemon=True).start()


def _answer_loop(conn: socket.socket, pauses: metrics.Pauses, t0: float) -> None:
    # NOTE: runs in the program's answering thread; recv() waits without the GIL.
    with conn:
        try:
            _answer_requests(conn, pauses, t0)
        except OSError:
            pass
        finally:
            gc.callbacks.remove(pauses.callback)    # nobody asks any more


def _answer_requests(conn: socket.socket, pauses: metrics.Pauses, t0: float) -> None:
    info = None
    while True:
        request = conn.recv(_REQUEST.size, socket.MSG_WAITALL)
        if len(request) < _REQUEST.size:
            return                          # the launcher is gone
        (seq,) = _REQUEST.unpack(request)
        try:
            info = info or _python_info()
            snap = metrics.snapshot(pauses, t0)
            snap["gc_stats"] = gc.get_stats()
            snap["python"] = info
            data = json.dumps(snap).encode()
        except Exception as e:              # noqa: BLE001  (a pool's stats() that fails)
            # Said to the launcher, which prints it; the program's own
            # stderr and its run are left alone.
            data = json.dumps({"error": f"{type(e).__name__}: {e}"}).encode()
        conn.sendall(_HEADER.pack(seq, len(data)) + data)


def _python_info() -> dict[str, str]:
    # The labels of prometheus_client's python_info, for this interpreter.
    import platform
    major, minor, patch = platform.python_version_tuple()
    return {"implementation": platform.python_implementation(), "major": major,
            "minor": minor, "patchlevel": patch, "version": platform.python_version()}


# -- in the launcher --------------------------------------------------------------

class Relay:
    """The launcher's side: bound to ``127.0.0.1:port`` when made, serving
    once ``started(pid)`` is called with the program's pid.

    Raises (when made):
        CommandError: the port cannot be listened on, or prometheus_client
            is not installed (exit status 2, before the program runs).
    """

    def __init__(self, port: int, addr: str = "127.0.0.1") -> None:
        import importlib.util

        from pgo._errors import CommandError
        if importlib.util.find_spec("prometheus_client") is None:
            raise CommandError("--metrics-port needs prometheus_client (pip install "
                               "prometheus_client, or pip install \"pgo-memory[metrics]\")",
                               exit_code=2)
        try:
            self.sock = socket.create_server((addr, port))
        except (OSError, OverflowError) as e:
            why = getattr(e, "strerror", None) or e
            raise CommandError(f"--metrics-port {port}: cannot listen on {addr}:{port}: {why}",
                               exit_code=2) from None
        try:
            self._conn, self._child_end = socket.socketpair()
        except OSError:
            self.sock.close()
            raise
        self._lock = threading.Lock()
        self._seq = 0
        self._broken = False           # out of step with the program: asked no more
        self._server: Any = None

    def child_fd(self) -> int:
        """The fd to pass to the program (``pass_fds``), whose ``answer``
        takes it."""
        return self._child_end.fileno()

    def started(self, pid: int) -> None:
        """The program runs (as ``pid``): close the launcher's copy of the
        program's end and serve."""
        self._child_end.close()

        def setup() -> Any:
            from prometheus_client import CollectorRegistry, ProcessCollector
            reg = CollectorRegistry()
            ProcessCollector(pid=lambda: pid, registry=reg)
            reg.register(_ProgramCollector(self))
            return reg

        self._server = metrics.serve_lazily(self.sock, setup)

    def close(self) -> None:
        """The program is gone: stop serving (a scrape now fails to
        connect) and wait for the server thread."""
        if self._server is not None:
            self._server.stop()
        else:
            self.sock.close()
        self._child_end.close()
        with self._lock:                # not under a scrape's recv
            self._conn.close()

    def snapshot(self) -> dict[str, Any] | None:
        """The program's snapshot, or None when it does not answer (it has
        exited, or is stopped) within ANSWER_TIMEOUT_S.  An answer that
        comes later is dropped by the next request."""
        with self._lock:
            if self._broken:
                return None
            self._seq = (self._seq + 1) & 0xFFFFFFFF
            try:
                self._conn.settimeout(ANSWER_TIMEOUT_S)
                self._conn.sendall(_REQUEST.pack(self._seq))
                while True:
                    try:
                        first = self._conn.recv(1)
                    except TimeoutError:
                        return None                 # no answer yet: it may come later
                    if not first:
                        raise OSError("the program closed its end")
                    header = first + self._recv(_HEADER.size - 1)
                    seq, n = _HEADER.unpack(header)
                    if n > MAX_ANSWER_BYTES:
                        raise ValueError(f"an answer of {n:,} bytes")
                    data = self._recv(n)
                    if seq == self._seq:
                        return json.loads(data)
            except (OSError, ValueError, struct.error):
                # Mid-answer or garbled: the stream is out of step for good.
                self._broken = True
                return None

    def _recv(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self._conn.recv(n - len(data))
            if not chunk:
                raise OSError("the program closed its end")
            data += chunk
        return data


class _ProgramCollector:
    """pgo's metrics, the program's GC counters and python_info, from the
    program's snapshot at each scrape."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._warned = False

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        snap = self._relay.snapshot()
        if snap is None or "error" in snap:
            if not self._warned:        # once: a stopped program would say it every scrape
                self._warned = True
                why = (f"failed: {snap['error']}" if snap is not None else
                       f"was not answered within {ANSWER_TIMEOUT_S:g} s")
                print(f"pgo: warning: --metrics-port: a scrape of the program {why}; "
                      f"serving the process metrics only", file=sys.stderr)
            return
        self._warned = False
        yield from metrics.families(snap)
        yield from _gc_families(snap["gc_stats"])
        from prometheus_client.core import GaugeMetricFamily
        info = snap["python"]
        py = GaugeMetricFamily("python_info", "Python platform information",
                               labels=list(info))
        py.add_metric(list(info.values()), 1.0)
        yield py


def _gc_families(stats: list[dict[str, int]]) -> Iterator[Any]:
    # prometheus_client's GCCollector, for the program's gc.get_stats().
    from prometheus_client.core import CounterMetricFamily
    collected = CounterMetricFamily("python_gc_objects_collected",
                                    "Objects collected during gc", labels=["generation"])
    uncollectable = CounterMetricFamily("python_gc_objects_uncollectable",
                                        "Uncollectable objects found during GC",
                                        labels=["generation"])
    collections = CounterMetricFamily("python_gc_collections",
                                      "Number of times this generation was collected",
                                      labels=["generation"])
    for gen, st in enumerate(stats):
        collected.add_metric([str(gen)], float(st["collected"]))
        uncollectable.add_metric([str(gen)], float(st["uncollectable"]))
        collections.add_metric([str(gen)], float(st["collections"]))
    yield from (collected, uncollectable, collections)
