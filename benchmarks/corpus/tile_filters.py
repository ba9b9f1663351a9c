"""Edge detection over a large micrograph, processed tile by tile.

Shape: allocation-bound numpy with medium temporaries (1-8 MiB).  A
microscopy tool cuts its image into tiles of 512x512 and 1024x1024 float64
(2 and 8 MiB), and for each tile computes a Gaussian-like blur (separable
[1 2 1] kernel), Sobel gradients, the gradient magnitude and a
thresholded edge mask, then keeps only a few numbers per tile.  Each
tile's temporaries are freed before the next tile: glibc trims and
re-faults them, a caching allocator would not.  At scale 1: 96 tiles.

    python benchmarks/corpus/tile_filters.py [--scale 1.0]
"""

import argparse

import numpy as np


def blur(tile):
    t = np.pad(tile, 1, mode="reflect")
    rows = t[:, :-2] + 2.0 * t[:, 1:-1] + t[:, 2:]
    return (rows[:-2] + 2.0 * rows[1:-1] + rows[2:]) / 16.0


def sobel(tile):
    t = np.pad(tile, 1, mode="reflect")
    gx = (t[:-2, 2:] + 2.0 * t[1:-1, 2:] + t[2:, 2:]) - (t[:-2, :-2] + 2.0 * t[1:-1, :-2] + t[2:, :-2])
    gy = (t[2:, :-2] + 2.0 * t[2:, 1:-1] + t[2:, 2:]) - (t[:-2, :-2] + 2.0 * t[:-2, 1:-1] + t[:-2, 2:])
    return gx, gy


def edges(tile, level):
    gx, gy = sobel(blur(tile))
    mag = np.hypot(gx, gy)
    mask = mag > level * mag.max()
    return int(mask.sum()), float(mag.mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    n_tiles = max(2, round(96 * args.scale))
    rng = np.random.default_rng(9)
    image = rng.random((2048, 2048))
    image[512:1536, 512:1536] += 0.5           # a bright specimen in the middle
    total_edges = 0
    mean_mag = 0.0
    for k in range(n_tiles):
        size = 1024 if k % 4 == 0 else 512
        y = (k * 389) % (2048 - size)
        x = (k * 653) % (2048 - size)
        n, m = edges(image[y:y + size, x:x + size], 0.25)
        total_edges += n
        mean_mag += m
    print(f"tile_filters: {n_tiles} tiles, {total_edges} edge pixels, "
          f"mean gradient {mean_mag / n_tiles:.6f}")


if __name__ == "__main__":
    main()
