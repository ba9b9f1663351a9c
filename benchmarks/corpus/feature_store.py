"""A recommendation feature store: user objects with embeddings, scored in batches.

Shape: mixed, objects and numpy.  A recommender keeps a ``UserProfile``
object per user (a dict of counters, a list of recent item ids and a
64-float32 embedding array), updates them from an event stream, and every
few thousand events scores a batch: stacks the batch's embeddings into a
matrix (MiB-sized), multiplies by the item-centroid matrix, takes the
top-k per user with ``argpartition`` and stores the recommendations back
on the objects as lists.  The object heap is long-lived and GC-tracked;
the numpy work makes mid-size temporaries.  At scale 1: 20k users,
100k events.

    python benchmarks/corpus/feature_store.py [--scale 1.0]
"""

import argparse

import numpy as np

DIM = 64
N_CENTROIDS = 256
BATCH = 2048


class UserProfile:
    def __init__(self, user_id, embedding):
        self.user_id = user_id
        self.embedding = embedding
        self.counts = {}
        self.recent = []
        self.recommended = []

    def observe(self, item, category, weight):
        self.counts[category] = self.counts.get(category, 0) + 1
        self.recent.append(item)
        if len(self.recent) > 20:
            del self.recent[0]
        self.embedding += weight


def score_batch(users, centroids, k=10):
    emb = np.stack([u.embedding for u in users])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True) + 1e-6
    scores = emb @ centroids.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    for u, row in zip(users, top):
        u.recommended = row.tolist()
    return float(scores.max())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    n_users = max(100, int(20_000 * args.scale))
    n_events = n_users * 5
    rng = np.random.default_rng(77)
    centroids = rng.standard_normal((N_CENTROIDS, DIM)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    users = {}
    user_ids = rng.integers(0, n_users, n_events)
    items = rng.integers(0, 1_000_000, n_events)
    weights = rng.standard_normal((n_events, DIM)).astype(np.float32) * 0.01
    pending = []
    best = 0.0
    for e in range(n_events):
        uid = int(user_ids[e])
        user = users.get(uid)
        if user is None:
            user = users[uid] = UserProfile(uid, np.zeros(DIM, dtype=np.float32))
        user.observe(int(items[e]), f"cat{int(items[e]) % 300}", weights[e])
        pending.append(user)
        if len(pending) == BATCH:
            best = max(best, score_batch(pending, centroids))
            pending = []
    if pending:
        best = max(best, score_batch(pending, centroids))
    with_recs = sum(1 for u in users.values() if u.recommended)
    print(f"feature_store: {len(users)} users, {n_events} events, {with_recs} with "
          f"recommendations, best score {best:.4f}")


if __name__ == "__main__":
    main()
