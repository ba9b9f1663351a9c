"""Analyse web server access logs with a chain of generators.

Shape: generators / iterator pipeline.  The classic "generator tricks"
style: ``read_lines`` -> ``parse`` (a regex, one dict per line) ->
``only_errors_and_slow`` -> ``enrich`` -> ``sessionize`` (a sliding
per-client window kept in a dict of deques) -> ``per_minute`` (an
``itertools.groupby``), and the consumer keeps only per-minute summaries.
Every stage is lazy; every line makes a string, a match and a dict that
die a moment later, while a modest number of sessions stay alive.  At
scale 1: 300k log lines.

    python benchmarks/corpus/log_pipeline.py [--scale 1.0]
"""

import argparse
import random
import re
from collections import defaultdict, deque
from itertools import groupby

LINE_RE = re.compile(r'(?P<ip>\S+) - - \[(?P<ts>\d+)\] "(?P<method>\w+) (?P<path>\S+) HTTP/1\.1" '
                     r'(?P<status>\d{3}) (?P<size>\d+) (?P<ms>\d+)')
PATHS = ["/", "/login", "/api/items", "/api/items/{}", "/api/cart", "/static/app.js",
         "/search?q={}", "/api/orders/{}"]


def read_lines(n, rng):
    ts = 1_700_000_000
    for i in range(n):
        ts += rng.random() < 0.02
        ip = f"10.{rng.randrange(4)}.{rng.randrange(256)}.{rng.randrange(256)}"
        path = rng.choice(PATHS).format(rng.randrange(10_000))
        status = 200 if rng.random() < 0.93 else rng.choice([301, 404, 500, 503])
        yield (f'{ip} - - [{ts}] "{rng.choice(["GET", "GET", "POST"])} {path} HTTP/1.1" '
               f'{status} {rng.randrange(200, 90_000)} {int(rng.expovariate(1 / 80))}')


def parse(lines):
    for line in lines:
        m = LINE_RE.match(line)
        if m:
            rec = m.groupdict()
            rec["ts"] = int(rec["ts"])
            rec["status"] = int(rec["status"])
            rec["ms"] = int(rec["ms"])
            yield rec


def only_errors_and_slow(records, slow_ms=150):
    return (r for r in records if r["status"] >= 400 or r["ms"] >= slow_ms)


def enrich(records):
    for r in records:
        r["endpoint"] = r["path"].split("?")[0].rstrip("0123456789/") or "/"
        r["minute"] = r["ts"] // 60
        yield r


def sessionize(records, window=30):
    recent = defaultdict(lambda: deque(maxlen=window))
    for r in records:
        q = recent[r["ip"]]
        q.append(r["ms"])
        r["client_avg_ms"] = sum(q) / len(q)
        yield r


def per_minute(records):
    for minute, group in groupby(records, key=lambda r: r["minute"]):
        rows = list(group)
        errors = sum(1 for r in rows if r["status"] >= 500)
        worst = max(rows, key=lambda r: r["ms"])
        yield minute, len(rows), errors, worst["endpoint"], worst["ms"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    n = max(100, int(300_000 * args.scale))
    rng = random.Random(13)
    pipeline = per_minute(sessionize(enrich(only_errors_and_slow(parse(read_lines(n, rng))))))
    minutes = rows = errors = 0
    worst = (0, "")
    for minute, count, errs, endpoint, ms in pipeline:
        minutes += 1
        rows += count
        errors += errs
        worst = max(worst, (ms, endpoint))
    print(f"log_pipeline: {n} lines, {minutes} minutes, {rows} flagged, {errors} 5xx, "
          f"worst {worst[1]} {worst[0]} ms")


if __name__ == "__main__":
    main()
