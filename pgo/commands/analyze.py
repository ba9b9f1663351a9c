"""``pgo analyze``: a profile bundle in, an allocator + GC config out."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pgo.commands._options import add_html, add_quiet


class AnalyzeCommand:
    """Turn a profile bundle into a pgo config.

        pgo analyze BUNDLE [-o pgo.toml] [--explain]

    Every allocation site is described by its numbers (sizes, lifetimes,
    LIFO and freed-together ratios, threads, CPU share), sites are
    clustered (scipy), and each cluster and site gets a pattern (LIFO
    scratch, scoped temporaries, fixed-size churn, large repeated blocks,
    long-lived, irregular; and from a site's own trace: frees on another
    thread, a pattern that changes over the run, small blocks freed in no
    order while some live on) and a strategy (a stack or a cache while a
    function runs; a slab, cache, hierarchical, adaptive or compacting
    allocator for a size class; or leave it to the system), with a
    confidence and the reason.  The GC
    plan (thresholds, full collections, gc.freeze) comes from the measured
    collections and pauses.  The config is written deterministically: the
    same bundle gives the same file.  Apply it with `pgo run`.

    --explain prints the sites, the clusters and the GC plan with their
    reasons; code changes no config can make are listed at the end.

    A profile of a run that failed (an exit code other than 0, or 130/143
    for ^C/SIGTERM, or a crash) is refused unless --allow-failed; one of a
    run stopped by ^C or SIGTERM gives a config with a warning.  Warnings
    go to stderr, with -q too.
    """

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("bundle", help="a bundle directory written by `pgo profile` "
                                           "(or `pgo merge`)")
        parser.add_argument("-o", "--output", default="pgo.toml", metavar="FILE",
                            help="the config to write (default: pgo.toml)")
        parser.add_argument("--explain", action="store_true",
                            help="print every decision with its reason, and the clusters")
        parser.add_argument("--top", type=int, default=15, metavar="N",
                            help="sites in the --explain table (default: 15, by bytes)")
        parser.add_argument("--json", action="store_true",
                            help="print the plan as JSON (decisions, clusters, config)")
        add_html(parser, "also write the profile and the plan as an HTML page (the same page "
                         "as `pgo show --html`)")
        parser.add_argument("--allow-failed", action="store_true",
                            help="write a config even when the profiled run failed (an exit "
                                 "code other than 0, 130 or 143, or a crash); without it that "
                                 "is an error")
        add_quiet(parser, "print nothing but warnings (on stderr)")

    def run(self, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
        from pgo import config
        from pgo.analysis.optimizer import ProfileGuidedOptimizer
        if args.top < 1:
            parser.error("--top must be at least 1")
        optimizer = ProfileGuidedOptimizer(args.bundle)
        plan = optimizer.analyze()
        if plan.failed_runs and not args.allow_failed:
            from pgo._errors import CommandError
            raise CommandError("; ".join(plan.failed_runs) + ": a config made from it would "
                               "describe a run that did not do its work. Profile a run that "
                               "succeeds, or pass --allow-failed to write one anyway")
        out = Path(args.output)
        config.write(plan.config, out)
        if args.html:
            from pgo.commands import _page
            _page.write(optimizer.bundle, plan, args.html, top=args.top)
            print(f"pgo analyze: wrote {args.html}", file=sys.stderr)
        # Loud, and never only on stdout: a config from a doubtful profile.
        for w in plan.failed_runs + plan.warnings:
            print(f"pgo analyze: warning: {w}", file=sys.stderr)
        if args.json:
            json.dump(_plan_json(plan), sys.stdout, indent=1, sort_keys=True)
            print()
            return 0
        if args.quiet:
            return 0
        from pgo.commands._render import console
        con = console(170 if args.explain else 120)
        if args.explain:
            _explain(con, plan, args.top)
        _summary(con, plan, out)
        return 0


def _plan_json(plan) -> dict:
    from dataclasses import asdict

    from pgo import config
    return {
        "decisions": [{"site": d.site.name, "domain": d.site.domain, "cluster": d.cluster,
                       "pattern": d.pattern, "strategy": d.strategy,
                       "confidence": d.confidence, "reason": d.reason,
                       "features": asdict(d.site)} for d in plan.decisions],
        "clusters": [asdict(c) for c in plan.clusters],
        "suggestions": plan.suggestions,
        "left_out": plan.left_out,
        "warnings": plan.warnings,
        "bytes_by_strategy": plan.bytes_by_strategy(),
        "config": config.dumps(plan.config),
    }


def _explain(con, plan, top: int) -> None:
    from rich import box
    from rich.table import Table

    from pgo._sizes import fmt_bytes, fmt_seconds
    t = Table(title="Sites → pattern → strategy (by bytes)", box=box.SIMPLE,
              title_justify="left")
    t.add_column("site", overflow="fold", min_width=22, ratio=1)
    for col in ("domain", "bytes", "cl.", "pattern", "strategy", "conf"):
        t.add_column(col, no_wrap=True)
    t.add_column("reason", overflow="fold", ratio=3)
    for d in sorted(plan.decisions, key=lambda d: (-d.site.bytes, d.site.name))[:top]:
        t.add_row(d.site.name, d.site.domain, fmt_bytes(d.site.bytes), str(d.cluster),
                  d.pattern, d.strategy, f"{d.confidence:.2f}", d.reason)
    con.print(t)
    c = Table(title="Clusters (prototype: byte-weighted medians)", box=box.SIMPLE,
              title_justify="left")
    for col in ("cl.", "sites", "bytes", "pattern", "mean size", "median life",
                "alive at end", "modal", "LIFO", "together", "≥1 MiB"):
        c.add_column(col, no_wrap=True)
    for cl in plan.clusters:
        p = cl.prototype
        c.add_row(str(cl.index), str(cl.size), fmt_bytes(cl.bytes), cl.pattern,
                  fmt_bytes(p["mean_size"]), fmt_seconds(p["life_median_s"]),
                  f"{p['alive_end']:.0%}", f"{p['modal_share']:.0%}", f"{p['lifo']:.0%}",
                  f"{p['together']:.0%}", f"{p['large_share']:.0%}")
    con.print(c)


def _summary(con, plan, out: Path) -> None:
    from pgo._sizes import fmt_bytes
    cfg = plan.config
    shares = plan.bytes_by_strategy()
    numpy_total = sum(v for k, v in shares.items() if k.startswith("numpy:")) or 0.0
    con.print(f"[bold]{len(plan.decisions)}[/] sites in {len(plan.clusters)} clusters; "
              "numpy data by strategy: " + (", ".join(
                  f"{k.split(':')[1]} {v / numpy_total:.0%}" for k, v in sorted(shares.items())
                  if k.startswith("numpy:")) if numpy_total else "none recorded"))
    for sc in cfg.size_classes:
        hi = fmt_bytes(sc.max_bytes) if sc.max_bytes is not None else "up"
        con.print(f"  numpy {fmt_bytes(sc.min_bytes)}..{hi} -> {sc.allocator}: {sc.reason}")
    for site in cfg.sites:
        con.print(f"  while {site.function} runs -> {site.allocator}: {site.reason}")
    for why in plan.left_out:
        con.print(f"  left out: {why}")
    if not cfg.size_classes and not cfg.sites and not plan.left_out:
        con.print("  numpy: no allocation pattern here that a pgo allocator serves better")
    if cfg.gc is not None:
        g = cfg.gc
        what = ("thresholds " + str(tuple(g.thresholds)) if g.thresholds else "defaults kept")
        if g.full_collection == "growth":
            what += f", full collections at {g.growth_factor}x heap growth"
        if g.freeze_after_startup:
            what += f", gc.freeze() at {g.startup_s} s"
        con.print(f"  GC: {what}: {g.reason}")
    for s in plan.suggestions:
        con.print(f"  [yellow]suggestion:[/] {s}")
    con.print(f"wrote {out}; next: pgo run --config {out} -- python ...", soft_wrap=True)
