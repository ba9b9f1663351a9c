"""Prometheus metrics of a live process: pgo's allocators and pools, the
GC under pgo's plan, next to prometheus_client's own process, platform and
GC collectors.  Built on prometheus_client (its exposition format, its
HTTP server); nothing here runs until ``start_http_server`` is called,
and ``import pgo`` never imports this module.  Under ``pgo run
--metrics-port`` the launcher serves instead, from the program's
``snapshot`` (pgo.metrics_relay): the program never imports
prometheus_client.

    import pgo.metrics
    pgo.metrics.register("frames", my_pool)      # anything with stats()
    pgo.metrics.start_http_server(9464)           # http://127.0.0.1:9464/metrics

Metrics (Prometheus naming: base units, ``_total`` counters):

=============================================  =======  =====================================
``allocator_utilization_ratio{allocator_type,  gauge    bytes in use / bytes reserved
rule}``
``allocator_allocations_total{...}``           counter  allocations served
``allocator_bytes{...,state}``                 gauge    state: in_use, cached (a cache's
                                                        free blocks), reserved (from the
                                                        system)
``allocator_fragmentation_ratio{...}``         gauge    bytes lost to padding and rounding
``allocator_resets_total{...}``                counter  resets
``allocator_lock_contention_total{...}``       counter  lock acquisitions that waited
``pool_hit_rate{pool_type,rule}``              gauge    requests served from the pool (a
                                                        CacheAllocator, a BufferPool, an
                                                        ObjectPool)
``gc_pressure_reduction_ratio``                gauge    1 - (GC seconds per second now) /
                                                        (GC's share of the profiled run)
``pgo_gc_pause_seconds``                       histo.   every collection's pause
``pgo_gc_frozen_objects``                      gauge    objects in the permanent generation
``pgo_gc_growth_factor``                       gauge    the GC plan's heap growth factor
                                                        now (the backoff moves it)
``pgo_gc_full_collections_total``              counter  the plan's own full collections
=============================================  =======  =====================================

``python_gc_collections_total{generation}``, ``python_info`` and
``process_resident_memory_bytes`` come from prometheus_client's default
collectors.  ``rule`` names where an allocator comes from: the config's
``numpy.size_class[0]`` or ``site:module:function``, or the name given to
``register``.

# NOTE: threads.  The HTTP server answers in its own thread; a scrape reads
# the allocators' stats() (each takes its allocator's lock for a copy) and
# the runtime's state, never the GIL-free paths.  The GC callback runs in
# whichever thread collects, and only adds to plain counters (no lock).
"""

from __future__ import annotations

import gc
import numbers
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from pgo._gc_pauses import PauseTimer

PAUSE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

_lock = threading.Lock()
_registered: dict[str, Any] = {}
_started: dict[str, Any] = {}             # "addr:port" -> its listening socket
_collectors: dict[int, Any] = {}          # id(registry) (0: the default) -> _Served


def register(name: str, obj: Any) -> None:
    """Export an allocator or a pool (anything whose ``stats()`` returns
    pgo's counters) under ``rule=name``; the same name again replaces it."""
    if not callable(getattr(obj, "stats", None)):
        raise TypeError(f"pgo.metrics.register: {obj!r} has no stats() to export")
    with _lock:
        _registered[name] = obj


def unregister(name: str) -> None:
    with _lock:
        _registered.pop(name, None)


def _sources(rt: Any) -> list[tuple[str, Any]]:
    """(rule, object) for every allocator and pool to export now (``rt``:
    the active runtime, or None)."""
    out: list[tuple[str, Any]] = []
    if rt is not None:
        if rt.router is not None:
            out += [(f"numpy.size_class[{i}]", sc.allocator)
                    for i, sc in enumerate(rt.router.size_classes)]
        if rt.sites is not None:
            out += [(f"site:{fn}", a) for fn, a in sorted(rt.sites.rules.items())]
    with _lock:
        out += sorted(_registered.items())
    return out


class Pauses:
    """Every collection's pause, counted into PAUSE_BUCKETS by the
    gc.callbacks entry.  Plain Python counters, no lock: a GC callback may
    run in any thread at any allocation, including inside
    prometheus_client's own locked code, so it must take no lock (taking
    the Histogram's value lock there can deadlock, prometheus_client
    #363).  Read at scrape time into a HistogramMetricFamily."""

    def __init__(self) -> None:
        self.buckets = [0] * (len(PAUSE_BUCKETS) + 1)     # the last: +Inf
        self.count = 0
        self.total = 0.0
        self.callback = PauseTimer(self._add)

    def _add(self, ns: int, info: dict[str, Any]) -> None:
        d = ns / 1e9
        i = 0
        while i < len(PAUSE_BUCKETS) and d > PAUSE_BUCKETS[i]:
            i += 1
        self.buckets[i] += 1
        self.count += 1
        self.total += d

    def as_json(self) -> dict[str, Any]:
        return {"buckets": list(self.buckets), "count": self.count, "total": self.total}


def snapshot(pauses: Pauses | None, t0: float) -> dict[str, Any]:
    """Everything a scrape reads from this process, as plain JSON-able data
    (the launcher of ``pgo run --metrics-port`` asks the program for it
    over a socket; ``start_http_server`` reads it in-process)."""
    from pgo import runtime
    rt = runtime.active()
    sources = []
    for rule, obj in _sources(rt):
        try:
            st = obj.stats()
        except Exception:       # noqa: BLE001, S112  (a pool torn down between scrapes)
            continue
        kind = str(st.get("allocator") or type(obj).__name__)
        sources.append([rule, kind, {str(k): float(v) for k, v in st.items()
                                     if isinstance(v, numbers.Real) and not isinstance(v, bool)}])
    policy = rt.gc if rt is not None else None
    plan = None
    if policy is not None:
        st = policy.stats()
        plan = {"growth_factor_now": st.get("growth_factor_now"),
                "full_collections": st.get("policy_full_collections", 0),
                "profiled_gc_share": policy.plan.profiled_gc_share}
    return {"sources": sources, "frozen": gc.get_freeze_count(), "plan": plan,
            "pauses": pauses.as_json() if pauses is not None else None,
            "elapsed": max(time.monotonic() - t0, 1e-9)}


def families(snap: dict[str, Any]) -> Iterator[Any]:
    """pgo's metric families from a ``snapshot``."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    labels = ["allocator_type", "rule"]
    util = GaugeMetricFamily("allocator_utilization_ratio",
                             "Bytes in use over bytes reserved from the system", labels=labels)
    allocs = CounterMetricFamily("allocator_allocations", "Allocations served", labels=labels)
    nbytes = GaugeMetricFamily("allocator_bytes", "Bytes by state: in_use, cached, reserved",
                               labels=[*labels, "state"])
    frag = GaugeMetricFamily("allocator_fragmentation_ratio",
                             "Bytes lost to padding and rounding over bytes consumed",
                             labels=labels)
    resets = CounterMetricFamily("allocator_resets", "Resets", labels=labels)
    contention = CounterMetricFamily("allocator_lock_contention",
                                     "Lock acquisitions that had to wait", labels=labels)
    hit = GaugeMetricFamily("pool_hit_rate", "Requests served from the pool",
                            labels=["pool_type", "rule"])
    for rule, kind, st in snap["sources"]:
        if "hit_rate" in st:
            hit.add_metric([kind, rule], float(st["hit_rate"]))
        if "capacity" not in st:
            continue            # a pool: its hit rate is what there is
        values = [kind, rule]
        util.add_metric(values, float(st.get("utilization", 0.0)))
        allocs.add_metric(values, float(st.get("allocations", 0)))
        nbytes.add_metric([*values, "in_use"], float(st.get("in_use", 0)))
        nbytes.add_metric([*values, "reserved"], float(st.get("capacity", 0)))
        if "cached_bytes" in st:
            nbytes.add_metric([*values, "cached"], float(st["cached_bytes"]))
        frag.add_metric(values, float(st.get("fragmentation", 0.0)))
        resets.add_metric(values, float(st.get("resets", 0)))
        contention.add_metric(values, float(st.get("contention", 0)))
    yield from (util, allocs, nbytes, frag, resets, contention, hit)
    pauses = snap["pauses"]
    if pauses is not None:
        yield _pause_family(pauses)
    frozen = GaugeMetricFamily("pgo_gc_frozen_objects",
                               "Objects in the permanent generation (gc.freeze)")
    frozen.add_metric([], float(snap["frozen"]))
    yield frozen
    plan = snap["plan"]
    if plan is None:
        return
    if plan["growth_factor_now"] is not None:
        growth = GaugeMetricFamily("pgo_gc_growth_factor", "The GC plan's heap growth factor now")
        growth.add_metric([], float(plan["growth_factor_now"]))
        yield growth
    full = CounterMetricFamily("pgo_gc_full_collections", "Full collections made by the GC plan")
    full.add_metric([], float(plan["full_collections"]))
    yield full
    share = plan["profiled_gc_share"]
    if pauses is not None and share:
        # GC seconds per second of run since the exporter started, against
        # the profiled run's share: 0.9 means 90% less time in GC.
        ratio = GaugeMetricFamily("gc_pressure_reduction_ratio",
                                  "1 - GC seconds per second now / the profiled run's share")
        ratio.add_metric([], 1.0 - (pauses["total"] / snap["elapsed"]) / share)
        yield ratio


def _pause_family(pauses: dict[str, Any]) -> Any:
    from prometheus_client.core import HistogramMetricFamily
    cumulative, running = [], 0
    for bound, n in zip([*map(str, PAUSE_BUCKETS), "+Inf"], pauses["buckets"]):
        running += n
        cumulative.append((bound, float(running)))
    h = HistogramMetricFamily("pgo_gc_pause_seconds", "Every collection's pause (gc.callbacks)")
    h.add_metric([], cumulative, sum_value=pauses["total"])
    return h


class PgoCollector:
    """The prometheus_client collector of this process's pgo metrics
    (a ``snapshot`` at each scrape)."""

    def __init__(self, pauses: Pauses | None = None, t0: float | None = None) -> None:
        self._pauses = pauses
        self._t0 = time.monotonic() if t0 is None else t0     # when pauses started counting

    def describe(self) -> list[Any]:
        return []           # the metrics depend on what is registered: no describe

    def collect(self) -> Iterator[Any]:
        return families(snapshot(self._pauses, self._t0))


def start_http_server(port: int, addr: str = "127.0.0.1", *, registry: Any = None) -> Any:
    """Serve the metrics on http://ADDR:PORT/metrics (in a daemon thread),
    with prometheus_client's default process, platform and GC collectors.

    The port is bound now (a port in use is an error now) and every GC
    pause is counted from now, but prometheus_client (40 ms of imports)
    is loaded by the server thread when the first scrape arrives: a
    program is not slowed at start for metrics nobody has asked for yet.
    The collector is set up once per registry whatever the number of
    ports; the same (addr, port) twice is the same server.  Returns the
    listening socket.

    Raises:
        OSError: the port cannot be listened on (nothing is left set up).
    """
    import socket
    key = f"{addr}:{port}"
    with _lock:
        if key in _started:
            return _started[key]
        sock = socket.create_server((addr, port))             # OSError: nothing set up yet
        regkey = id(registry) if registry is not None else 0
        if regkey not in _collectors:
            pauses = Pauses()
            gc.callbacks.append(pauses.callback)
            _collectors[regkey] = _Served(pauses)
        served = _collectors[regkey]

        def setup() -> Any:
            from prometheus_client import REGISTRY
            reg = registry if registry is not None else REGISTRY
            served.register(reg)
            return reg

        serve_lazily(sock, setup)
        _started[key] = sock
        return sock


class _Served:
    """One registry's collector: made (and registered) at the first scrape
    of any of its ports."""

    def __init__(self, pauses: Pauses) -> None:
        self.pauses = pauses
        self.t0 = time.monotonic()
        self.registered = False

    def register(self, reg: Any) -> None:
        with _lock:
            if not self.registered:
                reg.register(PgoCollector(self.pauses, self.t0))
                self.registered = True


def serve_lazily(sock: Any, setup: Callable[[], Any]) -> _LazyServer:
    """Serve ``/metrics`` on the listening socket ``sock`` from a daemon
    thread.  prometheus_client is imported, and ``setup()`` called for the
    registry to serve, when the first connection arrives.  Returns what
    stops it."""
    return _LazyServer(sock, setup)


class _LazyServer:
    def __init__(self, sock: Any, setup: Callable[[], Any]) -> None:
        self.sock = sock
        self.httpd: Any = None                # once the first scrape made it
        self.lock = threading.Lock()
        self.stopped = False
        self.thread = threading.Thread(target=_serve_when_asked, args=(self, setup),
                                       name=f"pgo-metrics-{sock.getsockname()[1]}",
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket; waits for the server thread.
        A thread still in accept() is woken by shutting the socket down."""
        import socket
        with self.lock:
            self.stopped = True
            httpd = self.httpd
        if httpd is not None:
            httpd.shutdown()                # waits for serve_forever to return
        else:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(timeout=5)
        self.sock.close()


def _serve_when_asked(server: _LazyServer, setup: Callable[[], Any]) -> None:
    # NOTE: runs in the server thread.  accept() waits without the GIL; the
    # imports and the collector come with the first connection.
    sock = server.sock
    try:
        conn, peer = sock.accept()
    except OSError:
        return                              # stopped before any scrape
    from wsgiref.simple_server import WSGIRequestHandler

    from prometheus_client import make_wsgi_app
    from prometheus_client.exposition import ThreadingWSGIServer

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass            # the program's stderr is its own

    reg = setup()
    host, port = sock.getsockname()[:2]
    httpd = ThreadingWSGIServer((host, port), Quiet, bind_and_activate=False)
    httpd.socket.close()
    httpd.socket = sock
    httpd.server_name, httpd.server_port = host, port
    httpd.setup_environ()
    httpd.set_app(make_wsgi_app(reg))
    with server.lock:
        if server.stopped:
            conn.close()
            return
        server.httpd = httpd
    httpd.process_request(conn, peer)
    httpd.serve_forever()
