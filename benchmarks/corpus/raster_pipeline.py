"""Compute a vegetation index over a batch of satellite scenes.

Shape: allocation-bound numpy with big temporaries.  Each scene has a red
and a near-infrared band of 2048 x 2560 float64 (40 MiB each); they go
through ``calibrate`` -> ``normalize`` -> ``smooth`` (a 3x3 box filter
from shifted slices) -> ``ndvi`` (the normalised difference index) ->
``classify``.  Every step makes full-size temporaries (> 32 MiB, over
glibc's largest mmap threshold) that die when the function returns, as
straightforward numpy code does.  At scale 1: 6 scenes.

    python benchmarks/corpus/raster_pipeline.py [--scale 1.0]
"""

import argparse

import numpy as np

H, W = 2048, 2304


def calibrate(dn, gain, offset):
    return dn * gain + offset


def normalize(band):
    lo, hi = np.percentile(band[::16, ::16], [2, 98])
    return np.clip((band - lo) / (hi - lo), 0.0, 1.0)


def smooth(band):
    # A separable 3x3 box filter: rows, then columns.
    padded = np.pad(band, 1, mode="edge")
    rows = padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]
    return (rows[:-2] + rows[1:-1] + rows[2:]) / 9.0


def ndvi(nir, red):
    return (nir - red) / (nir + red + 1e-9)


def classify(index):
    classes = np.digitize(index, [-0.1, 0.2, 0.5])
    return np.bincount(classes.ravel(), minlength=4)


def process_scene(red_dn, nir_dn, k):
    red = smooth(normalize(calibrate(red_dn, 0.98 + 0.01 * k, 0.01)))
    nir = smooth(normalize(calibrate(nir_dn, 1.02 - 0.01 * k, 0.02)))
    index = ndvi(nir, red)
    return classify(index), float(index.mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    scenes = max(1, round(6 * args.scale))
    rng = np.random.default_rng(42)
    red_dn = rng.random((H, W))
    nir_dn = red_dn * 0.6 + rng.random((H, W)) * 0.4
    totals = np.zeros(4, dtype=np.int64)
    means = []
    for k in range(scenes):
        counts, mean = process_scene(red_dn, nir_dn, k)
        totals += counts
        means.append(mean)
    print(f"raster_pipeline: {scenes} scenes of {H}x{W}, classes {totals.tolist()}, "
          f"mean ndvi {np.mean(means):.6f}")


if __name__ == "__main__":
    main()
