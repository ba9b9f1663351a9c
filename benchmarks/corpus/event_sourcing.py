"""Replay an order-management event log into an event store and projections.

Shape: GC-bound object builder.  Every event is a small class instance
(``__dict__`` and all, as most domain code writes them); the store keeps
them all, by id in a dict and per order in a list, and every fifth event
(an execution) carries a ``fill`` dict with the execution details.  Nearly
nothing becomes garbage while the log loads, so CPython's cyclic GC scans a
large, growing heap again and again and finds nothing.  This is how an
event-sourced service starts: read the whole log, keep it in memory,
project the current state from it.  At scale 1: 800k events (the job
that exposed the problem had ~1M).

    python benchmarks/corpus/event_sourcing.py [--scale 1.0]
"""

import argparse
import random
from collections import defaultdict

SYMBOLS = ["AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "META", "TSLA", "ORCL",
           "IBM", "INTC", "AMD", "CSCO", "ADBE", "CRM", "NFLX", "QCOM"]
VENUES = ["XNAS", "XNYS", "BATS", "EDGX", "IEXG"]


class Event:
    def __init__(self, seq, order_id, kind, symbol, qty, price, ts):
        self.seq = seq
        self.order_id = order_id
        self.kind = kind
        self.symbol = symbol
        self.qty = qty
        self.price = price
        self.ts = ts
        self.fill = None

    def __repr__(self):
        return f"Event({self.seq}, {self.kind}, order={self.order_id})"


class EventStore:
    def __init__(self):
        self.events = {}
        self.streams = defaultdict(list)

    def append(self, event):
        self.events[event.seq] = event
        self.streams[event.order_id].append(event)

    def stream(self, order_id):
        return self.streams[order_id]


def read_log(n, rng):
    """The event log, as a feed would deliver it."""
    kinds = ["created", "amended", "acked", "partially_filled", "filled"]
    rand = rng.random
    ts = 1_700_000_000_000
    n_orders = max(1, n // 5)
    for seq in range(n):
        r = rand()
        ts += 1 + int(r * 40)
        order_id = int(rand() * n_orders)
        ev = Event(seq, order_id, kinds[seq % 5], SYMBOLS[order_id % len(SYMBOLS)],
                   1 + int(r * 500), round(10.0 + r * 890.0, 2), ts)
        if seq % 5 == 4:
            ev.fill = {"venue": VENUES[seq % len(VENUES)], "exec_id": f"E{seq:09d}",
                       "liquidity": "maker" if r < 0.4 else "taker",
                       "fee": round(ev.qty * 0.0003, 5)}
        yield ev


class PositionProjection:
    def __init__(self):
        self.position = defaultdict(int)
        self.notional = defaultdict(float)
        self.fees = defaultdict(float)

    def apply(self, event):
        if event.fill is not None:
            self.position[event.symbol] += event.qty
            self.notional[event.symbol] += event.qty * event.price
            self.fees[event.fill["venue"]] += event.fill["fee"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    n = max(10, int(800_000 * args.scale))
    rng = random.Random(7)
    store = EventStore()
    for event in read_log(n, rng):
        store.append(event)
    proj = PositionProjection()
    for seq in range(n):
        proj.apply(store.events[seq])
    longest = max(store.streams, key=lambda k: len(store.streams[k]))
    top = max(proj.notional, key=proj.notional.get)
    print(f"event_sourcing: {len(store.events)} events, {len(store.streams)} orders, "
          f"longest stream {len(store.stream(longest))}, top symbol {top} "
          f"{proj.notional[top]:.2f}, fees {sum(proj.fees.values()):.2f}")


if __name__ == "__main__":
    main()
