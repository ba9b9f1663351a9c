"""The in-process Profiler: one at a time, what each collector writes, and
that the bundle it leaves loads."""

import gc
import json
import tracemalloc

import numpy as np
import pytest

import pgo
from pgo import bundle
from pgo.profiling import Options, Profiler, active


def test_only_one_profiler_per_process(tmp_path):
    first = Profiler(tmp_path / "a", Options(snapshot_interval=0.05)).start()
    try:
        assert active() is first
        second = Profiler(tmp_path / "b")
        with pytest.raises(pgo.ProfilerError, match="already running"):
            second.start()
        with pytest.raises(pgo.ProfilerError, match="already started"):
            first.start()
    finally:
        first.stop()
    assert active() is None
    # After stop, a new one may start, and allocations are not recorded by
    # the old one any more.
    n = len(bundle.load(tmp_path / "a").events.events)
    np.ones(1000)
    assert len(bundle.load(tmp_path / "a").events.events) == n
    third = Profiler(tmp_path / "c").start()
    third.stop()
    assert bundle.load(tmp_path / "c").complete


def test_gc_pauses_are_recorded(tmp_path):
    p = Profiler(tmp_path / "g", Options(events=False, objects=False)).start()
    try:
        for _ in range(3):
            gc.collect()
        junk = [[i] for i in range(50_000)]
        del junk
    finally:
        p.stop(exit_code=0)
    b = bundle.load(tmp_path / "g")
    g = b.gc
    full = [d for gen, d in zip(g["pauses"]["generation"], g["pauses"]["duration_ns"]) if gen == 2]
    assert len(full) >= 3 and all(d > 0 for d in full)
    assert g["generations"][2]["collections"] >= 3
    assert g["total_pause_ns"] >= sum(full)
    assert g["thresholds"] == list(gc.get_threshold())
    assert b.manifest["exit"]["code"] == 0
    assert b.manifest["collectors"]["events"]["status"] == "off"
    assert b.events is None and b.objects is None


def test_tracemalloc_mode_writes_sites_and_snapshots(tmp_path):
    was = tracemalloc.is_tracing()
    p = Profiler(tmp_path / "t", Options(tracemalloc=True, nframes=2, snapshot_interval=0.01,
                                         events=False, objects=False, gc=False)).start()
    try:
        keep = []
        for i in range(30):
            keep.append(np.ones(10_000))           # numpy data, long-lived
            keep.append([str(j) for j in range(300)])
            import time
            time.sleep(0.01)
    finally:
        p.stop()
    assert tracemalloc.is_tracing() == was
    a = bundle.load(tmp_path / "t").allocations
    assert a["nframes"] == 2 and len(a["snapshots"]) >= 2
    numpy_sites = [s for s in a["sites"] if s["domain"] == "numpy"]
    # np.ones is Python code in numpy: this file is the second frame.
    here = [s for s in numpy_sites if any(f == __file__ for f, _ in s["frames"])]
    assert here and here[0]["peak_bytes"] >= 30 * 80_000 * 0.9
    assert here[0]["final_count"] == 30
    # The profiler's own objects are not sites.
    assert not any("pgo/profiling" in s["frames"][0][0] for s in a["sites"])
    json.dumps(a)        # plain JSON, nothing else


def test_stop_is_idempotent_and_manifest_complete(tmp_path):
    p = Profiler(tmp_path / "i").start()
    p.stop()
    p.stop()
    m = json.loads((tmp_path / "i" / "manifest.json").read_text())
    assert m["complete"] is True and m["duration_s"] > 0
    assert set(m["collectors"]) == {"tracemalloc", "events", "objects", "gc"}
