"""Resolve a package dependency graph: build it, order it, measure closures.

Shape: GC-bound object builder with reference cycles that stay alive.  A
registry of ``Package`` objects (plain classes) is built from a synthetic
index; each package points at its dependencies and is pointed back at by
its dependents (``deps`` / ``rdeps`` lists: every edge is a cycle the GC
must traverse), version tuples and metadata dicts hang off each node.  Then
a topological order (Kahn) and the transitive closure of a sample of
packages, as a resolver or a build system does.  The graph lives to the
end, so collections find almost nothing.  At scale 1: 120k packages,
~480k edges.

    python benchmarks/corpus/graph_build.py [--scale 1.0]
"""

import argparse
import random
from collections import deque


class Package:
    def __init__(self, name, version, meta):
        self.name = name
        self.version = version
        self.meta = meta
        self.deps = []
        self.rdeps = []

    def depends_on(self, other):
        self.deps.append(other)
        other.rdeps.append(self)

    def __repr__(self):
        return f"<Package {self.name}=={'.'.join(map(str, self.version))}>"


class Registry:
    def __init__(self):
        self.packages = {}

    def add(self, pkg):
        self.packages[pkg.name] = pkg

    def get(self, name):
        return self.packages[name]


def load_index(n, rng):
    reg = Registry()
    licenses = ["MIT", "BSD-3-Clause", "Apache-2.0", "GPL-3.0", "MPL-2.0"]
    for i in range(n):
        version = (rng.randrange(5), rng.randrange(30), rng.randrange(10))
        meta = {"license": licenses[i % 5], "summary": f"package number {i}",
                "classifiers": ["Programming Language :: Python", f"Topic :: {i % 40}"]}
        reg.add(Package(f"pkg{i:06d}", version, meta))
    # Dependencies point to lower-numbered packages: a DAG, as an index is.
    for i in range(1, n):
        pkg = reg.get(f"pkg{i:06d}")
        for _ in range(rng.randrange(1, 8)):
            j = int(i * rng.random() ** 0.5)
            if j != i:
                pkg.depends_on(reg.get(f"pkg{j:06d}"))
    return reg


def topo_order(reg):
    indeg = {name: len(p.deps) for name, p in reg.packages.items()}
    ready = deque(name for name, d in indeg.items() if d == 0)
    order = []
    while ready:
        name = ready.popleft()
        order.append(name)
        for dependent in reg.packages[name].rdeps:
            indeg[dependent.name] -= 1
            if indeg[dependent.name] == 0:
                ready.append(dependent.name)
    return order


def closure(pkg):
    seen = {pkg.name}
    stack = [pkg]
    while stack:
        p = stack.pop()
        for d in p.deps:
            if d.name not in seen:
                seen.add(d.name)
                stack.append(d)
    return seen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    n = max(50, int(120_000 * args.scale))
    rng = random.Random(11)
    reg = load_index(n, rng)
    order = topo_order(reg)
    sample = [reg.get(f"pkg{i:06d}") for i in range(n - 1, 0, -max(1, n // 20))]
    sizes = [len(closure(p)) for p in sample]
    edges = sum(len(p.deps) for p in reg.packages.values())
    print(f"graph_build: {len(reg.packages)} packages, {edges} edges, order of "
          f"{len(order)}, mean closure {sum(sizes) / len(sizes):.1f}, last {order[-1]}")


if __name__ == "__main__":
    main()
