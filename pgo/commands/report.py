"""``pgo report``: the HTML report of a bench file, rebuilt."""

from __future__ import annotations

import argparse


class ReportCommand:
    """Rebuild the HTML report (and print the table) of a `pgo bench` JSON file.

        pgo report bench.json -o report.html

    The statistics are recomputed from the runs in the file.
    """

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("bench", help="a JSON file written by `pgo bench`")
        parser.add_argument("-o", "--output", default="report.html", metavar="FILE",
                            help="the HTML report (default: report.html)")

    def run(self, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
        from pgo.bench import report
        from pgo.commands.bench import print_table
        doc = report.load(args.bench)
        report.write_html(doc, args.output)
        print_table(doc)
        print(f"wrote {args.output}")
        return 0
