"""The cache replay that chooses a CacheAllocator's headroom: its model
is the C cache (size classes, reuse and eviction order, the headroom
bound), checked against a real CacheAllocator driven by the same traffic."""

import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import pgo
from pgo.analysis import cachesim


@given(st.integers(1, 1 << 40))
def test_class_size_is_the_caches(n):
    assert cachesim.class_size(n) == pgo.CacheAllocator.class_size(n)


def test_the_burst_scan_is_the_caches():
    from pgo._core import cache

    assert cachesim.BURST_SCAN == cache.BURST_SCAN_BLOCKS
    assert cachesim.BORROW_CLASSES == cache.BORROW_CLASSES_UP


def traffic(seed, n=300, sizes=(1 << 20, 3 << 20, 8 << 20, 5 << 19)):
    """Blocks as (size, birth event, death event): phases of one size at
    a time, a few blocks live at once, some never freed."""
    rng = random.Random(seed)
    blocks, live, ev = [], [], 0
    for _ in range(n):
        if live and (len(live) > 4 or rng.random() < 0.45):
            i = live.pop(rng.randrange(len(live)))
            blocks[i][2] = ev
        else:
            size = sizes[(len(blocks) // 7) % len(sizes)] + rng.randrange(0, 4096)
            blocks.append([size, ev, -1])
            live.append(len(blocks) - 1)
        ev += 1
    for i in live[: len(live) // 2]:               # the rest stay alive
        blocks[i][2] = ev
        ev += 1
    a = np.array(blocks, np.int64)
    return a[:, 0], a[:, 1], a[:, 2]


def run_real(sizes, births, deaths, headroom, max_cached=4 << 30, window=0):
    c = pgo.CacheAllocator(max_cached, headroom_percent=headroom, hugepages=False,
                           reuse_window=window)
    # A birth and a death at one index are a realloc: the new block first.
    events = sorted([(b, 0, i) for i, b in enumerate(births)]
                    + [(d, 1, i) for i, d in enumerate(deaths) if d >= 0])
    held, live = 0, {}
    for _, is_death, i in events:
        if not is_death:
            live[i] = c.alloc(int(sizes[i]))
        else:
            c.free(live.pop(i))
        s = c.stats()
        held = max(held, s["in_use"] + s["cached_bytes"])
    s = c.stats()
    for b in live.values():
        c.free(b)
    return s["misses"], s["peak"], held


def reallocs(sizes, births, deaths):
    # Every fifth block that dies is replaced at the same event by a new
    # one (numpy's realloc: the new block is made before the old one goes).
    sizes, births, deaths = list(sizes), list(births), list(deaths)
    for i in range(0, len(sizes), 5):
        if deaths[i] >= 0:
            sizes.append(sizes[i] + 4096)
            births.append(deaths[i])
            deaths.append(-1)
    return np.array(sizes), np.array(births), np.array(deaths)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("headroom", [0, 10, 50, None])
@pytest.mark.parametrize("max_cached", [4 << 30, 5 << 20])
@pytest.mark.parametrize("realloc", [False, True])
@pytest.mark.parametrize("window", [0, 6])
def test_the_replay_counts_what_the_real_cache_does(seed, headroom, max_cached, realloc, window):
    sizes, births, deaths = traffic(seed)
    if realloc:
        sizes, births, deaths = reallocs(sizes, births, deaths)
    r = cachesim.replay(sizes, births, deaths, headroom, max_cached=max_cached, window=window)
    misses, peak, held = run_real(sizes, births, deaths, headroom, max_cached, window)
    assert (r.misses, r.peak_live, r.peak_held) == (misses, peak, held)
    assert r.allocations == len(sizes)


def bursts(seed, n=400, sizes=(1 << 20, 3 << 20, 5 << 19)):
    """Blocks made a few at a time, of mixed classes, and freed together
    in a shuffled order (a function's temporaries when it returns), some
    bursts with an allocation in the middle of their frees."""
    rng = random.Random(seed)
    blocks, ev = [], 0
    while len(blocks) < n:
        made = []
        for _ in range(rng.randint(1, 6)):
            blocks.append([rng.choice(sizes) + rng.randrange(0, 4096), ev, -1])
            made.append(len(blocks) - 1)
            ev += 1
        rng.shuffle(made)
        for j, i in enumerate(made):
            if j == 2 and rng.random() < 0.3:
                blocks.append([rng.choice(sizes), ev, ev + 1])   # one made in between
                ev += 2
            blocks[i][2] = ev
            ev += 1
    a = np.array(blocks, np.int64)
    return a[:, 0], a[:, 1], a[:, 2]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("headroom", [0, 25, None])
@pytest.mark.parametrize("max_cached", [4 << 30, 6 << 20])
def test_the_replay_follows_the_caches_order_within_a_burst(seed, headroom, max_cached):
    # Which block of a burst is taken decides which ones the bound evicts
    # later when the burst mixes classes: the model's pick must be the
    # cache's.
    sizes, births, deaths = bursts(seed)
    r = cachesim.replay(sizes, births, deaths, headroom, max_cached=max_cached)
    assert (r.misses, r.peak_live, r.peak_held) == run_real(sizes, births, deaths, headroom,
                                                             max_cached)


def test_a_steady_loop_gets_the_least_headroom():
    # The same three temporaries, again and again: nothing to give back.
    sizes, births, deaths = [], [], []
    ev = 0
    for _ in range(50):
        for k in range(3):
            sizes.append((4 + k) << 20)
            births.append(ev + k)
            deaths.append(ev + 3 + k)
        ev += 6
    chosen, free = cachesim.choose(np.array(sizes), np.array(births), np.array(deaths))
    assert chosen.headroom == cachesim.HEADROOMS[0]
    assert chosen.misses == free.misses == 3 and chosen.extra_share == 0.0


def tiles(small, large, n=40):
    # Three tiles of `small` bytes, then one of `large`, each with four
    # temporaries.
    sizes, births, deaths = [], [], []
    ev = 0
    for k in range(n):
        size = large if k % 4 == 0 else small
        for j in range(4):
            sizes.append(size)
            births.append(ev + j)
            deaths.append(ev + 4 + j)
        ev += 8
    return np.array(sizes), np.array(births), np.array(deaths)


def test_alternating_phases_get_the_headroom_that_keeps_both():
    # 1 MiB tiles and 8 MiB ones (too large to serve a 1 MiB request): a
    # 10% headroom gives the 8 MiB blocks back before they come again.
    s, b, d = tiles(1 << 20, 8 << 20)
    tight = cachesim.replay(s, b, d, 10)
    chosen, free = cachesim.choose(s, b, d)
    assert tight.misses > free.misses + 0.02 * free.allocations
    assert chosen.headroom > 10 and chosen.misses <= free.misses + 0.02 * free.allocations
    assert chosen.extra_share <= chosen.headroom / 100


def test_a_smaller_phase_takes_the_blocks_of_a_larger_one():
    # 2 MiB tiles after an 8 MiB one: their requests take the cached 8 MiB
    # blocks (at most 4x larger), so one set of blocks serves both sizes and
    # even a 10% headroom keeps them all: only the first tile misses.
    s, b, d = tiles(2 << 20, 8 << 20)
    tight = cachesim.replay(s, b, d, 10)
    assert tight.misses == 4
    assert tight.peak_held == tight.peak_live == 4 * (8 << 20)
    # Starting with the small tiles, the 8 MiB tile cannot use their blocks.
    s, b, d = tiles(8 << 20, 2 << 20)
    assert cachesim.replay(s, b, d, None).misses == 8


def test_every_run_of_a_merged_bundle_starts_empty():
    sizes = np.array([2 << 20] * 4)
    births = np.array([0, 2, 10, 12])
    deaths = np.array([1, 3, 11, 13])
    one = cachesim.replay(sizes, births, deaths, None)
    two = cachesim.replay(sizes, births, deaths, None, run_starts=np.array([0, 2]))
    assert (one.misses, two.misses) == (1, 2)


def test_a_size_that_never_comes_again_is_given_back_by_the_window():
    # One 48 MiB temporary at the start, then a loop of 2 MiB temporaries:
    # with no window the 48 MiB block stays cached to the end (the process
    # pays for it while the rest grows); the window gives it back and the
    # loop keeps every hit.
    sizes, births, deaths = [48 << 20], [0], [1]
    ev = 2
    for _ in range(300):
        sizes.append(2 << 20)
        births.append(ev)
        deaths.append(ev + 1)
        ev += 2
    s, b, d = np.array(sizes), np.array(births), np.array(deaths)
    chosen, free = cachesim.choose(s, b, d)
    assert chosen.window >= cachesim.MIN_WINDOW and chosen.misses == free.misses == 2
    c = pgo.CacheAllocator(4 << 30, headroom_percent=chosen.headroom, hugepages=False,
                           reuse_window=chosen.window)
    big = c.alloc(48 << 20)
    c.free(big)
    for _ in range(chosen.window + 2):
        c.free(c.alloc(2 << 20))
    st = c.stats()
    assert st["cached_bytes"] == 2 << 20 and st["evictions"] == 1 and st["reuse_window"] == chosen.window
