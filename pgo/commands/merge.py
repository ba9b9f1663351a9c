"""``pgo merge``: several runs' bundles as one, for `pgo analyze`."""

from __future__ import annotations

import argparse
import sys


class MergeCommand:
    """Combine bundles from several runs (or hosts) into one.

        pgo merge A B ... -o MERGED [--force]

    The runs are kept side by side in MERGED/runs/N; `pgo analyze MERGED`
    and `pgo show MERGED` read them as one run after another, so a run
    twice as long weighs twice as much.  GC pauses and CPU samples are
    added up.  Bundles of another program, of other Python, numpy or pgo
    versions, with another object sampling rate, or from a run that did not
    complete are reported and not merged; --force merges them anyway and
    records the problems in the manifest.
    """

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("bundles", nargs="+", metavar="BUNDLE", help="bundles to combine")
        parser.add_argument("-o", "--output", required=True, metavar="DIR",
                            help="the merged bundle to create")
        parser.add_argument("--force", action="store_true",
                            help="merge even mismatched bundles (the problems are recorded)")

    def run(self, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
        from pgo import bundle
        out, problems = bundle.merge(args.bundles, args.output, force=args.force)
        for p in problems:
            print(f"pgo merge: warning: merged despite: {p}", file=sys.stderr)
        print(f"pgo merge: wrote {out} ({len(args.bundles)} runs); next: pgo analyze {out}",
              file=sys.stderr)
        return 0
