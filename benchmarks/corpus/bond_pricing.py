"""Price a bond portfolio and its risk, one bond at a time.

Shape: allocation-bound numpy with many small arrays.  A risk desk's
script loops over the bonds in Python (each has its own schedule), and for
every bond builds small numpy arrays: coupon dates, cash flows, discount
factors from an interpolated curve, then price, duration, convexity and a
bumped re-price for DV01.  Arrays of 4-120 float64: millions of short-lived
small allocations, the work numpy's own small-block cache exists for.
At scale 1: 80k bonds.

    python benchmarks/corpus/bond_pricing.py [--scale 1.0]
"""

import argparse

import numpy as np

CURVE_T = np.array([0.25, 0.5, 1, 2, 3, 5, 7, 10, 20, 30], dtype=np.float64)
CURVE_R = np.array([0.031, 0.032, 0.034, 0.036, 0.037, 0.038, 0.039, 0.040, 0.042, 0.043])


def schedule(maturity, freq):
    n = max(1, round(maturity * freq))
    return np.arange(1, n + 1, dtype=np.float64) / freq


def cashflows(times, coupon, freq):
    cf = np.full(times.shape, coupon / freq * 100.0)
    cf[-1] += 100.0
    return cf


def discount(times, spread, bump=0.0):
    r = np.interp(times, CURVE_T, CURVE_R) + spread + bump
    return np.exp(-r * times)


def price_bond(maturity, coupon, freq, spread):
    t = schedule(maturity, freq)
    cf = cashflows(t, coupon, freq)
    df = discount(t, spread)
    pv = cf * df
    price = pv.sum()
    duration = (t * pv).sum() / price
    convexity = (t * t * pv).sum() / price
    bumped = (cf * discount(t, spread, 1e-4)).sum()
    return price, duration, convexity, price - bumped


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    n = max(10, int(80_000 * args.scale))
    rng = np.random.default_rng(1)
    maturities = rng.uniform(0.5, 30.0, n)
    coupons = rng.uniform(0.0, 0.08, n)
    freqs = rng.choice([1, 2, 4], n)
    spreads = rng.uniform(0.0, 0.03, n)
    notionals = rng.integers(1, 50, n) * 1e6
    mv = dv01 = dur = 0.0
    for i in range(n):
        p, d, _convexity, bp = price_bond(float(maturities[i]), float(coupons[i]), int(freqs[i]),
                                 float(spreads[i]))
        mv += p / 100.0 * notionals[i]
        dv01 += bp / 100.0 * notionals[i]
        dur += d * p / 100.0 * notionals[i]
    print(f"bond_pricing: {n} bonds, market value {mv:.2f}, DV01 {dv01:.2f}, "
          f"duration {dur / mv:.4f}")


if __name__ == "__main__":
    main()
