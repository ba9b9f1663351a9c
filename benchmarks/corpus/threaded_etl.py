"""A threaded ETL step: workers clean numeric chunks and aggregate records.

Shape: threaded, numpy and dicts.  A loader splits a day of sensor
readings into chunks and hands them to a ``ThreadPoolExecutor`` (4
workers, as people do to overlap numpy, which releases the GIL, with
Python work).  Each worker generates its chunk (seeded), cleans it with
numpy (outlier clipping, a rolling mean via ``cumsum``, sorting for
percentiles: 1-4 MiB temporaries allocated in worker threads), then builds
per-sensor summary dicts and a list of alert records; the main thread
merges them into long-lived dicts.  At scale 1: 48 chunks of 250k
readings.

    python benchmarks/corpus/threaded_etl.py [--scale 1.0]
"""

import argparse
from concurrent.futures import ThreadPoolExecutor

import numpy as np

CHUNK = 250_000
SENSORS = 500


def rolling_mean(x, w):
    c = np.cumsum(np.insert(x, 0, 0.0))
    return (c[w:] - c[:-w]) / w


def process_chunk(k):
    rng = np.random.default_rng(1000 + k)
    sensor = rng.integers(0, SENSORS, CHUNK)
    value = rng.normal(20.0, 5.0, CHUNK)
    value[rng.random(CHUNK) < 0.001] = 1e6          # glitches
    lo, hi = np.percentile(value, [0.5, 99.5])
    clean = np.clip(value, lo, hi)
    smooth = rolling_mean(clean, 32)
    order = np.argsort(sensor, kind="stable")
    s_sorted = sensor[order]
    v_sorted = clean[order]
    bounds = np.searchsorted(s_sorted, np.arange(SENSORS + 1))
    summary = {}
    alerts = []
    for s in range(SENSORS):
        seg = v_sorted[bounds[s]:bounds[s + 1]]
        if len(seg) == 0:
            continue
        mean = float(seg.mean())
        summary[s] = {"n": len(seg), "mean": mean, "max": float(seg.max()),
                      "min": float(seg.min())}
        if mean > 20.3:
            alerts.append({"chunk": k, "sensor": s, "mean": round(mean, 3),
                           "tags": ["high", f"chunk{k}"]})
    return k, summary, alerts, float(smooth.std())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    n_chunks = max(2, round(48 * args.scale))
    totals = {}
    alerts = []
    spreads = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for k, summary, chunk_alerts, spread in pool.map(process_chunk, range(n_chunks)):
            for s, st in summary.items():
                t = totals.setdefault(s, {"n": 0, "sum": 0.0, "max": float("-inf")})
                t["n"] += st["n"]
                t["sum"] += st["mean"] * st["n"]
                t["max"] = max(t["max"], st["max"])
            alerts.extend(chunk_alerts)
            spreads.append(spread)
    hottest = max(totals, key=lambda s: totals[s]["sum"] / totals[s]["n"])
    print(f"threaded_etl: {n_chunks} chunks, {len(totals)} sensors, {len(alerts)} alerts, "
          f"hottest {hottest}, mean spread {sum(spreads) / len(spreads):.6f}")


if __name__ == "__main__":
    main()
