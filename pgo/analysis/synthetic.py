"""Synthetic numpy allocation traces whose patterns are known by
construction: the ground truth for testing the classifier, and the load
for benchmarking it at scale (``benchmarks/bench_analyze.py``).

``make_bundle(spec, seed)`` returns an in-memory ``Bundle`` (nothing on
disk) whose event trace interleaves, in time, sites of these kinds:

- ``lifo-scratch``: nested scratch blocks (4-512 KiB, varied sizes), freed
  in reverse order, one thread;
- ``scoped-temporaries``: a "function" allocating 3-8 blocks of 16-512 KiB
  that die together when it returns (in allocation order, not LIFO);
- ``fixed-size-churn``: one size (1-4 KiB: smaller ones numpy caches itself),
  a window of live blocks
  turning over first-in first-out;
- ``large-repeated``: temporaries of 2-64 MiB, a few alive at once;
- ``long-lived``: blocks allocated early and never freed;
- ``cross-thread-frees``: blocks of one to three sizes of 1-64 KiB made on
  one thread and freed by another a few blocks later (a producer and a
  consumer: a queue of blocks in flight);
- ``phase-changing``: fixed-size churn (as above) for the first half of the
  run, then scoped temporaries (as above) for the second;
- ``fragmenting-survivors``: many blocks of two or three sizes of 1-16 KiB
  allocated together at the start, 80% of them freed in random order at
  the end of the first of the ``passes`` (a tenth of the run), the rest
  alive at the end.
"""

from __future__ import annotations

import numpy as np

from pgo import bundle as fmt

KINDS = ("lifo-scratch", "scoped-temporaries", "fixed-size-churn", "large-repeated",
         "long-lived", "cross-thread-frees", "phase-changing", "fragmenting-survivors")
INTENDED = {"lifo-scratch": "stack", "scoped-temporaries": "cache", "fixed-size-churn": "slab",
            "large-repeated": "cache", "long-lived": "system",
            "cross-thread-frees": "hierarchical", "phase-changing": "adaptive",
            "fragmenting-survivors": "compacting"}


class _Trace:
    def __init__(self) -> None:
        # kind, addr, size, site, tid, clock (in events: one event's time apart)
        self.rows: list[tuple[int, int, int, int, int, int]] = []
        self.next_addr = 1 << 32
        self.clock = 0

    def alloc(self, size: int, site: int, tid: int = 1) -> int:
        addr = self.next_addr
        self.next_addr += (size + 4095) // 4096 * 4096 + 4096
        self.rows.append((1, addr, size, site, tid, self.clock))
        self.clock += 1
        return addr

    def free(self, addr: int, tid: int = 1) -> None:
        self.rows.append((4, addr, 0, 0, tid, self.clock))
        self.clock += 1

    def idle(self, events: int) -> None:
        """Time passes as it would for this many events (work that
        allocates nothing)."""
        self.clock += events


def _lifo(t: _Trace, site: int, rng: np.random.Generator, reps: int) -> None:
    for _ in range(reps):
        depth = int(rng.integers(2, 6))
        stack = [t.alloc(int(rng.integers(4096, 512 * 1024)), site) for _ in range(depth)]
        for a in reversed(stack):
            t.free(a)


def _scoped(t: _Trace, site: int, rng: np.random.Generator, reps: int) -> None:
    for _ in range(reps):
        live = [t.alloc(int(rng.integers(16 * 1024, 512 * 1024)), site)
                for _ in range(int(rng.integers(3, 9)))]
        for a in live:                       # all die as the function returns
            t.free(a)


def _churn(t: _Trace, site: int, rng: np.random.Generator, reps: int, size: int) -> None:
    window: list[int] = []
    for _ in range(reps):
        window.append(t.alloc(size, site))
        if len(window) > 32:
            t.free(window.pop(0))
    for a in window:                       # the loop ends
        t.free(a)


def _large(t: _Trace, site: int, rng: np.random.Generator, reps: int) -> None:
    for _ in range(reps):
        a = t.alloc(int(rng.integers(2, 65)) << 20, site)
        b = t.alloc(int(rng.integers(2, 65)) << 20, site)
        t.free(a)
        t.free(b)


def _handoff(t: _Trace, site: int, rng: np.random.Generator, reps: int,
             sizes: list[int]) -> None:
    # Thread 2 makes the blocks, thread 3 frees each a few blocks later.
    queue: list[int] = []
    for _ in range(reps):
        queue.append(t.alloc(int(rng.choice(sizes)), site, tid=2))
        if len(queue) > 8:
            t.free(queue.pop(0), tid=3)
    for a in queue:
        t.free(a, tid=3)


def _phase(t: _Trace, site: int, rng: np.random.Generator, reps: int, size: int,
           second: bool) -> None:
    if second:
        _scoped(t, site, rng, reps)
    else:
        _churn(t, site, rng, reps * 6, size)


def _survivors(t: _Trace, site: int, rng: np.random.Generator, n: int) -> list[int]:
    """n blocks of two or three sizes allocated together; returns the 80%
    to free, in random order (the rest live to the end)."""
    sizes = rng.choice([1024, 2048, 4096, 8192, 16384], size=int(rng.integers(2, 4)),
                       replace=False)
    blocks = [t.alloc(int(rng.choice(sizes)), site) for _ in range(n)]
    return [blocks[i] for i in rng.permutation(n)[: n * 4 // 5].tolist()]


def make_bundle(spec: dict[str, int], *, seed: int = 0, reps: int = 20, passes: int = 10,
                event_s: float = 1e-6) -> tuple[fmt.Bundle, dict[int, str]]:
    """A bundle with ``spec[kind]`` sites of each kind; returns it and the
    site id -> kind labels.  Sites take turns (``passes`` rounds of about
    ``reps`` events each), so every kind spans the whole run; events are
    ``event_s`` apart (a microsecond: numpy's pace in a tight loop), and
    with fragmenting sites each pass after the first also lets as much
    time pass as their allocations took (their survivors in use)."""
    rng = np.random.default_rng(seed)
    t = _Trace()
    labels: dict[int, str] = {}
    sites_table = []
    next_site = 2
    per_kind: dict[str, list[int]] = {}
    for kind in KINDS:
        for _ in range(spec.get(kind, 0)):
            labels[next_site] = kind
            per_kind.setdefault(kind, []).append(next_site)
            sites_table.append((next_site, f"synthetic.{kind.replace('-', '_')}",
                                f"f{next_site}", "synthetic.py", next_site))
            next_site += 1
    for site in per_kind.get("long-lived", []):
        for _ in range(4):
            t.alloc(int(rng.integers(1024, 1 << 22)), site)
    doomed: dict[int, list[int]] = {}
    for site in per_kind.get("fragmenting-survivors", []):
        doomed[site] = _survivors(t, site, rng, 6 * reps * passes)
    churn_size = {s: int(rng.choice([1024, 1536, 2048, 3072, 4096]))
                  for s in per_kind.get("fixed-size-churn", [])
                  + per_kind.get("phase-changing", [])}
    handoff_sizes = {}
    for s in per_kind.get("cross-thread-frees", []):
        k = int(rng.integers(1, 4))
        handoff_sizes[s] = [int(x) for x in rng.choice(
            [1024, 2048, 4096] if k == 1 else [4096, 8192, 16384, 32768, 65536], size=k,
            replace=False)]
    at_start = ("long-lived", "fragmenting-survivors")       # allocated above, not in turns
    rounds = [(kind, s) for kind in KINDS if kind not in at_start for s in per_kind.get(kind, [])]
    order = rng.permutation(len(rounds)) if rounds else np.zeros(0, np.int64)
    for p in range(passes):                # each site spans the run
        for i in order.tolist():
            kind, s = rounds[i]
            if kind == "lifo-scratch":
                _lifo(t, s, rng, max(1, reps // 4))
            elif kind == "scoped-temporaries":
                _scoped(t, s, rng, max(1, reps // 5))
            elif kind == "fixed-size-churn":
                _churn(t, s, rng, reps * 3, churn_size[s])
            elif kind == "cross-thread-frees":
                _handoff(t, s, rng, reps * 2, handoff_sizes[s])
            elif kind == "phase-changing":
                if passes == 1:            # both halves in the one pass
                    _phase(t, s, rng, reps, churn_size[s], second=False)
                _phase(t, s, rng, reps, churn_size[s], second=2 * p >= passes or passes == 1)
            else:
                _large(t, s, rng, max(1, reps // 10))
        if p == 0:                         # the survivors' neighbours go, early on
            for left in doomed.values():
                for a in left:
                    t.free(a)
        else:                              # and the survivors are used, a while each pass
            t.idle(6 * reps * passes * len(doomed))
    n = len(t.rows)
    ev = np.zeros(n, fmt.EVENT_DTYPE)
    if n:
        arr = np.array(t.rows, dtype=np.uint64)
        ev["kind"] = arr[:, 0]
        ev["addr"] = arr[:, 1]
        ev["size"] = arr[:, 2]
        ev["site"] = arr[:, 3]
        ev["tid"] = arr[:, 4]
        ev["t_ns"] = (arr[:, 5].astype(np.float64) * event_s * 1e9).astype(np.uint64) + 1
    duration_s = t.clock * event_s
    manifest = fmt.manifest_document(
        complete=True, command=["synthetic"], cwd="/", python="3.11", pid=1,
        started_at="2026-01-01T00:00:00+00:00", duration_s=duration_s,
        collectors={"events": {"status": "ok"}, "objects": {"status": "off"}},
        warnings=[], exit={"code": 0, "signal": None})
    bundle = fmt.in_memory(manifest, ev, event_sites=fmt.event_sites_document(sites_table),
                           path="<synthetic>")
    return bundle, labels
