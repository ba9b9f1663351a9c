"""``pgo bench``: the program without and with a config, side by side."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import datetime, timezone
from typing import Any

from pgo.commands._options import add_html, add_quiet
from pgo.commands._program import add_arguments
from pgo.commands._program import target as program_target


class BenchCommand:
    """Measure a program without (baseline) and with a pgo config.

        pgo bench --config pgo.toml [-n 10] [--peers jemalloc,gc-freeze] -- python job.py args

    Every run is a fresh process; after one warm-up run per arm the arms
    run interleaved (A B A B, reversed every other round) so that a noisy
    machine hits all alike.  Per run: wall and CPU time, peak RSS, minor
    page faults, GC collections and pause, allocator statistics.  Reported:
    medians, each arm's ratio to the baseline with a bootstrap 95%
    confidence interval and a Mann-Whitney U test ("not significant" is
    said when it is not), as a table, a JSON file and an HTML page with the
    distributions (no network needed to open it).

    Peers (each its own arm): jemalloc, mimalloc, tcmalloc (LD_PRELOAD of
    the system's library), gc-freeze (gc.freeze() + thresholds 50000/20/100,
    the usual hand-set recipe), gc-off (gc.disable(): the floor).

    With a config, two verdict lines close the table: time (faster, slower
    or no significant difference) and peak RSS against the baseline's,
    flagged (and warned on stderr) when the config adds more than
    --max-rss-increase percent (default 10).
    """

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-c", "--config", metavar="FILE",
                            help="the config to measure (without it: only baseline and peers)")
        parser.add_argument("-n", "--runs", type=int, default=7, metavar="N",
                            help="runs per arm, after one warm-up each (default: 7)")
        parser.add_argument("--peers", default="", metavar="LIST",
                            help="comma-separated: jemalloc, mimalloc, tcmalloc, gc-freeze, gc-off")
        parser.add_argument("-o", "--output", default="bench.json", metavar="FILE",
                            help="results as JSON (default: bench.json)")
        add_html(parser, "the HTML report (default: the JSON's name with .html)")
        parser.add_argument("--max-rss-increase", type=float, default=10.0, metavar="PCT",
                            help="peak RSS the config may add over the baseline's, in percent, "
                                 "before its memory verdict is flagged (default: 10)")
        add_quiet(parser, "no progress bar")
        add_arguments(parser, "measure")

    def run(self, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
        from pgo import config
        from pgo._errors import CommandError
        from pgo.bench import report, runner
        if args.runs < 2:
            parser.error("--runs must be at least 2")
        if args.max_rss_increase < 0:
            parser.error("--max-rss-increase must be 0 or more (percent)")
        target = program_target(args, parser)
        if args.config:
            try:
                config.load(args.config)
            except config.ConfigError as e:
                raise CommandError(str(e), exit_code=2) from None
        peers = [p.strip() for p in args.peers.split(",") if p.strip()]
        arms, warnings = runner.make_arms(args.config, peers)
        for w in warnings:
            print(f"pgo bench: warning: {w}", file=sys.stderr)
        runs = _run_with_progress(target, arms, args.runs, quiet=args.quiet)
        doc = report.document(target.command(), args.config, [a.name for a in arms], runs,
                              warnings, {"date": datetime.now(timezone.utc).isoformat(),
                                         "machine": f"{platform.node()}, {os.cpu_count()} CPUs, "
                                                    f"Python {platform.python_version()}",
                                         "runs_per_arm": args.runs})
        doc["verdict"] = report.verdict(doc["summary"], args.max_rss_increase)
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, default=str)
        html_path = args.html or os.path.splitext(args.output)[0] + ".html"
        report.write_html(doc, html_path)
        print_table(doc)
        v = doc["verdict"]
        if v is not None and v["rss_over"]:
            print(f"pgo bench: warning: the config's {v['rss']}", file=sys.stderr)
        print(f"wrote {args.output} and {html_path}")
        failed = sum(1 for r in runs if r.get("error"))
        if failed:
            print(f"pgo bench: warning: {failed} run(s) failed; see 'error' in {args.output}",
                  file=sys.stderr)
        return 0


def _run_with_progress(target: Any, arms: list[Any], runs: int, *, quiet: bool) -> list[Any]:
    from pgo.bench import runner
    if quiet:
        return runner.bench(target, arms, runs)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    with Progress(TextColumn("[bold]pgo bench[/] {task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} runs"), TimeElapsedColumn(),
                  transient=True) as progress:
        task = progress.add_task("warm-up", total=len(arms) * (runs + 1))

        def tick(arm: str, done: int, total: int) -> None:
            progress.update(task, completed=done, description=arm or "done")
        return runner.bench(target, arms, runs, progress=tick)


def print_table(doc: dict[str, Any]) -> None:
    from rich import box
    from rich.table import Table

    from pgo.commands._render import console
    s = doc["summary"]
    con = console()
    t = Table(title=f"pgo bench: {' '.join(doc['command'])}", box=box.SIMPLE_HEAVY,
              title_justify="left")
    t.add_column("arm")
    for col in ("wall time", "vs baseline [95% CI]", "", "peak RSS", "page faults", "GC pause"):
        t.add_column(col, justify="right")
    for arm in doc["arms"]:
        row = s[arm]
        w = row["wall_s"]
        if w["median"] is None:
            t.add_row(arm, "-", "every run failed", "", "-", "-", "-")
            continue
        ratio = ("1.000x" if arm == "baseline" else
                 f"{w['ratio']:.3f}x [{w['ci'][0]:.3f}-{w['ci'][1]:.3f}]" if w["ratio"] else "-")
        speed = ("" if arm == "baseline" or not w["ratio"] else
                 (f"{1 / w['ratio']:.2f}x faster" if w["ratio"] < 1 else
                  f"{w['ratio']:.2f}x slower") + ("" if w["significant"] else
                                                  " (not significant)"))
        t.add_row(arm, f"{w['median']:.3f} s", ratio, speed,
                  f"{row['max_rss_kib']['median'] / 1024:.0f} MiB",
                  f"{row['minor_faults']['median']:,.0f}",
                  f"{row['gc_pause_s']['median']:.3f} s")
    con.print(t)
    v = doc.get("verdict")
    if v:
        con.print(f"config, {v['time']}")
        con.print(("[yellow]" if v["rss_over"] else "") + f"config, {v['rss']}"
                  + ("[/]" if v["rss_over"] else ""))
    for w in doc.get("warnings", []):
        con.print(f"[yellow]warning:[/] {w}")
