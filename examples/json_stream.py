"""JSON stream processing with arena-backed numpy temporaries and a
StringBuilder for the output, next to the plain version of the same code.

    python3 examples/json_stream.py [--records 20000] [--values 64] [--repeat 3]

The input is a stream of JSON lines (one record each: an id, a tag and a
list of measurements).  For every record the transform standardizes the
measurements with numpy (a handful of temporaries: the array, its mean,
deviations, squares, the result), keeps the ones above the mean, and writes
one output JSON line.

- plain: numpy's default memory, output lines joined from a list;
- pgo: the same function under ``pgo.use(arena)``: every temporary of a
  record comes from an ArenaAllocator, whose chunk is reused from its start
  as soon as the record's arrays are gone; output appended to a
  ``pgo.StringBuilder`` (one growing buffer, reset between runs).

Both must produce byte-identical output (checked).  It prints a JSON
summary: median times of each, the arena's statistics, and the output size.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

import numpy as np

import pgo


def make_stream(records: int, values: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    tags = ["alpha", "beta", "gamma", "delta"]
    return [json.dumps({"id": i, "tag": rng.choice(tags),
                        "values": [round(rng.gauss(10, 3), 4) for _ in range(values)]})
            for i in range(records)]


def transform(line: str) -> str:
    rec = json.loads(line)
    x = np.array(rec["values"], dtype=np.float64)
    mean = x.mean()
    z = (x - mean) / (x.std() + 1e-12)
    above = z[x > mean]
    return json.dumps({"id": rec["id"], "tag": rec["tag"], "n_above": int(above.size),
                       "z_max": round(float(z.max()), 6),
                       "z_above_mean": round(float(above.mean()) if above.size else 0.0, 6)})


def run_plain(lines: list[str]) -> bytes:
    return ("\n".join(transform(line) for line in lines) + "\n").encode()


def run_pgo(lines: list[str], arena: pgo.ArenaAllocator, out: pgo.StringBuilder) -> bytes:
    out.reset()
    with pgo.use(arena):
        for line in lines:
            out.append(transform(line))
            out.append(b"\n")
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=20_000, help="records (default 20000)")
    ap.add_argument("--values", type=int, default=64, help="measurements per record (default 64)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each (default 3)")
    args = ap.parse_args(argv)
    if args.records < 1 or args.values < 1 or args.repeat < 1:
        ap.error("--records, --values and --repeat must be >= 1")
    lines = make_stream(args.records, args.values)
    arena = pgo.ArenaAllocator(chunk_size=1 << 20, threadsafe=True)
    out = pgo.StringBuilder()
    times: dict[str, list[float]] = {"plain": [], "pgo": []}
    results: dict[str, bytes] = {}
    for _ in range(args.repeat):            # interleaved: plain, pgo, plain, pgo ...
        t0 = time.perf_counter()
        results["plain"] = run_plain(lines)
        times["plain"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        results["pgo"] = run_pgo(lines, arena, out)
        times["pgo"].append(time.perf_counter() - t0)
    same = results["plain"] == results["pgo"]
    stats = arena.stats()
    summary = {
        "records": args.records, "values": args.values, "repeat": args.repeat,
        "identical_output": same, "output_bytes": len(results["pgo"]),
        "plain_s": statistics.median(times["plain"]), "pgo_s": statistics.median(times["pgo"]),
        "arena": {k: stats[k] for k in ("allocations", "capacity", "peak", "live_blocks",
                                        "chunks")},
    }
    summary["pgo_over_plain"] = summary["pgo_s"] / summary["plain_s"]
    json.dump(summary, sys.stdout, indent=2)
    print()
    return 0 if same and stats["live_blocks"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
