"""pgo analyze's choice of the hierarchical, adaptive and compacting
allocators: the patterns only a site's own trace shows (frees on another
thread, a pattern that changes over the run, small blocks freed in no
order while a share lives on), against ground truth -- synthetic traces
whose patterns are known by construction, hand-made sites at and past each
threshold, and real traces written by the recorder in this process -- and
the size classes they become."""

import queue
import random
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pgo import bundle as fmt
from pgo import config
from pgo.analysis import classify as cls
from pgo.analysis import features
from pgo.analysis.features import Site, extract
from pgo.analysis.lifetimes import Blocks, pair
from pgo.analysis.optimizer import MIN_BLOCKS, ProfileGuidedOptimizer, _new_classes
from pgo.analysis.synthetic import INTENDED, KINDS, make_bundle
from pgo.bundle import EVENT_DTYPE
from pgo.config import COMPACTING_MAX_BYTES, HIERARCHICAL_MAX_BYTES, Pattern, SizeClassRule

EXAMPLES = Path(__file__).resolve().parents[2] / "profiles" / "examples"
NEW = ("cross-thread-frees", "phase-changing", "fragmenting-survivors")
OLD = tuple(k for k in KINDS if k not in NEW)
ALLOCATOR = {"cross-thread-frees": "hierarchical", "phase-changing": "adaptive",
             "fragmenting-survivors": "compacting"}


# -- synthetic ground truth ----------------------------------------------------------

@pytest.mark.parametrize("kind", NEW)
@pytest.mark.parametrize("seed", range(3))
def test_each_new_kind_alone_gets_its_allocator_and_one_size_class(kind, seed):
    b, _ = make_bundle({kind: 3}, seed=seed)
    plan = ProfileGuidedOptimizer(b).analyze()
    assert [(d.pattern, d.strategy) for d in plan.decisions] == [(kind, INTENDED[kind])] * 3
    assert all(0.5 <= d.confidence <= 1.0 for d in plan.decisions)
    [rule] = plan.config.size_classes
    assert rule.allocator == ALLOCATOR[kind] and rule.pattern == kind and not plan.config.sites
    # The class serves the sites' blocks (numpy's own cache keeps those
    # under 1 KiB, but for compacting), within what the allocator serves.
    lo = min(d.site.min_size for d in plan.decisions)
    hi = max(d.site.max_size for d in plan.decisions)
    assert rule.min_bytes == (lo if kind == "fragmenting-survivors" else max(lo, 1024))
    assert hi <= rule.max_bytes < hi + 16
    if kind == "cross-thread-frees":
        assert rule.max_bytes <= HIERARCHICAL_MAX_BYTES and rule.settings == ()
    elif kind == "fragmenting-survivors":
        assert rule.max_bytes <= COMPACTING_MAX_BYTES and rule.settings == ()
    else:
        window = dict(rule.settings)["window"]
        assert 64 <= window <= 4096 and window & (window - 1) == 0
    top = max(plan.decisions, key=lambda d: (d.site.bytes, d.site.name))
    assert rule.reason.startswith("3 site(s)") and f"largest: {top.site.name}: " in rule.reason
    text = config.dumps(plan.config)
    assert config.dumps(config.loads(text)) == text


@pytest.mark.parametrize("seed", range(5))
def test_every_kind_mixed_with_the_others_gets_its_pattern_and_strategy(seed):
    b, labels = make_bundle({k: 6 for k in KINDS}, seed=seed)
    decisions, _ = cls.classify(extract(b))
    for d in decisions:
        kind = labels[d.site.site_id]
        assert (d.pattern, d.strategy) == (kind, INTENDED[kind]), d.reason


@pytest.mark.parametrize("seed", range(5))
def test_steady_sites_never_look_phased_threaded_or_fragmented(seed):
    # Three times the blocks of the default, so that most churn, scoped
    # and LIFO sites have phases to compare.
    b, labels = make_bundle({k: 4 for k in OLD}, seed=seed, reps=60)
    sites = extract(b)
    assert sum(bool(s.phases) for s in sites) >= 8
    for d in cls.classify(sites)[0]:
        assert d.pattern not in (Pattern.PHASED, Pattern.CROSS_THREAD, Pattern.FRAGMENTING)
        assert d.strategy == INTENDED[labels[d.site.site_id]]


def test_mixed_kinds_make_size_classes_that_do_not_overlap():
    seen = set()
    for seed in range(4):
        b, _ = make_bundle({k: 3 for k in KINDS if k != "large-repeated"}, seed=seed)
        plan = ProfileGuidedOptimizer(b).analyze()
        rules = plan.config.size_classes
        for a, c in zip(rules, rules[1:]):
            assert a.max_bytes is not None and a.max_bytes < c.min_bytes
        seen |= {r.allocator for r in rules}
        config.loads(config.dumps(plan.config))
    assert {"compacting", "adaptive"} <= seen


# -- the rules at their thresholds, on hand-made sites --------------------------------

def _site(**kw):
    """A short-lived fixed-size churn site of 2 KiB blocks (a slab's), one
    thread, 10,000 blocks in a 10 s run."""
    base = dict(domain="numpy", site_id=2, name="m:f:3", function="m:f", count=10_000.0,
                bytes=2048e4, mean_size=2048.0, min_size=2048, max_size=2048, size_cv=0.0,
                modal_size=2048, modal_share=1.0, life_median_s=1e-5, life_p90_s=1e-4,
                life_allocs_median=4.0, alive_end=0.0, lifo=0.0, together=0.0, threads=1,
                cpu_share=0.0, gc_survival=0.0, run_s=10.0, fifo=1.0, free_threads=1,
                peak_live_bytes=65536.0, after_peak_live_bytes=60000.0)
    base.update(kw)
    return Site(**base)


def _decide(site):
    [d] = cls.classify([site])[0]
    return d


def test_cross_thread_frees_move_a_one_mutex_site_to_the_hierarchical_allocator():
    assert _decide(_site()).strategy == "slab"
    assert _decide(_site(cross_thread=0.2, free_threads=2)).strategy == "slab"
    d = _decide(_site(cross_thread=0.25, threads=2, free_threads=2))
    assert (d.pattern, d.strategy) == (Pattern.CROSS_THREAD, "hierarchical")
    assert d.reason.startswith("25% of its frees on another thread") and "as a whole: " in d.reason
    # Scoped temporaries (a function's cache), up to 256 KiB and no more.
    scoped = dict(modal_share=0.3, min_size=8192, max_size=HIERARCHICAL_MAX_BYTES,
                  mean_size=65536.0, cross_thread=1.0)
    assert _decide(_site(**scoped)).strategy == "hierarchical"
    assert _decide(_site(**dict(scoped, max_size=HIERARCHICAL_MAX_BYTES + 1))).strategy == "cache"
    # A site the system keeps stays there, threads or not: long-lived,
    # irregular, under numpy's small-block cache, a function's cache of
    # blocks under a page.
    for system in (dict(alive_end=0.9), dict(life_median_s=5.0, life_allocs_median=1e5),
                   dict(min_size=512, max_size=512, modal_size=512),
                   dict(modal_share=0.3, min_size=1024, max_size=3000)):
        d = _decide(_site(cross_thread=1.0, free_threads=2, **system))
        assert d.strategy == "system" and d.pattern != Pattern.CROSS_THREAD, system


def _fragmented(**kw):
    """A site the system keeps (irregular lives) whose blocks went in no
    order after its peak, a fifth of them living on."""
    base = dict(life_median_s=0.5, life_allocs_median=5000.0, lifo=0.1, fifo=0.05,
                modal_share=0.4, min_size=1024, max_size=8192, peak_live_bytes=40e6,
                after_peak_live_bytes=10e6, end_live_bytes=8e6, peak_survivors=0.2,
                alive_end=0.2)
    base.update(kw)
    return _site(**base)


def test_fragmentation_with_survivors_gets_the_compacting_allocator():
    d = _decide(_fragmented())
    assert (d.pattern, d.strategy) == (Pattern.FRAGMENTING, "compacting")
    assert "38.1 MiB live at the peak, 9.54 MiB (25%) on average" in d.reason
    assert "20% of the peak's blocks that outlive it" in d.reason
    assert "10% LIFO, 5% FIFO" in d.reason
    # At each threshold, and past it.
    assert _decide(_fragmented(max_size=COMPACTING_MAX_BYTES)).strategy == "compacting"
    assert _decide(_fragmented(after_peak_live_bytes=20e6)).strategy == "compacting"
    assert _decide(_fragmented(peak_survivors=0.05)).strategy == "compacting"
    for not_it in (dict(max_size=COMPACTING_MAX_BYTES + 1),    # too big to mesh
                   dict(after_peak_live_bytes=21e6),           # holds most of its peak
                   dict(peak_survivors=0.04),                  # too few survivors to pin pages
                   dict(lifo=0.5), dict(fifo=0.6),             # frees empty pages in order
                   dict(peak_live_bytes=1.5e6, after_peak_live_bytes=0.6e6)):   # under a MiB
        d = _decide(_fragmented(**not_it))
        assert (d.pattern, d.strategy) != (Pattern.FRAGMENTING, "compacting"), not_it
    # Memory, not time: never instead of an allocator chosen for speed.
    churn = _decide(_site(lifo=0.1, fifo=0.1, peak_live_bytes=40e6, after_peak_live_bytes=1e6,
                          peak_survivors=0.5))
    assert churn.strategy == "slab"


def _phased(*parts):
    """A site whose phases are the given sites (their count and pattern)."""
    ps = tuple(replace(p, part=i + 1) for i, p in enumerate(parts))
    return _site(modal_share=0.5, min_size=2048, max_size=524288, mean_size=100_000.0,
                 count=sum(p.count for p in ps), phases=ps)


CHURN = _site(count=600.0)                                          # slab
SCOPED = _site(count=600.0, modal_share=0.3, min_size=16384, max_size=524288,
               mean_size=200_000.0)                                 # a function's cache
KEPT = _site(count=600.0, alive_end=0.9)                            # system


def test_a_site_whose_pattern_changes_gets_the_adaptive_allocator():
    d = _decide(_phased(CHURN, CHURN, SCOPED, SCOPED))
    assert (d.pattern, d.strategy) == (Pattern.PHASED, "adaptive")
    assert ("parts 1, 2: fixed-size-churn -> slab (1,200 blocks); parts 3, 4: "
            "scoped-temporaries -> cache (1,200 blocks)") in d.reason
    # Stretches the system keeps neither make a phase nor split one.
    assert _decide(_phased(KEPT, CHURN, KEPT, SCOPED)).strategy == "adaptive"
    assert _decide(_phased(CHURN, KEPT, CHURN, KEPT)).strategy != "adaptive"
    # A steady site, and one that goes back and forth (noise at a threshold).
    assert _decide(_phased(CHURN, CHURN, CHURN, CHURN)).pattern != Pattern.PHASED
    assert _decide(_phased(CHURN, SCOPED, CHURN, SCOPED)).strategy != "adaptive"
    # A phase needs four of the allocator's windows; a stretch under one
    # window is not judged.
    small = replace(SCOPED, count=float(features.PHASE_MIN_BLOCKS - 1))
    assert _decide(_phased(CHURN, CHURN, CHURN, small)).strategy != "adaptive"
    enough = replace(SCOPED, count=float(features.PHASE_MIN_BLOCKS))
    assert _decide(_phased(CHURN, CHURN, CHURN, enough)).strategy == "adaptive"
    tiny = replace(SCOPED, count=float(features.PHASE_WINDOW - 1))
    assert _decide(_phased(CHURN, CHURN, tiny, tiny, tiny, tiny, tiny)).strategy != "adaptive"


def test_phases_are_judged_on_one_sampling_level_of_the_trace():
    # scoped_temps' bundle: 20,000 events exact, then a quarter of the
    # addresses (weight 4).  filter_tile's gradient's blocks, exact, look
    # like scoped temporaries; sampled, LIFO scratch (the order features
    # of the addresses followed): split in time they would seem to change
    # pattern.  Its parts hold the blocks of one level only: most of its
    # recorded ones are sampled.
    if not (EXAMPLES / "scoped_temps").is_dir():
        pytest.skip("example bundles not next to the tests")
    b = fmt.load(EXAMPLES / "scoped_temps")
    collected = features.collect(b)
    blocks = collected[0]["numpy"].blocks
    [s] = [s for s in extract(b, collected)
           if s.domain == "numpy" and s.name == "__main__:filter_tile:18"]
    mine = blocks.site == s.site_id
    assert (blocks.weight[mine] == 1).sum() < (blocks.weight[mine] == 4).sum()
    assert sum(p.count for p in s.phases) == 4 * (blocks.weight[mine] == 4).sum() < s.count
    assert {cls.rule(p)[0] for p in s.phases} == {Pattern.LIFO_SCRATCH}
    assert cls.phased(s) is None


# -- the features behind them -------------------------------------------------------

def _events(rows):
    """(kind, addr, size, site, tid[, old]) rows -> a numpy trace, 1 µs apart."""
    ev = np.zeros(len(rows), EVENT_DTYPE)
    for i, r in enumerate(rows):
        ev[i]["kind"], ev[i]["addr"], ev[i]["size"], ev[i]["site"], ev[i]["tid"] = r[:5]
        if len(r) > 5:
            ev[i]["old"] = r[5]
        ev[i]["t_ns"] = 1000 * (i + 1)
    return ev


def test_blocks_know_the_thread_that_freed_them():
    ALLOC, REALLOC, FREE = 1, 3, 4
    b = pair(_events([(ALLOC, 0x1000, 64, 2, 5), (ALLOC, 0x2000, 64, 2, 5),
                      (FREE, 0x1000, 0, 0, 7),                    # freed by another thread
                      (REALLOC, 0x3000, 128, 2, 9, 0x2000),       # moved away on thread 9
                      (ALLOC, 0x4000, 64, 2, 5)]), 0)              # never freed
    assert b.tid.tolist() == [5, 5, 9, 5]
    assert b.free_tid.tolist() == [7, 9, 9, 5]


def test_live_statistics_take_each_run_of_a_merged_bundle_on_its_own():
    # Site 2: run 1 keeps 2 of its 4 blocks to its end; run 2 makes 4
    # more and frees them.  Run 1's survivors are not live through run 2.
    def blocks(birth, death, run_end):
        n = len(birth)
        death = np.array(death, float)
        return Blocks(site=np.full(n, 2, np.uint32), size=np.full(n, 100, np.uint64),
                      birth=np.array(birth, float), death=death, tid=np.ones(n, np.uint32),
                      weight=np.ones(n), end=run_end, birth_ev=np.arange(n, dtype=np.int64),
                      death_ev=np.where(np.isnan(death), -1, np.arange(n) + 100),
                      censored=np.zeros(n, bool), censor_t=np.full(n, np.nan),
                      by_realloc=np.zeros(n, bool), free_tid=np.ones(n, np.uint32))
    one = blocks([0, 0, 0, 0], [1, 1, np.nan, np.nan], 4.0)
    two = blocks([5, 5, 5, 5], [6, 6, 6, 8], 8.0)
    both = features._concat([one, two])
    run_of = np.array([0] * 4 + [1] * 4)
    G = features._Groups(both.site)
    ls = features._live_stats(both, G, (run_of, np.array([4.0, 8.0])), 8.0)
    # Peaks 400 and 400; at the ends 200 (run 1) and 0; from the peak on,
    # run 1 holds 400 for 1 s then 200 for 3 s, run 2 400 for 1 s, 100 for
    # 2 s, then nothing: time-averages 250 and 200.
    assert ls.peak.tolist() == [800.0] and ls.end.tolist() == [200.0]
    assert ls.after_peak.tolist() == pytest.approx([450.0])
    # Of the 8 blocks live at the peaks, 2 are still live halfway to the
    # run's end in run 1 (at 2 s), 1 in run 2 (at 6.5 s).
    assert ls.at_peak.tolist() == [8.0] and ls.survivors.tolist() == [3.0]
    single = features._live_stats(one, features._Groups(one.site), None, 4.0)
    assert single.peak.tolist() == [400.0] and single.after_peak.tolist() == [250.0]
    # A run with no end given ends at its last event (here run 1 at 1 s).
    unknown = features._live_stats(both, G, (run_of, np.zeros(0)), 8.0)
    assert unknown.after_peak.tolist() == pytest.approx([400.0 + 200.0])


# -- size classes that may not overlap ------------------------------------------------

def _decision(strategy, pattern, lo, hi, count=5000.0, name="m:f:3"):
    s = _site(name=name, min_size=lo, max_size=hi, count=count)
    return cls.Decision(site=s, cluster=0, pattern=pattern, strategy=strategy, confidence=0.9,
                        reason=f"{pattern} here")


def test_new_size_classes_take_the_sizes_the_others_leave():
    slab = SizeClassRule(1, 4096, "slab", (("block_size", 4096),))
    hier = _decision("hierarchical", Pattern.CROSS_THREAD, 2048, 65536)
    left_out = []
    [rule] = _new_classes([hier], [slab], left_out)
    assert (rule.min_bytes, rule.max_bytes, rule.allocator) == (4097, 65536, "hierarchical")
    assert "(of 2 KiB-64 KiB; the rest: the slab class, 1 B-4 KiB)" in rule.reason
    # Compacting before adaptive: it fixes one thing; the adaptive class
    # takes the widest range left around it.
    frag = _decision("compacting", Pattern.FRAGMENTING, 2048, 16384)
    phase = _decision("adaptive", Pattern.PHASED, 3072, 524288, count=20_000.0)
    rules = _new_classes([phase, frag], [], left_out)
    assert [(r.allocator, r.min_bytes, r.max_bytes) for r in rules] == \
        [("compacting", 2048, 16384), ("adaptive", 16385, 524288)]
    # Nothing left: left out, with why.
    assert _new_classes([hier], [SizeClassRule(1, None, "cache")], left_out) == []
    assert "no hierarchical class for the 1 site(s) of cross-thread-frees" in left_out[-1]
    assert "the cache class, 1 B-up" in left_out[-1]
    # Too few blocks to matter.
    assert _new_classes([_decision("hierarchical", Pattern.CROSS_THREAD, 2048, 4096,
                                   count=MIN_BLOCKS - 1)], [], []) == []


# -- real traces, written by the recorder in this process ------------------------------

@pytest.fixture
def record(tmp_path):
    from pgo._core import recorder
    from pgo.profiling.session import excluded_prefixes

    def run(work):
        path = tmp_path / "events.trace"
        recorder.start(str(path), exclude=excluded_prefixes())
        t0 = time.perf_counter()
        try:
            work()
        finally:
            result = recorder.stop()
        trace = fmt.read_events(path)
        manifest = fmt.manifest_document(
            complete=True, command=["test"], cwd="/", python="3", pid=1,
            started_at="2026-01-01T00:00:00+00:00", duration_s=time.perf_counter() - t0,
            collectors={"events": {"status": "ok"}, "objects": {"status": "off"}},
            warnings=[], exit={"code": 0, "signal": None})
        b = fmt.in_memory(manifest, trace.events, t0_ns=trace.t0_ns,
                          event_sites=fmt.event_sites_document(result["sites"]))
        return ProfileGuidedOptimizer(b).analyze()
    yield run
    if recorder.running():
        recorder.stop()


def _producer_consumer():
    q = queue.Queue(maxsize=16)

    def produce():
        for i in range(6000):
            q.put(np.empty(512 if i % 3 else 1024))       # 4 and 8 KiB
        q.put(None)

    def consume():
        while q.get() is not None:                         # dropped on this thread
            pass

    threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _table_pruned():
    rng = random.Random(1)
    table = [np.zeros(rng.choice([128, 256, 512, 1024])) for _ in range(8000)]   # 1-8 KiB
    doomed = list(range(len(table)))
    rng.shuffle(doomed)
    for i in doomed[: len(doomed) * 4 // 5]:
        table[i] = None
    time.sleep(0.2)                  # the survivors in use
    del table


def _make(n):
    return np.empty(n)


def _churn_then_scoped():
    window = []
    for _ in range(3000):
        window.append(_make(256))                           # 2 KiB, 32 alive
        if len(window) > 32:
            window.pop(0)
    window.clear()
    for _ in range(400):
        tmp = [_make(4096 * (1 + j % 8)) for j in range(6)]   # 32-256 KiB, freed together
        del tmp


@pytest.mark.parametrize("work, kind", [(_producer_consumer, "cross-thread-frees"),
                                        (_table_pruned, "fragmenting-survivors"),
                                        (_churn_then_scoped, "phase-changing")])
def test_real_traces_get_the_allocator_their_pattern_calls_for(record, work, kind):
    plan = record(work)
    numpy = [d for d in plan.decisions if d.site.domain == "numpy" and d.site.count >= 1000]
    assert [(d.pattern, d.strategy) for d in numpy] == [(kind, INTENDED[kind])]
    assert [(r.allocator, r.pattern) for r in plan.config.size_classes] == \
        [(ALLOCATOR[kind], kind)]
    config.loads(config.dumps(plan.config))
