"""Large numpy temporaries in a pipeline.

A batch of 48 MB "frames" goes through normalize -> smooth -> threshold ->
reduce; every stage makes full-size temporaries that die at once.  Over
glibc's mmap threshold (32 MiB), each temporary is a fresh mmap that page
faults again: the pattern a caching allocator fixes.

    python pgo/targets/pipeline.py [--frames N] [--size ELEMENTS]
"""

import argparse

import numpy as np


def normalize(frame):
    lo = frame.min()
    hi = frame.max()
    return (frame - lo) / (hi - lo)


def smooth(frame):
    # A 3-point moving average: two shifted copies and their sum.
    out = frame.copy()
    out[1:-1] = (frame[:-2] + frame[1:-1] + frame[2:]) / 3.0
    return out


def threshold(frame, level):
    return np.where(frame > level, frame, 0.0)


def process(frame):
    f = normalize(frame)
    f = smooth(f)
    f = threshold(f, 0.5)
    return float(f.sum()), int(np.count_nonzero(f))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=6_000_000, help="float64 elements per frame")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    base = rng.random(args.size)
    total = 0.0
    kept = 0
    for i in range(args.frames):
        frame = base * (1.0 + 0.01 * i)
        s, n = process(frame)
        total += s
        kept += n
    print(f"pipeline: {args.frames} frames of {args.size * 8 / 1e6:.0f} MB, "
          f"sum {total:.6e}, kept {kept}")


if __name__ == "__main__":
    main()
