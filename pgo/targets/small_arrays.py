"""Many short-lived fixed-size arrays.

An n-body style update written the way much scientific Python is: per
particle, small numpy arrays (3-vectors, 16-element state) made and dropped
in the inner loop.  Every allocation is one of a few small sizes and lives
for microseconds: the pattern a slab allocator serves.

    python pgo/targets/small_arrays.py [--particles N] [--steps N]
"""

import argparse

import numpy as np


class Particle:
    __slots__ = ("pos", "vel", "state")

    def __init__(self, rng):
        self.pos = rng.random(3)
        self.vel = rng.random(3) - 0.5
        self.state = np.zeros(16)


def step(particles, dt):
    center = np.zeros(3)
    for p in particles:
        center += p.pos
    center /= len(particles)
    energy = 0.0
    for p in particles:
        d = center - p.pos                 # a new 3-vector
        acc = d * 0.01                     # another
        p.vel = p.vel + acc * dt           # another
        p.pos = p.pos + p.vel * dt         # two more
        s = np.empty(16)                   # scratch state
        s[:3] = p.pos
        s[3:6] = p.vel
        s[6:] = 0.0
        p.state = s
        energy += float(p.vel @ p.vel)
    return energy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(1)
    particles = [Particle(rng) for _ in range(args.particles)]
    energy = 0.0
    for _ in range(args.steps):
        energy = step(particles, 0.01)
    print(f"small_arrays: {args.particles} particles, {args.steps} steps, energy {energy:.6f}")


if __name__ == "__main__":
    main()
