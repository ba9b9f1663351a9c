"""Build a full-text inverted index in memory and answer queries from it.

Shape: GC-bound, long-lived containers.  A search prototype tokenises a
corpus of synthetic documents (a Zipf vocabulary), keeps a ``Document``
object per document with its term counts (a ``Counter``), and an inverted
index mapping every term to a list of ``[doc_id, tf]`` postings.  Postings
are small lists (mutable, so they can be re-weighted later): millions of
tracked containers that all stay alive.  Then BM25-ranked conjunctive
queries.  At scale 1: 12k documents of ~90 words.

    python benchmarks/corpus/inverted_index.py [--scale 1.0]
"""

import argparse
import math
import random
from collections import Counter, defaultdict
from itertools import accumulate


class Document:
    def __init__(self, doc_id, title, terms):
        self.doc_id = doc_id
        self.title = title
        self.terms = terms
        self.length = sum(terms.values())


class Index:
    def __init__(self):
        self.docs = {}
        self.postings = defaultdict(list)

    def add(self, doc):
        self.docs[doc.doc_id] = doc
        for term, tf in doc.terms.items():
            self.postings[term].append([doc.doc_id, tf])

    def search(self, query, k=10):
        terms = query.split()
        lists = sorted((self.postings.get(t, []) for t in terms), key=len)
        if not lists or not lists[0]:
            return []
        candidates = {d for d, _ in lists[0]}
        for pl in lists[1:]:
            candidates &= {d for d, _ in pl}
        n = len(self.docs)
        avg = sum(d.length for d in self.docs.values()) / n
        scores = []
        for doc_id in candidates:
            doc = self.docs[doc_id]
            score = 0.0
            for t in terms:
                df = len(self.postings[t])
                tf = doc.terms[t]
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                score += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * doc.length / avg))
            scores.append((score, doc_id))
        scores.sort(reverse=True)
        return scores[:k]


def make_corpus(n, rng, vocab):
    cum = list(accumulate(1.0 / (r + 1) for r in range(len(vocab))))
    for i in range(n):
        words = rng.choices(vocab, cum_weights=cum, k=60 + rng.randrange(60))
        yield i, f"doc {i}", " ".join(words)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    n = max(20, int(12_000 * args.scale))
    rng = random.Random(23)
    vocab = [f"w{r}" for r in range(20_000)]
    index = Index()
    for doc_id, title, text in make_corpus(n, rng, vocab):
        index.add(Document(doc_id, title, Counter(text.lower().split())))
    queries = ["w1 w7", "w3 w15 w40", "w100 w2", "w12 w13", "w5 w250"]
    hits = [index.search(q) for q in queries]
    top = hits[0][0][1] if hits[0] else None
    print(f"inverted_index: {len(index.docs)} docs, {len(index.postings)} terms, "
          f"{sum(len(p) for p in index.postings.values())} postings, top for '{queries[0]}': {top}")


if __name__ == "__main__":
    main()
