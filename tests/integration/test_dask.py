"""pgo on Dask workers: PgoPlugin on a real LocalCluster of worker
processes (dask.distributed), the config applied on every worker (and on
one added later) and in the tasks they run, profile -> merge -> analyze
over the fleet (a GC-bound bag job and an array job of large
temporaries), teardown, and a worker killed mid-profile."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

distributed = pytest.importorskip("distributed", reason="dask[distributed] is not installed "
                                                       "(pip install 'pgo-memory[dask]')")

from pgo import bundle, config

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))

CONFIG = textwrap.dedent("""
    [pgo]
    version = 1

    [gc]
    thresholds = [12345, 10, 10]

    [[numpy.size_class]]
    min_bytes = 1048576
    allocator = "cache"
    headroom_percent = 10
""")


@pytest.fixture
def cluster():
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as c, Client(c) as client:
        yield c, client


def worker_state():
    import gc

    import numpy as np

    import pgo
    return {"thresholds": gc.get_threshold(), "handler": pgo.handler_name(np.ones(8)),
            "pid": os.getpid()}


def records(n):
    # A GC-bound task: dicts holding lists, all kept.
    out = []
    for i in range(n):
        out.append({"id": i, "tags": [str(i % 7), "x"], "v": [i, i * 2]})
    return len(out)


def test_the_config_reaches_every_worker_and_teardown_restores_them(cluster, tmp_path):
    from pgo.dask import PgoPlugin
    c, client = cluster
    (tmp_path / "pgo.toml").write_text(CONFIG)
    before = client.run(worker_state)
    assert all(s["thresholds"] != (12345, 10, 10) for s in before.values())
    client.register_plugin(PgoPlugin(config=tmp_path / "pgo.toml"))
    after = client.run(worker_state)
    assert len(after) == 2
    assert all(s["thresholds"] == (12345, 10, 10) for s in after.values())
    assert all("pgo" in s["handler"] for s in after.values()), after
    # A worker added later gets it too.
    c.scale(3)
    client.wait_for_workers(3, timeout=120)
    later = client.run(worker_state)
    assert len(later) == 3 and all(s["thresholds"] == (12345, 10, 10) for s in later.values())
    # Restarted workers (new processes) get it again from the scheduler.
    client.restart(timeout=120)
    client.wait_for_workers(3, timeout=120)
    restarted = client.run(worker_state)
    assert {s["pid"] for s in restarted.values()}.isdisjoint(s["pid"] for s in later.values())
    assert all(s["thresholds"] == (12345, 10, 10) for s in restarted.values()), restarted
    later = restarted
    # Tasks run under it, in the worker's executor threads and in the
    # contexts Dask copies for them (made before the plugin was set up).
    import numpy as np
    assert client.submit(lambda: float(np.ones(1 << 18).sum()), pure=False).result() == 2**18
    in_tasks = client.gather([client.submit(worker_state, pure=False, workers=[w])
                              for w in later])
    assert all("pgo" in s["handler"] for s in in_tasks), in_tasks
    stats = client.run(lambda dask_worker: dask_worker.plugins["pgo"].stats())
    assert all(s["gc"]["thresholds"] == [12345, 10, 10] for s in stats.values())
    # Unregistered: every worker as it was.
    client.unregister_worker_plugin("pgo")
    restored = client.run(worker_state)
    assert all(s["thresholds"] == before[next(iter(before))]["thresholds"]
               for s in restored.values())
    assert all("pgo" not in s["handler"] for s in restored.values()), restored


def test_distributeds_own_gc_care_still_works_under_the_plan(cluster, tmp_path):
    from pgo.dask import PgoPlugin
    _, client = cluster
    (tmp_path / "pgo.toml").write_text(CONFIG)
    client.register_plugin(PgoPlugin(config=tmp_path / "pgo.toml"))

    def throttled_collect():
        import gc

        from distributed.gc import ThrottledGC, disable_gc_diagnosis, enable_gc_diagnosis
        enable_gc_diagnosis()
        try:
            before = gc.get_stats()[2]["collections"]
            ThrottledGC(max_in_gc_frac=1.0).collect()
            return gc.get_stats()[2]["collections"] - before, gc.get_threshold()
        finally:
            disable_gc_diagnosis()
    for full, thresholds in client.run(throttled_collect).values():
        assert full == 1 and thresholds == (12345, 10, 10)


def test_profile_the_fleet_merge_and_analyze(cluster, tmp_path):
    import dask.bag as db

    from pgo.dask import PgoPlugin
    _, client = cluster
    fleet = tmp_path / "fleet"
    client.register_plugin(PgoPlugin(profile=fleet))
    total = db.from_sequence([60_000] * 8, npartitions=8).map(records).sum()
    assert total.compute() == 480_000
    client.unregister_worker_plugin("pgo")          # each worker writes its bundle
    bundles = sorted(p for p in fleet.iterdir() if p.is_dir())
    assert len(bundles) == 2
    for b in bundles:
        loaded = bundle.load(b)
        assert loaded.complete and loaded.manifest["target"]["kind"] == "dask-worker"
    merged = tmp_path / "merged"
    def run(*a):
        return subprocess.run([sys.executable, "-m", "pgo", *a], cwd=tmp_path, env=ENV,
                              capture_output=True, text=True, timeout=300)
    m = run("merge", *map(str, bundles), "-o", str(merged))
    assert m.returncode == 0, m.stderr
    a = run("analyze", str(merged), "-o", "fleet.toml", "-q")
    assert a.returncode == 0, a.stderr
    plan = config.load(tmp_path / "fleet.toml").gc
    assert plan is not None and plan.full_collection == "growth", plan


def array_job(side):
    # Large numpy temporaries: each chunk is 8 MiB at side=1024.
    import dask.array as da
    x = da.random.default_rng(1).random((side * 4, side * 4), chunks=(side, side))
    y = (x * 2.0 + 1.0) / (x + 3.0)
    return (da.sqrt(y * y + x) - y.mean()).sum()


def test_an_array_job_profiled_on_the_fleet_gets_a_cache_that_serves_its_chunks(cluster,
                                                                               tmp_path):
    from pgo.dask import PgoPlugin
    _, client = cluster
    fleet = tmp_path / "fleet"
    client.register_plugin(PgoPlugin(profile=fleet))
    expected = array_job(1024).compute()
    client.unregister_worker_plugin("pgo")
    bundles = sorted(str(p) for p in fleet.iterdir() if p.is_dir())
    assert len(bundles) == 2
    def run(*a):
        return subprocess.run([sys.executable, "-m", "pgo", *a], cwd=tmp_path, env=ENV,
                              capture_output=True, text=True, timeout=300)
    assert run("merge", *bundles, "-o", "merged").returncode == 0
    a = run("analyze", "merged", "-o", "arrays.toml", "-q")
    assert a.returncode == 0, a.stderr
    [size_class] = config.load(tmp_path / "arrays.toml").size_classes
    assert size_class.allocator == "cache" and size_class.min_bytes <= 8 << 20
    client.register_plugin(PgoPlugin(config=tmp_path / "arrays.toml"))
    assert array_job(1024).compute() == pytest.approx(expected)
    stats = client.run(lambda dask_worker: dask_worker.plugins["pgo"].stats())
    served = sum(r["allocations"] for s in stats.values() for r in s["numpy"]["routes"])
    assert served >= 16, stats          # the 16 chunks' temporaries, at least
    client.unregister_worker_plugin("pgo")


@pytest.mark.parametrize("kwargs", [{}, {"config": "a.toml", "profile": "fleet"}])
def test_plugin_takes_config_or_profile_exactly_one(kwargs):
    from pgo.dask import PgoPlugin
    with pytest.raises(ValueError, match="exactly one"):
        PgoPlugin(**kwargs)


def test_a_bad_config_is_refused_on_the_client_before_any_worker_sees_it(tmp_path):
    from pgo.dask import PgoPlugin
    (tmp_path / "bad.toml").write_text("[pgo]\nversion = 1\n[gc]\nthresholds = [1, 2]\n")
    with pytest.raises(config.ConfigError, match="bad.toml"):
        PgoPlugin(config=tmp_path / "bad.toml")


def test_import_pgo_never_imports_dask():
    out = subprocess.run([sys.executable, "-c", "import sys, pgo, pgo.runtime, pgo.config; "
                          "print(any(m.split('.')[0] in ('dask', 'distributed') "
                          "for m in sys.modules))"],
                         env=ENV, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_a_worker_killed_mid_profile_leaves_a_loadable_bundle(cluster, tmp_path):
    from pgo.dask import PgoPlugin
    _, client = cluster
    fleet = tmp_path / "fleet"
    client.register_plugin(PgoPlugin(profile=fleet))
    client.run(records, 50_000)
    import time
    time.sleep(1.0)                                  # the profiler flushes every 0.25 s
    pids = client.run(os.getpid)
    victim = min(pids.values())
    os.kill(victim, signal.SIGKILL)
    [killed] = [p for p in fleet.iterdir() if p.name.endswith(f"-{victim}")]
    b = bundle.load(killed)
    assert not b.complete and len(b.objects.events) > 0
