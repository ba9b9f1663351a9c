"""Pairing allocation events into blocks (pgo.analysis.lifetimes) and the
summary's growth test, on synthetic traces whose answers are known."""

import numpy as np

from pgo.analysis.lifetimes import pair
from pgo.analysis.summary import is_growing
from pgo.bundle import ALLOC, EVENT_DTYPE, FREE, REALLOC, pass_level


def trace(rows):
    ev = np.zeros(len(rows), EVENT_DTYPE)
    for i, (t, kind, addr, size, site, old, level) in enumerate(rows):
        ev[i]["t_ns"] = t
        ev[i]["kind"] = kind
        ev[i]["addr"] = addr
        ev[i]["size"] = size
        ev[i]["site"] = site
        ev[i]["old"] = old
        ev[i]["level"] = level
    return ev


def test_births_pair_with_the_next_free_of_the_same_address():
    ev = trace([
        (1000, ALLOC, 0xA0, 64, 2, 0, 0),
        (2000, ALLOC, 0xB0, 32, 3, 0, 0),
        (3000, FREE, 0xA0, 64, 0, 0, 0),
        (4000, ALLOC, 0xA0, 128, 4, 0, 0),     # address reused
        (9000, FREE, 0xA0, 128, 0, 0, 0),
    ])
    b = pair(ev, 0)
    assert b.site.tolist() == [2, 3, 4]
    assert np.allclose(b.birth, [1e-6, 2e-6, 4e-6])
    assert np.allclose(b.death[[0, 2]], [3e-6, 9e-6])
    assert np.isnan(b.death[1])                 # alive at the end
    assert b.size.tolist() == [64, 32, 128]
    assert b.end == 9e-6


def test_realloc_ends_one_block_and_starts_another_with_its_site():
    ev = trace([
        (1, ALLOC, 0xA0, 64, 5, 0, 0),
        (2, REALLOC, 0xC0, 256, 0, 0xA0, 0),    # moved; no site (object sampler)
        (3, REALLOC, 0xC0, 512, 0, 0xC0, 0),    # grown in place
        (4, FREE, 0xC0, 0, 0, 0, 0),
    ])
    b = pair(ev, 0)
    assert b.size.tolist() == [64, 256, 512]
    assert b.site.tolist() == [5, 5, 5]
    assert np.allclose(b.death * 1e9, [2, 3, 4])


def test_weights_undo_sampling():
    ev = trace([(1, ALLOC, 0x10, 100, 2, 0, 0), (2, ALLOC, 0x20, 100, 2, 0, 2)])
    assert pair(ev, 0).weight.tolist() == [1.0, 16.0]
    big = trace([(1, ALLOC, 0x10, 1 << 20, 2, 0, 0), (2, ALLOC, 0x20, 64, 2, 0, 0)])
    w = pair(big, 0, sample_bytes=32768).weight
    assert abs(w[0] - 1.0) < 1e-9                       # always sampled
    assert abs(w[1] - 1 / (1 - np.exp(-64 / 32768))) < 1e-6


def test_a_sampled_objects_realloc_stands_for_what_it_continues():
    # The object sampler sampled a 64-byte block (weight 1/p(64)); realloc
    # to 0 bytes and back to 32 continues it: the same number of blocks,
    # not 1/p(0) = 10**12 of them (which made a GC plan's peak heap 10**12).
    ev = trace([
        (1, ALLOC, 0xA0, 64, 5, 0, 0),
        (2, REALLOC, 0xB0, 0, 0, 0xA0, 0),
        (3, REALLOC, 0xC0, 32, 0, 0xB0, 0),
        (4, FREE, 0xC0, 0, 0, 0, 0),
    ])
    w = pair(ev, 0, sample_bytes=32768).weight
    assert np.allclose(w, 1 / (1 - np.exp(-64 / 32768)))


def test_empty_trace():
    b = pair(np.zeros(0, EVENT_DTYPE), 0)
    assert len(b) == 0 and b.end == 0.0


def test_growth_detector():
    steady = np.linspace(0, 100 << 20, 16)
    assert is_growing(steady, 100 << 20)
    plateau = np.array([0] + [50 << 20] * 15, dtype=float)     # start-up, then flat
    assert not is_growing(plateau, 50 << 20)
    released = np.concatenate([np.linspace(0, 100 << 20, 12), [0, 0, 0, 0]])
    assert not is_growing(released, 1)
    tiny = np.linspace(0, 1000, 16)                             # grows, but 1 KB
    assert not is_growing(tiny, 1 << 30)


def test_blocks_the_budget_stopped_following_are_censored_not_alive():
    dropped = next(a for a in range(0x1000, 0x100000, 16) if pass_level(a) == 0)
    kept = next(a for a in range(0x1000, 0x100000, 16) if pass_level(a) >= 2)
    ev = trace([
        (1000, ALLOC, dropped, 64, 2, 0, 0),     # its free would come after level 1 began
        (2000, ALLOC, kept, 64, 2, 0, 0),        # followed at every level: really alive
        (5000, ALLOC, kept + 4096 * 16, 64, 3, 0, 1),   # the first level-1 event
        (9000, FREE, kept + 4096 * 16, 64, 0, 0, 1),
    ])
    if pass_level(kept + 4096 * 16) < 1:
        ev[2]["addr"] = ev[3]["addr"] = next(
            a for a in range(0x200000, 0x400000, 16) if pass_level(a) >= 1)
    b = pair(ev, 0)
    assert b.censored.tolist() == [True, False, False]
    assert abs(b.censor_t[0] - 5e-6) < 1e-12
    assert np.isnan(b.censor_t[1]) and np.isnan(b.death[1])
