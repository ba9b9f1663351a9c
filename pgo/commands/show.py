"""``pgo show``: a profile bundle summarized in the terminal."""

from __future__ import annotations

import argparse
import json
import sys

from pgo.commands._options import add_html


class ShowCommand:
    """Summarize a profile bundle.

    Top allocation sites by bytes and by count (numpy data: every
    allocation; Python objects: estimated from samples), each with its
    lifetime class (short / medium / long); GC collections, pauses and the
    share of wall time they took; CPU hot functions from py-spy; possible
    leaks (sites whose live bytes keep rising); the profiler's overhead and
    any warnings (a truncated trace says where it stopped).

    --json prints the same as JSON, for scripts.  --html FILE writes one
    self-contained page with the profile (top sites, live bytes over time,
    every GC pause, where the bytes were allocated) and the analysis `pgo
    analyze` would make of it (each rule and its reason).
    """

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("bundle", help="a bundle directory written by `pgo profile`")
        parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
        parser.add_argument("--top", type=int, default=10, metavar="N",
                            help="rows per table (default: 10)")
        add_html(parser, "also write the profile and its analysis as an HTML page")

    def run(self, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
        from pgo import bundle as fmt
        from pgo.analysis.summary import summarize
        if args.top < 1:
            parser.error("--top must be at least 1")
        b = fmt.load(args.bundle)
        summary = summarize(b, top=args.top)
        if args.html:
            from pgo.analysis.optimizer import ProfileGuidedOptimizer
            from pgo.commands import _page
            _page.write(b, ProfileGuidedOptimizer(b).analyze(), args.html, top=args.top)
            print(f"wrote {args.html}", file=sys.stderr)
        if args.json:
            json.dump(summary, sys.stdout, indent=1, sort_keys=True)
            print()
            return 0
        _render(summary)
        return 0


def _render(s: dict) -> None:
    from rich import box
    from rich.table import Table

    from pgo._sizes import fmt_bytes, fmt_seconds
    from pgo.commands._render import console

    con = console()
    ex = s["exit"] or {}
    status = f"killed by {ex['signal']}" if ex.get("signal") else f"exit {ex.get('code')}"
    con.print(f"[bold]{s['bundle']}[/]: `{' '.join(s['command'][1:]) or '?'}`  "
              f"{fmt_seconds(s['duration_s'] or 0.0)}, {status}; Python {s['python']}, "
              f"numpy {s['numpy']}, pgo {s['pgo']}")
    con.print("collectors: " + ", ".join(f"{k} {v}" for k, v in sorted(s["collectors"].items())))

    for title, rows, key in (("Top sites by bytes", s["top_by_bytes"], "bytes"),
                             ("Top sites by count", s["top_by_count"], "count")):
        if not rows:
            continue
        t = Table(title=title, box=box.SIMPLE, title_justify="left")
        t.add_column("site", overflow="fold", min_width=24, ratio=1)
        for col, just in (("domain", "left"), ("allocs", "right"), ("bytes", "right"),
                          ("mean", "right"), ("lifetime", "left"), ("median life", "right"),
                          ("alive at end", "right")):
            t.add_column(col, justify=just, no_wrap=True)
        for r in rows:
            t.add_row(r["site"], r["domain"], f"{r['count']:,.0f}", fmt_bytes(r["bytes"]),
                      fmt_bytes(r["mean_size"]), r["lifetime"],
                      fmt_seconds(r["lifetime_median_s"]), f"{r['alive_at_end']:.0%}")
        con.print(t)
    if s["tracemalloc_top"]:
        t = Table(title="tracemalloc: top sites by peak live bytes", box=box.SIMPLE,
                  title_justify="left")
        for col in ("site", "domain", "peak", "peak count", "at end", "lifetime"):
            t.add_column(col)
        for r in s["tracemalloc_top"]:
            t.add_row(r["site"], r["domain"], fmt_bytes(r["peak_bytes"]), f"{r['peak_count']:,}",
                      fmt_bytes(r["final_bytes"]), r["lifetime"])
        con.print(t)
    g = s["gc"]
    if g:
        con.print(f"[bold]GC[/]: {g['collections']:,} collections, "
                  f"{fmt_seconds(g['total_pause_s'])} paused ({g['share_of_wall']:.1%} of wall "
                  f"time); pauses p50 {g['pause_p50_ms']:.2f} ms, p99 {g['pause_p99_ms']:.2f} ms, "
                  f"max {g['pause_max_ms']:.2f} ms; {g['collected_per_collection']:.2f} objects "
                  f"freed per collection; thresholds {tuple(g['thresholds'])}")
        t = Table(box=box.SIMPLE)
        for col in ("generation", "collections", "collected", "uncollectable", "paused", "max pause"):
            t.add_column(col, justify="right")
        for r in g["generations"]:
            t.add_row(str(r["generation"]), f"{r['collections']:,}", f"{r['collected']:,}",
                      f"{r['uncollectable']:,}", fmt_seconds(r["pause_s"]),
                      f"{r['max_pause_ms']:.2f} ms")
        con.print(t)
    c = s["cpu"]
    if c:
        t = Table(title=f"CPU: hot functions ({c['samples']:,} py-spy samples)", box=box.SIMPLE,
                  title_justify="left")
        for col, just in (("function", "left"), ("self", "right"), ("total", "right")):
            t.add_column(col, justify=just)
        for r in c["hot"]:
            t.add_row(r["function"], f"{r['self_share']:.1%}", f"{r['total_share']:.1%}")
        con.print(t)
    if s["possible_leaks"]:
        con.print("[bold yellow]Possible leaks[/] (live bytes rising through the run):")
        for leak in s["possible_leaks"]:
            con.print(f"  {leak['site']} ({leak['domain']}): {fmt_bytes(leak['live_end_bytes'])} "
                      f"live at the end")
    else:
        con.print("Possible leaks: none (no site's live bytes rose through the run)")
    o = s["overhead"] or {}
    if o:
        share = o.get("measured_share")
        con.print(f"Profiler overhead measured in the process: {fmt_seconds(o.get('measured_s', 0.0))}"
                  + (f" ({share:.1%} of the run)" if share is not None else "")
                  + f"; {o.get('events_recorded', 0):,} events recorded")
    for w in s["warnings"]:
        con.print(f"[yellow]warning:[/] {w}")
