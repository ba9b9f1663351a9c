"""A CacheAllocator's headroom, chosen by replaying the profile's blocks
through a model of the cache.

The cache keeps live + cached bytes within (100 + headroom)% of the most
bytes ever live in it (``CacheAllocator(headroom_percent=...)``).  Too
little headroom and a program whose phases use different sizes (a tile
pipeline alternating 2 and 8 MiB tiles) gives back the blocks of one phase
just before they are asked for again: every phase starts with misses and
page faults.  Too much and the cache holds memory the run never reuses.

The replay answers it from the profile: the blocks the cache would serve,
in the order the program allocated and freed them, through the same rules
as the C cache (size classes, most recently freed first within a class
but a burst of frees in the order its blocks were made, a cached block
of one of the next classes when a class has none, the least recently
freed evicted first); for each candidate headroom, the
misses, and the most bytes held (live + cached) against the most live.
The choice is the smallest headroom whose hits come within HIT_SLACK of
an unbounded cache's, and its cost is the measured peak held over peak
live.  Both are ratios of the traffic's own shape (which sizes follow
which), so they carry over to a run on a larger input, where arrays (and
the cache's peak) grow together.
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass

import numpy as np

from pgo._sizes import SMALL_BLOCK_BYTES

HEADROOMS = (10, 25, 50, 100, 200, 400)   # percent, smallest first
HIT_SLACK = 0.02                          # of all allocations: hits given up at most
MIN_WINDOW = 64                           # allocations: the shortest reuse window chosen
MAX_BLOCKS = 500_000                      # replayed at most (the first ones; a profile
                                          # repeats its phases long before that)
BURST_SCAN = 8                            # the cache's: blocks of a burst of frees looked at
BORROW_CLASSES = 16                       # the cache's: larger classes a miss may take from


def class_size(n: int) -> int:
    """CacheAllocator.class_size (pinned equal in a test): a page, then
    eight classes per power of two."""
    if n <= SMALL_BLOCK_BYTES:
        return SMALL_BLOCK_BYTES
    m = n - 1
    shift = m.bit_length() - 1 - 3
    return ((m >> shift) + 1) << shift


@dataclass(frozen=True)
class Replay:
    headroom: int | None        # percent; None: no bound
    allocations: int
    misses: int
    peak_live: int              # bytes, the most live at once
    peak_held: int              # bytes, the most live + cached at once
    window: int = 0             # the reuse window replayed (0: none)
    distances: tuple[int, ...] = ()   # per hit: the cache's allocations since its free

    @property
    def hit_rate(self) -> float:
        return 1.0 - self.misses / self.allocations if self.allocations else 0.0

    @property
    def extra_share(self) -> float:
        """What the cache adds to the peak footprint of what it serves."""
        return self.peak_held / self.peak_live - 1.0 if self.peak_live else 0.0


def replay(sizes: np.ndarray, births: np.ndarray, deaths: np.ndarray,
           headroom: int | None, *, run_starts: np.ndarray | None = None,
           max_cached: int = 1 << 62, window: int = 0) -> Replay:
    """Replay blocks (requested sizes, birth and death event indices; a
    death < 0: never freed) through the cache model.  ``run_starts``: the
    index of each run's first block (a merged bundle): every run starts
    with an empty cache, as every process does.  ``max_cached``: the
    cache's max_cached_bytes; ``window``: its reuse_window."""
    n = min(len(sizes), MAX_BLOCKS)
    starts = [int(s) for s in (run_starts if run_starts is not None else [0]) if s < n] or [0]
    total = Replay(headroom, 0, 0, 0, 0, window)
    for a, b in zip(starts, [*starts[1:], n]):
        r = _replay_run(sizes[a:b], births[a:b], deaths[a:b], headroom, max_cached, window)
        total = Replay(headroom, total.allocations + r.allocations, total.misses + r.misses,
                       max(total.peak_live, r.peak_live), max(total.peak_held, r.peak_held),
                       window, total.distances + r.distances)
    return total


def _replay_run(sizes: np.ndarray, births: np.ndarray, deaths: np.ndarray,
                headroom: int | None, max_cached: int, window: int) -> Replay:
    cls = [class_size(int(s)) for s in sizes]
    # Births and deaths in event order, (event, 0: birth / 1: death, block).
    # A realloc is one event that is both: the new block's birth and the
    # old one's death, in that order (numpy's handler allocates, copies,
    # then frees).
    order = sorted([(int(e), 0, i) for i, e in enumerate(births)]
                   + [(int(e), 1, i) for i, e in enumerate(deaths) if e >= 0])
    live = peak = held = cached = misses = allocs = 0
    by_class: dict[int, deque[int]] = {}     # cached tokens per class, oldest first
    recency: deque[tuple[int, int]] = deque()   # (token, class), oldest freed first
    freed_at: dict[int, int] = {}            # cached token -> allocations count at its free
    born_at: dict[int, int] = {}             # cached token -> allocations count at its handout
    born = [0] * len(sizes)                  # per block: the allocations count at its birth
    held_as = [0] * len(sizes)               # per block: the class of the block it got
    distances: list[int] = []                # per hit: allocations since that block's free
    token = 0

    def limit() -> int:
        if headroom is None:
            return max_cached
        return min(max_cached, max(0, peak + peak // 100 * headroom - live))

    def evict_oldest() -> None:
        nonlocal cached
        tok, c = recency.popleft()
        if tok in freed_at:
            del freed_at[tok]
            del born_at[tok]
            by_class[c].popleft()
            cached -= c

    def evict_to(bound: int) -> None:
        while cached > bound and recency:
            evict_oldest()

    for _, is_death, i in order:
        c = cls[i]
        if not is_death:
            allocs += 1
            if window:
                while recency and (recency[0][0] not in freed_at
                                   or allocs - freed_at[recency[0][0]] > window):
                    evict_oldest()
            born[i] = allocs
            got = _take_class(c, by_class)
            held_as[i] = got or c
            live += held_as[i]
            peak = max(peak, live)
            if got:
                stack = by_class[got]
                k = _burst_pick(stack, freed_at, born_at)    # among the last few
                tok = stack[k]
                del stack[k]
                del born_at[tok]
                distances.append(allocs - freed_at.pop(tok))
                cached -= got
            else:
                misses += 1
                if cached:
                    evict_to(limit())
        else:
            c = held_as[i]
            live -= c
            bound = limit()
            if c <= bound:
                token += 1
                by_class.setdefault(c, deque()).append(token)
                recency.append((token, c))
                freed_at[token] = allocs
                born_at[token] = born[i]
                cached += c
                evict_to(bound)
        held = max(held, live + cached)
    return Replay(headroom, allocs, misses, peak, held, window, tuple(distances))


def _take_class(c: int, by_class: dict[int, deque[int]]) -> int:
    """The class whose cached block a request of class ``c`` gets: its
    own, else the nearest of the next BORROW_CLASSES that has one; 0 for
    a miss."""
    for _ in range(BORROW_CLASSES + 1):
        if by_class.get(c):
            return c
        c = class_size(c + 1)
    return 0


def _burst_pick(stack: deque[int], freed_at: dict[int, int], born_at: dict[int, int]) -> int:
    """The cache's _burst_pick: the index in a class's cached tokens
    (oldest freed first) that the next allocation takes: the most recently
    freed, or among those freed with it in one burst (the same allocations
    count), looking at BURST_SCAN more, the one handed out first."""
    best = len(stack) - 1
    head = freed_at[stack[best]]
    for k in range(best - 1, max(-1, best - 1 - BURST_SCAN), -1):
        if freed_at[stack[k]] != head:
            break
        if born_at[stack[k]] < born_at[stack[best]]:
            best = k
    return best


def choose(sizes: np.ndarray, births: np.ndarray, deaths: np.ndarray, *,
           run_starts: np.ndarray | None = None,
           max_cached: int = 1 << 62) -> tuple[Replay, Replay]:
    """(the chosen settings' replay, the replay with no headroom and no
    window), both under ``max_cached``.  First the smallest headroom that
    reuses within HIT_SLACK of no bound; then the reuse window: twice the
    reuse distance 99% of its hits come within (a power of two), doubled
    until the hits it gives up are within HIT_SLACK too."""
    run = functools.partial(replay, sizes, births, deaths, run_starts=run_starts,
                            max_cached=max_cached)
    free = run(None)
    slack = HIT_SLACK * free.allocations
    chosen = None
    for h in HEADROOMS:
        r = run(h)
        if r.misses <= free.misses + slack:
            chosen = r
            break
    if chosen is None:
        chosen = run(HEADROOMS[-1])
    if not chosen.distances:
        return chosen, free
    window = max(MIN_WINDOW, _next_pow2(2 * float(np.quantile(chosen.distances, 0.99))))
    longest = max(chosen.distances)
    while True:
        r = run(chosen.headroom, window=window)
        # Past the longest reuse distance the window takes no hit away.
        if r.misses <= chosen.misses + slack or window > longest:
            return r, free
        window *= 2


def _next_pow2(x: float) -> int:
    p = 1
    while p < x:
        p <<= 1
    return p
