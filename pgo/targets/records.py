"""An object-heavy record-building job that makes the GC work.

Parses synthetic log lines into dicts holding lists, groups them by user
and keeps them all: millions of container objects, almost none of them
garbage.  The cyclic GC keeps scanning the growing heap for cycles that are
not there: the pattern GC thresholds (and gc.freeze) are for.

    python pgo/targets/records.py [--records N]
"""

import argparse
from collections import defaultdict


def parse(i):
    user = f"user{i % 5000}"
    return {"id": i, "user": user, "tags": [user, "t" + str(i % 7)],
            "values": [i, i * 2, i % 13]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=600_000)
    args = parser.parse_args(argv)
    by_user = defaultdict(list)
    for i in range(args.records):
        rec = parse(i)
        by_user[rec["user"]].append(rec)
    sizes = sorted(len(v) for v in by_user.values())
    top = max(by_user, key=lambda u: sum(r["values"][2] for r in by_user[u]))
    print(f"records: {args.records} records, {len(by_user)} users, "
          f"median group {sizes[len(sizes) // 2]}, top {top}")


if __name__ == "__main__":
    main()
