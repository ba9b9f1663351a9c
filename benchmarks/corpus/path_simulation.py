"""Price a book of path-dependent options by Monte Carlo simulation.

Shape: allocation-bound numpy whose arrays grow with the input: every
option draws its own (paths x 252 steps) matrix of normal shocks and turns
it into log-returns, cumulative sums, prices and payoffs, all full-size
temporaries that die when the option is priced.  The number of paths is
the input size, so a run three times bigger makes arrays three times
bigger (at scale 1: 16k paths, 31.5 MiB per float64 matrix; profiled at a
third of that, the profile never sees an array over 11 MiB), which is what
a risk job does when a user asks for a tighter confidence interval.

    python benchmarks/corpus/path_simulation.py [--scale 1.0]
"""

import argparse

import numpy as np

STEPS = 252
RATE = 0.03


def simulate(rng, n_paths, spot, vol):
    dt = 1.0 / STEPS
    shocks = rng.standard_normal((n_paths, STEPS))
    log_returns = (RATE - 0.5 * vol * vol) * dt + vol * np.sqrt(dt) * shocks
    return spot * np.exp(np.cumsum(log_returns, axis=1))


def price(prices, strike, kind):
    if kind == "asian":
        payoff = np.maximum(prices.mean(axis=1) - strike, 0.0)
    elif kind == "lookback":
        payoff = np.maximum(prices.max(axis=1) - strike, 0.0)
    else:                                       # a down-and-out barrier call
        alive = (prices > 0.8 * prices[:, :1]).all(axis=1)
        payoff = np.where(alive, np.maximum(prices[:, -1] - strike, 0.0), 0.0)
    value = np.exp(-RATE) * payoff
    return float(value.mean()), float(value.std() / np.sqrt(len(value)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    n_paths = max(100, int(16_000 * args.scale))
    rng = np.random.default_rng(2026)
    book = [(100.0, 90.0 + 5 * (k % 5), 0.15 + 0.05 * (k % 4), ("asian", "lookback", "barrier")[k % 3])
            for k in range(12)]
    total = 0.0
    worst_err = 0.0
    for spot, strike, vol, kind in book:
        value, err = price(simulate(rng, n_paths, spot, vol), strike, kind)
        total += value
        worst_err = max(worst_err, err)
    print(f"path_simulation: {len(book)} options x {n_paths} paths, book value {total:.4f}, "
          f"worst standard error {worst_err:.4f}")


if __name__ == "__main__":
    main()
