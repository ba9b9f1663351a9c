"""Daily sales rollup on columnar arrays: sort, group, reduce.

Shape: allocation-bound numpy with mid-size temporaries (4-24 MiB).  A
reporting job keeps each day's sales as columns (store id, product id,
quantity, price) of 1.5M rows, and per day computes revenue, a group-by
store via ``argsort`` + ``reduceat``, per-product unique counts, a
filtered top-decile and a running total: the way people write group-bys
when pandas is not available.  Fancy indexing and sorting make fresh
column-sized arrays (12 MiB for float64) on every step.  At scale 1:
9 days.

    python benchmarks/corpus/columnar_groupby.py [--scale 1.0]
"""

import argparse

import numpy as np

ROWS = 1_500_000
STORES = 2_000
PRODUCTS = 50_000


def load_day(rng):
    return {"store": rng.integers(0, STORES, ROWS, dtype=np.int64),
            "product": rng.integers(0, PRODUCTS, ROWS, dtype=np.int64),
            "qty": rng.integers(1, 10, ROWS, dtype=np.int64),
            "price": rng.gamma(2.0, 8.0, ROWS)}


def revenue_by_store(day):
    revenue = day["qty"] * day["price"]
    order = np.argsort(day["store"], kind="stable")
    stores = day["store"][order]
    starts = np.flatnonzero(np.r_[True, stores[1:] != stores[:-1]])
    sums = np.add.reduceat(revenue[order], starts)
    return stores[starts], sums


def product_stats(day):
    products, counts = np.unique(day["product"], return_counts=True)
    revenue = day["qty"] * day["price"]
    cut = np.quantile(revenue, 0.9)
    top = revenue[revenue >= cut]
    return len(products), int(counts.max()), float(top.sum())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    days = max(1, round(9 * args.scale))
    rng = np.random.default_rng(2024)
    running = np.zeros(STORES)
    best = []
    for d in range(days):
        day = load_day(rng)
        stores, sums = revenue_by_store(day)
        running[stores] += sums
        n_products, _busiest, top_revenue = product_stats(day)
        best.append((top_revenue, d))
    print(f"columnar_groupby: {days} days of {ROWS} rows, best store {int(running.argmax())} "
          f"{running.max():.2f}, best day {max(best)[1]}, products {n_products}")


if __name__ == "__main__":
    main()
