"""The runtime: the GC policy, per-site routing by decoration, apply()."""

import gc
import sys
import textwrap
import threading
import time
import weakref

import numpy as np
import pytest

import pgo
from pgo import config as cfgmod
from pgo.config import Config, GCPlan, SiteRule, SizeClassRule
import pgo.runtime
from pgo.runtime import apply, mismatches
from pgo.runtime.gc_policy import UNREACHABLE, GCPolicy
from pgo.runtime.sites import DECORATOR, SiteRouter


# The GC thresholds, the frozen generation and numpy's handler, as they were.
pytestmark = pytest.mark.usefixtures("restore_gc")


def test_thresholds_and_growth_driven_full_collections():
    policy = GCPolicy(GCPlan(thresholds=(1000, 5, 10), full_collection="growth",
                             growth_factor=1.5))
    policy.start()
    try:
        assert gc.get_threshold() == (1000, 5, UNREACHABLE)
        full_before = gc.get_stats()[2]["collections"]
        keep = []
        # The heap grows until it has passed two limits (1.5x, then, nothing
        # freed, 3x the heap after the first), however late the collector
        # thread got to the first: the growth stops at 40x, far past both.
        cap = 40 * sys.getallocatedblocks()
        deadline = time.monotonic() + 60
        while (policy.full_collections < 2 and sys.getallocatedblocks() < cap
               and time.monotonic() < deadline):
            keep.append([[i] for i in range(20_000)])
            time.sleep(0.0005)                       # let the collector thread in
        assert policy.full_collections >= 2
        # (A request that finds a collection already running is not a new one.)
        assert 1 <= gc.get_stats()[2]["collections"] - full_before <= policy.full_collections
        st = policy.stats()
        assert st["policy_full_collections"] == policy.full_collections
        assert st["policy_full_collection_s"] > 0
    finally:
        policy.stop()
    assert gc.get_threshold() != (1000, 5, UNREACHABLE)


def test_cyclic_garbage_stays_bounded_under_the_growth_policy():
    from pgo.runtime.gc_policy import MIN_HEAP_BLOCKS
    policy = GCPolicy(GCPlan(thresholds=(1000, 5, 10), full_collection="growth",
                             growth_factor=1.5))
    policy.start()
    try:
        class Node:
            pass
        start = sys.getallocatedblocks()
        peak = start
        for i in range(300_000):
            a, b = Node(), Node()
            a.other, b.other = b, a             # a cycle, garbage at once
            if i % 10_000 == 0:
                peak = max(peak, sys.getallocatedblocks())
        # Young collections free most cycles; those promoted to the old
        # generation wait for a full collection, which comes before the
        # heap passes growth_factor x its size after the last one.
        bound = 1.5 * max(start, MIN_HEAP_BLOCKS) * 1.2
        assert peak <= bound, (start, peak)
    finally:
        policy.stop()


def test_no_automatic_collections_but_full_ones_on_heap_growth():
    policy = GCPolicy(GCPlan(thresholds=(0, 0, 0), full_collection="growth", growth_factor=2.0))
    policy.start()
    try:
        assert gc.get_threshold()[0] == 0          # CPython: no automatic collection
        young = gc.get_stats()[0]["collections"]
        keep = []
        cap = 20 * sys.getallocatedblocks()          # far past 2x, whatever this process holds
        deadline = time.monotonic() + 60
        while (policy.full_collections < 1 and sys.getallocatedblocks() < cap
               and time.monotonic() < deadline):
            keep.append([[i] for i in range(20_000)])
            time.sleep(0.0005)
        assert policy.full_collections >= 1          # the poller saw the heap grow
        assert gc.get_stats()[0]["collections"] == young
        # It freed nothing: the next one waits for more growth than planned.
        assert policy.stats()["growth_factor_now"] >= 4.0
        del keep
    finally:
        policy.stop()


def test_the_poller_looks_less_often_when_a_look_is_expensive(monkeypatch):
    # sys.getallocatedblocks() walks every pymalloc pool with the GIL held;
    # at 1 ms a look the poller must not look every 5 ms (20% of the time).
    real = sys.getallocatedblocks

    def slow() -> int:
        time.sleep(0.001)
        return real()

    policy = GCPolicy(GCPlan(thresholds=(0, 0, 0), full_collection="growth", growth_factor=64.0))
    monkeypatch.setattr(sys, "getallocatedblocks", slow)
    policy.start()
    try:
        time.sleep(0.5)                              # 100 looks at a fixed 5 ms
        assert 1 <= policy.stats()["heap_polls"] <= 5   # a look at most every 200 ms
    finally:
        policy.stop()


def test_the_profiled_peak_delays_the_first_full_collection():
    from pgo.runtime.gc_policy import MIN_HEAP_BLOCKS
    start = max(sys.getallocatedblocks(), MIN_HEAP_BLOCKS)
    # The profile saw 2x this heap and found nothing: the first full
    # collection is due at 2 x 2x, not at 2x.
    policy = GCPolicy(GCPlan(thresholds=(0, 0, 0), full_collection="growth", growth_factor=2.0,
                             peak_heap_blocks=2 * start))
    policy.start()
    try:
        assert policy._limit == 4 * start
        keep = []
        while sys.getallocatedblocks() < 3 * start:
            keep.append([[i] for i in range(20_000)])
        time.sleep(0.1)                              # 20 polls
        assert policy.full_collections == 0
        while sys.getallocatedblocks() < 4.5 * start:
            keep.append([[i] for i in range(20_000)])
        deadline = time.monotonic() + 30
        while policy.full_collections < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert policy.full_collections == 1
        del keep
    finally:
        policy.stop()


def test_freeze_after_startup():
    policy = GCPolicy(GCPlan(freeze_after_startup=True, startup_s=0.05))
    policy.start()
    try:
        _wait_until_frozen(policy)
        assert gc.get_freeze_count() > 0
    finally:
        policy.stop()


def _wait_until_frozen(policy):
    deadline = time.monotonic() + 30
    while policy.frozen == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert policy.frozen > 0


def test_freeze_collects_the_garbage_of_that_moment_first():
    # Frozen objects are never collected: a cycle that is garbage when the
    # timer fires must be collected, not frozen.
    class Node:
        pass

    gc.disable()
    try:
        a, b = Node(), Node()
        a.other, b.other = b, a
        dead = weakref.ref(a)
        del a, b
        policy = GCPolicy(GCPlan(freeze_after_startup=True, startup_s=0.0))
        policy.start()
        try:
            _wait_until_frozen(policy)
            assert dead() is None
        finally:
            policy.stop()
    finally:
        gc.enable()


SOURCE = textwrap.dedent("""
    import numpy as np

    def work(n):
        return np.ones(n).sum()

    class K:
        def method(self, n):
            return np.ones(n).sum()

        @staticmethod
        def static(n):
            return np.ones(n).sum()

    def outer():
        def inner(n):
            return np.ones(n).sum()
        return inner(3000)

    def gen(n):
        yield np.ones(n)

    def untouched(n):
        return np.ones(n).sum()
""")


def test_site_router_decorates_named_functions_only():
    arena = pgo.ArenaAllocator(1 << 20, threadsafe=True)
    rules = [(f"__main__:{q}", arena) for q in ("work", "K.method", "K.static",
                                                "outer.<locals>.inner", "gen", "missing")]
    router = SiteRouter(rules)
    code = router.compile(SOURCE, "<job>", "__main__")
    ns = {"__name__": "__main__", DECORATOR: router.decorator}
    exec(code, ns)
    before = arena.stats()["allocations"]
    assert ns["work"](5000) == 5000.0
    assert ns["K"]().method(4000) == 4000.0
    assert ns["outer"]() == 3000.0
    assert ns["K"].static(2000) == 2000.0 and ns["K"]().static(10) == 10.0
    mid = arena.stats()["allocations"]
    assert mid - before >= 3
    ns["untouched"](5000)
    next(ns["gen"](10))
    assert arena.stats()["allocations"] == mid            # not routed
    rep = router.report()
    assert rep["wrapped"] == ["__main__:K.method", "__main__:K.static",
                              "__main__:outer.<locals>.inner", "__main__:work"]
    assert rep["calls"]["__main__:work"] == 1
    assert "generator" in rep["skipped"]["__main__:gen"]
    assert rep["not_found"] == ["__main__:missing"]
    assert ns["work"].__name__ == "work"                 # functools.wraps
    # Line numbers are the program's: a traceback points at the real line.
    assert ns["work"].__wrapped__.__code__.co_firstlineno == 4
    assert rep["calls"]["__main__:K.static"] == 2


def test_a_site_cache_serves_pages_and_leaves_small_arrays_to_the_small_block_cache():
    from pgo._sizes import SMALL_BLOCK_BYTES as SMALL_BLOCK
    cache = pgo.CacheAllocator(1 << 24)
    router = SiteRouter([("__main__:keep", cache)])
    code = router.compile("import numpy as np\n\ndef keep(n):\n    return np.ones(n)\n",
                          "<job>", "__main__")
    ns = {"__name__": "__main__", DECORATOR: router.decorator}
    exec(code, ns)
    handler = pgo.current_handler()
    big = ns["keep"](SMALL_BLOCK // 8)           # 4096 bytes: a page from the cache
    small = ns["keep"](SMALL_BLOCK // 8 - 1)     # 4088 bytes: not the cache's
    assert pgo.current_handler() is handler      # put back after each call
    assert cache.stats()["allocations"] == 1
    assert np.all(big == 1) and np.all(small == 1)
    del big, small
    # A call that raises puts the handler back too.
    with pytest.raises(ValueError):
        ns["keep"](-1)
    assert pgo.current_handler() is handler


def test_a_site_cache_leaves_the_process_wide_classes_their_sizes():
    # A big cache from 1 MiB and a slab up to 4 KiB are installed for the
    # whole process: inside the routed function they keep those sizes, and
    # the site's cache takes 4097 B .. 1 MiB - 1.
    big = pgo.CacheAllocator(1 << 28)
    slab = pgo.SlabAllocator(4096, threadsafe=True)
    installed = pgo.Router([pgo.SizeClass(1, 4096, slab), pgo.SizeClass(1 << 20, None, big)])
    site = pgo.CacheAllocator(1 << 24)
    router = SiteRouter([("__main__:make", site)], installed)
    code = router.compile("import numpy as np\n\ndef make(n):\n    return np.ones(n)\n",
                          "<job>", "__main__")
    ns = {"__name__": "__main__", DECORATOR: router.decorator}
    exec(code, ns)
    arrays = {n: ns["make"](n // 8) for n in (4096, 4104, (1 << 20) - 8, 1 << 20, 48 << 20)}
    assert pgo.owner(arrays[4096]) is slab
    assert pgo.owner(arrays[4104]) is site and pgo.owner(arrays[(1 << 20) - 8]) is site
    assert pgo.owner(arrays[1 << 20]) is big and pgo.owner(arrays[48 << 20]) is big
    assert all(np.all(a == 1) for a in arrays.values())


def test_import_hook_routes_functions_of_named_modules_only(tmp_path, monkeypatch):
    (tmp_path / "routed_mod.py").write_text("import numpy as np\n\ndef f(n):\n"
                                            "    return np.ones(n).sum()\n")
    (tmp_path / "other_mod.py").write_text("import numpy as np\n\ndef f(n):\n"
                                           "    return np.ones(n).sum()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    arena = pgo.ArenaAllocator(1 << 20, threadsafe=True)
    router = SiteRouter([("routed_mod:f", arena)])
    router.install_import_hook()
    try:
        import other_mod
        import routed_mod
        routed_mod.f(2000)
        assert arena.stats()["allocations"] >= 1
        n = arena.stats()["allocations"]
        other_mod.f(2000)
        assert arena.stats()["allocations"] == n
        assert router.report()["wrapped"] == ["routed_mod:f"]
    finally:
        sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "_Finder"]
        for m in ("routed_mod", "other_mod"):
            sys.modules.pop(m, None)


def test_apply_in_process_and_stats(tmp_path):
    cfg = Config(gc=GCPlan(thresholds=(5000, 10, 10)),
                 size_classes=(SizeClassRule(1 << 20, None, "cache"),))
    rt = apply(cfg)
    try:
        assert gc.get_threshold() == (5000, 10, 10)
        a = np.ones(1 << 18)                         # 2 MiB: the cache
        assert pgo.owner(a) is rt.router.size_classes[0].allocator
        got = {}
        t = threading.Thread(target=lambda: got.update(o=pgo.owner(np.ones(1 << 18))))
        t.start()
        t.join()
        assert got["o"] is rt.router.size_classes[0].allocator    # threads started later
        st = rt.stats()
        assert st["numpy"]["routes"][0]["allocations"] >= 2
        assert st["gc"]["thresholds"] == [5000, 10, 10]
    finally:
        rt.stop()
    assert pgo.installed() is None


def test_apply_wraps_functions_already_defined(tmp_path, monkeypatch):
    mod_src = "import numpy as np\n\ndef f(n):\n    return np.ones(n).sum()\n"
    (tmp_path / "loaded_mod.py").write_text(mod_src)
    monkeypatch.syspath_prepend(str(tmp_path))
    import loaded_mod
    try:
        rt = apply(Config(sites=(SiteRule("loaded_mod:f", "arena"),)))
        loaded_mod.f(5000)
        rep = rt.stats()["sites"]
        assert rep["calls"] == {"loaded_mod:f": 1}
        assert rep["allocators"]["loaded_mod:f"]["allocations"] >= 1
        rt.stop()
    finally:
        sys.modules.pop("loaded_mod", None)
        sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "_Finder"]


def test_apply_rejects_a_bad_config_before_changing_anything(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[pgo]\nversion = 1\n[gc]\nthresholds = [1, 2, 3]\n"
                 "[[site]]\nfunction = \"a:b\"\nallocator = \"nope\"\n")
    before = gc.get_threshold()
    with pytest.raises(pgo.ConfigError, match=r"bad.toml:7: site\[0\].allocator"):
        apply(p)
    assert gc.get_threshold() == before and pgo.installed() is None


def test_python_version_mismatch_warns():
    with pytest.warns(RuntimeWarning, match="made for Python 2.7"):
        rt = apply(Config(python="2.7.18"))
    rt.stop()
    assert cfgmod.dumps(Config(python="2.7.18"))   # still a valid config


def test_a_config_for_another_program_warns_and_strict_refuses(tmp_path):
    from pgo._target import Target
    job = tmp_path / "job.py"
    job.write_text("print('job')\n")
    me = Target("script", str(job), [], []).identity()
    assert me["program"] == "job.py" and len(me["program_sha256"]) == 64
    cfg = Config(program="job.py", program_sha256=me["program_sha256"],
                 gc=GCPlan(thresholds=(1234, 10, 10)))
    assert mismatches(cfg, "pgo.toml", me) == []
    assert mismatches(cfg, "pgo.toml", None) == []           # nothing to compare with
    assert mismatches(Config(gc=cfg.gc), "pgo.toml", me) == []   # an old or hand-made config
    other = Target("script", str(tmp_path / "other.py"), [], []).identity()
    [msg] = mismatches(cfg, "pgo.toml", other)
    assert "made for job.py, not other.py" in msg
    job.write_text("print('job, changed')\n")
    changed = Target("script", str(job), [], []).identity()
    [msg] = mismatches(cfg, "pgo.toml", changed)
    assert "job.py has changed since it was profiled" in msg
    # Warned, and applied; strict: refused with every reason, nothing applied.
    before = gc.get_threshold()
    with pytest.warns(RuntimeWarning, match="made for job.py"):
        rt = apply(cfg, program=other)
    assert gc.get_threshold()[0] == 1234 and rt.warnings
    rt.stop()
    assert gc.get_threshold() == before
    with pytest.raises(pgo.ConfigError, match="made for job.py.*strict: nothing applied"):
        apply(cfg, program=other, strict=True)
    assert gc.get_threshold() == before and pgo.runtime.active() is None


def test_another_numpy_warns_only_for_numpy_rules():
    numpy_rules = Config(numpy="1.0.0", size_classes=(SizeClassRule(1 << 20, None, "cache"),))
    [msg] = mismatches(numpy_rules, "pgo.toml", None)
    assert "numpy 1.0.0" in msg
    assert mismatches(Config(numpy="1.0.0", gc=GCPlan()), "pgo.toml", None) == []
