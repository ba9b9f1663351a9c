"""Allocation events paired into blocks: each block's site, size, birth,
death (or still alive at the end), the threads that made and freed it, and
statistical weight.

Pure numpy over a trace (``pgo.bundle.EventTrace``): no Python loop per
event, so millions of events take well under a second.  A realloc is the
death of the old block and the birth of the new one at the same site.
Weights undo the recorder's sampling: numpy events carry a level L (kept
with probability 4**-L), sampled Python objects were kept with probability
1 - exp(-size / sample_bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pgo.bundle import FREE, REALLOC, pass_level


@dataclass
class Blocks:
    """One row per block born during the trace."""

    site: np.ndarray        # uint32
    size: np.ndarray        # uint64, bytes requested
    birth: np.ndarray       # float64, seconds from the trace's start
    death: np.ndarray       # float64, seconds; NaN: alive at the end of the trace
    tid: np.ndarray         # uint32
    weight: np.ndarray      # float64: blocks this one stands for
    end: float              # seconds: the last event of the trace
    birth_ev: np.ndarray    # int64: index of the birth event in the trace
    death_ev: np.ndarray    # int64: index of the death event; -1: alive at the end
    censored: np.ndarray    # bool: no death seen, but the budget's sampling stopped
                            # looking at its address: alive or dead is unknown ...
    censor_t: np.ndarray    # float64: ... from this time on (NaN when not censored)
    by_realloc: np.ndarray  # bool: born by a realloc (a block that grew or moved)
    free_tid: np.ndarray    # uint32: the thread that freed it (its own tid if not freed)

    def __len__(self) -> int:
        return len(self.site)


def pair(events: np.ndarray, t0_ns: int, *, sample_bytes: int | None = None) -> Blocks:
    """Pair births with deaths by address (the next event on the same
    address after a birth is its death, when it is a free or realloc-away).

    ``sample_bytes``: the objects trace's sampling rate (None: the numpy
    trace, weighted by level)."""
    n = len(events)
    if n == 0:
        z = np.zeros(0)
        e = np.zeros(0, np.int64)
        return Blocks(np.zeros(0, np.uint32), np.zeros(0, np.uint64), z, z,
                      np.zeros(0, np.uint32), z, 0.0, e, e, np.zeros(0, bool), z,
                      np.zeros(0, bool), np.zeros(0, np.uint32))
    kind = events["kind"]
    t = (events["t_ns"].astype(np.int64) - np.int64(t0_ns)) / 1e9
    is_birth = kind != FREE
    # Deaths: frees, and the old address of each realloc that had one.
    death_mask = (kind == FREE) | ((kind == REALLOC) & (events["old"] != 0))
    death_addr = np.where(kind == FREE, events["addr"], events["old"])
    b_idx = np.nonzero(is_birth)[0]
    d_idx = np.nonzero(death_mask)[0]
    # One sorted sequence of (address, event index, is-death): a death of an
    # address at the same event index as a birth (a realloc in place) sorts
    # before the birth, so it closes the old block first.
    addr = np.concatenate([events["addr"][b_idx], death_addr[d_idx]])
    order_idx = np.concatenate([b_idx, d_idx])
    flag = np.concatenate([np.ones(len(b_idx), np.int8), np.zeros(len(d_idx), np.int8)])
    order = np.lexsort((flag, order_idx, addr))
    addr, order_idx, flag = addr[order], order_idx[order], flag[order]
    nxt_is_death = np.zeros(len(addr), bool)
    if len(addr) > 1:
        nxt_is_death[:-1] = (addr[1:] == addr[:-1]) & (flag[1:] == 0)
    births = np.nonzero(flag == 1)[0]
    ev = order_idx[births]
    died = nxt_is_death[births]
    death_t = np.full(len(births), np.nan)
    death_t[died] = t[order_idx[births[died] + 1]]
    death_ev = np.full(len(births), -1, np.int64)
    death_ev[died] = order_idx[births[died] + 1]
    # Chronological order of births.
    chrono = np.argsort(ev, kind="stable")
    ev, death_t, death_ev = ev[chrono], death_t[chrono], death_ev[chrono]
    site = events["site"][ev].astype(np.uint32)
    size = events["size"][ev]
    if sample_bytes is None:
        weight = np.power(4.0, events["level"][ev].astype(np.float64))
    else:
        p = -np.expm1(-size.astype(np.float64) / float(sample_bytes))
        weight = 1.0 / np.maximum(p, 1e-12)
    _inherit_realloc(site, weight if sample_bytes is not None else None, ev, death_ev, kind)
    censor_t = _censor_times(events, t, ev, death_ev)
    tid = events["tid"][ev].astype(np.uint32)
    # The thread of the free (or of the realloc that moved the block away).
    free_tid = np.where(death_ev >= 0, events["tid"][np.maximum(death_ev, 0)], tid)
    return Blocks(site=site, size=size.astype(np.uint64),
                  birth=t[ev], death=death_t, tid=tid,
                  weight=weight, end=float(t[-1]), birth_ev=ev.astype(np.int64),
                  death_ev=death_ev, censored=~np.isnan(censor_t), censor_t=censor_t,
                  by_realloc=kind[ev] == REALLOC, free_tid=free_tid.astype(np.uint32))


def _inherit_realloc(site: np.ndarray, weight: np.ndarray | None, ev: np.ndarray,
                     death_ev: np.ndarray, kind: np.ndarray) -> None:
    """A realloc recorded without a site (the object sampler's, which keeps
    no site per block) continues the block it moved: give it that block's
    site, along chains of reallocs, in time order.  Sampled objects
    (``weight`` given): it also stands for as many blocks as the one it
    continues, which was sampled for its own size (a realloc to 0 bytes
    would otherwise weigh 1/p(0) = 10**12 blocks, and one such block made a
    GC plan's peak heap 10**12)."""
    todo = np.nonzero((kind[ev] == REALLOC) & (site == 0))[0]
    if len(todo) == 0:
        return
    # The block that died at event e (moved away by the realloc at e).
    died_at = {int(e): i for i, e in enumerate(death_ev.tolist()) if e >= 0}
    for i in todo.tolist():                      # births are in time order
        j = died_at.get(int(ev[i]))
        if j is not None:
            site[i] = site[j]
            if weight is not None:
                weight[i] = weight[j]


def _censor_times(events: np.ndarray, t: np.ndarray, ev: np.ndarray,
                  death_ev: np.ndarray) -> np.ndarray:
    """For blocks with no death seen whose address the trace stopped
    keeping (the level went past the address's pass level) before it
    ended: the time it stopped (their free, if any, was not recorded).
    NaN for every other block."""
    out = np.full(len(ev), np.nan)
    levels = events["level"]
    top = int(levels[-1]) if len(levels) else 0
    if top == 0:
        return out
    # Levels never go down: the first event of each level.
    first = np.searchsorted(levels, np.arange(top + 2), side="left")
    for i in np.nonzero(death_ev < 0)[0].tolist():
        k = pass_level(int(events["addr"][ev[i]]))
        if k < top:
            out[i] = t[first[k + 1]]
    return out
