"""A profile service with a big in-process LRU cache in front of a "database".

Shape: long-lived cache with steady churn.  Requests for user profiles
follow a skewed (Zipf-like) popularity; a hit moves the entry to the
front of an ``OrderedDict``, a miss builds the response (a dict with
nested lists and a small preferences dict, as an ORM would return) and
evicts the least recently used entry once the cache is full.  The cache
is a large, long-lived heap of GC-tracked containers; evicted entries die
by reference counting (no cycles), so every collection scans the cache
and frees nothing.  Typical of API servers, session stores and
memoisation layers.  At scale 1: 120k-entry cache, 600k requests.

    python benchmarks/corpus/lru_service.py [--scale 1.0]
"""

import argparse
import random
from collections import OrderedDict


class LRUCache:
    def __init__(self, capacity):
        self.capacity = capacity
        self.data = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key):
        value = self.data.get(key)
        if value is not None:
            self.data.move_to_end(key)
            self.hits += 1
        else:
            self.misses += 1
        return value

    def put(self, key, value):
        self.data[key] = value
        self.data.move_to_end(key)
        if len(self.data) > self.capacity:
            self.data.popitem(last=False)
            self.evictions += 1


def load_profile(user_id):
    """What the database layer hands back for one user."""
    return {"id": user_id, "name": f"user-{user_id}", "email": f"u{user_id}@example.org",
            "groups": [f"g{user_id % 17}", f"g{user_id % 31}"],
            "recent_orders": [(user_id * 7 + k) % 100_000 for k in range(user_id % 5 + 1)],
            "prefs": {"lang": "en" if user_id % 3 else "de", "tz": user_id % 24,
                      "newsletter": bool(user_id & 1)}}


def handle(cache, user_id):
    profile = cache.get(user_id)
    if profile is None:
        profile = load_profile(user_id)
        cache.put(user_id, profile)
    return len(profile["recent_orders"]) + len(profile["groups"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    capacity = max(10, int(120_000 * args.scale))
    requests = max(100, int(600_000 * args.scale))
    population = capacity * 10
    rng = random.Random(5)
    cache = LRUCache(capacity)
    served = 0
    for _ in range(requests):
        # Log-uniform ranks (Zipf-like): a few users are very popular,
        # and there is a long tail of rare ones.
        user_id = int(population ** rng.random()) - 1
        served += handle(cache, user_id)
    ratio = cache.hits / requests
    print(f"lru_service: {requests} requests, hit ratio {ratio:.3f}, "
          f"{len(cache.data)} cached, {cache.evictions} evictions, served {served}")


if __name__ == "__main__":
    main()
