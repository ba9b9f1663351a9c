"""The HTML page of a profile and its analysis, for ``pgo show --html``
and ``pgo analyze --html``: one self-contained file (plots embedded as
PNG, no network) that tells the whole story, top to bottom:

1. the run (command, duration, exit, versions) and any warnings;
2. the profile: top sites by bytes, live bytes over time, every GC pause
   over time, and an icicle ("flame") graph of the allocated bytes by
   module, function and line;
3. the analysis: each rule of the config with its reason, the GC plan
   with its reason, the sites' patterns and strategies, suggestions.

The bench page (``pgo bench``) is ``pgo.bench.report``; both share the
look (and ``pgo._sizes.fmt_plain``, plain numbers on every axis).
"""

from __future__ import annotations

import base64
import html
import io
import os
from typing import Any

import numpy as np

from pgo import bundle as fmt
from pgo._sizes import fmt_bytes, fmt_plain, fmt_seconds
from pgo.analysis import features
from pgo.analysis.optimizer import Plan
from pgo.analysis.summary import live_curve, summarize

STYLE = """body{font-family:sans-serif;margin:2em;max-width:1400px;}
table{border-collapse:collapse;margin-bottom:1em;} td,th{border:1px solid #ccc;padding:4px 8px;
vertical-align:top;font-size:90%;} th{background:#f3f3f3;text-align:left;}
.plots{display:flex;flex-wrap:wrap;gap:12px;} figure{margin:0;} img{max-width:100%;height:auto;}
.warn{color:#a60;} code{background:#f6f6f6;padding:0 3px;} td.n{text-align:right;}"""


def write(bundle: fmt.Bundle, plan: Plan, path: str, *, top: int = 15) -> None:
    """Write the page of ``bundle`` and its ``plan`` to ``path``."""
    summary = summarize(bundle, top=top)
    traced, names = features.collect(bundle)[:2]
    parts = [_head(summary), _profile(bundle, summary, traced, names), _analysis(plan, top)]
    page = ("<!doctype html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>pgo: {html.escape(str(bundle.path))}</title><style>{STYLE}</style>"
            "</head><body>" + "".join(parts) + "</body></html>\n")
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, path)


def _e(x: Any) -> str:
    return html.escape(str(x))


def _head(s: dict[str, Any]) -> str:
    ex = s["exit"] or {}
    status = f"killed by {ex['signal']}" if ex.get("signal") else f"exit {ex.get('code')}"
    warn = "".join(f"<li class=\"warn\">{_e(w)}</li>" for w in s["warnings"])
    return (f"<h1>pgo: {_e(s['bundle'])}</h1>"
            f"<p><code>{_e(' '.join(s['command'][1:]) or '?')}</code>: "
            f"{_e(fmt_seconds(s['duration_s'] or 0.0))}, {_e(status)}; Python {_e(s['python'])}, "
            f"numpy {_e(s['numpy'])}, pgo {_e(s['pgo'])}</p>"
            + (f"<h3>Warnings</h3><ul>{warn}</ul>" if warn else ""))


# -- the profile ------------------------------------------------------------------------

def _profile(b: fmt.Bundle, s: dict[str, Any], traced: dict[str, features.Traced],
             names: dict[int, str]) -> str:
    rows = "".join(
        f"<tr><td><code>{_e(r['site'])}</code></td><td>{_e(r['domain'])}</td>"
        f"<td class=\"n\">{r['count']:,.0f}</td><td class=\"n\">{_e(fmt_bytes(r['bytes']))}</td>"
        f"<td class=\"n\">{_e(fmt_bytes(r['min_size']))}-{_e(fmt_bytes(r['max_size']))}</td>"
        f"<td>{_e(r['lifetime'])} ({_e(fmt_seconds(r['lifetime_median_s']))} median)</td>"
        f"<td class=\"n\">{r['alive_at_end']:.0%}</td></tr>" for r in s["top_by_bytes"])
    table = ("<table><tr><th>site</th><th>domain</th><th>blocks</th><th>bytes</th>"
             "<th>sizes</th><th>lifetime</th><th>alive at end</th></tr>" + rows + "</table>"
             if rows else "<p>No allocation was recorded.</p>")
    g = s.get("gc")
    gc_line = (f"<p>GC: {g['collections']:,} collections, {g['total_pause_s'] * 1e3:,.1f} ms "
               f"in all ({g['share_of_wall']:.1%} of the run), longest pause "
               f"{g['pause_max_ms']:.2f} ms.</p>" if g else "<p>GC: not recorded.</p>")
    plots = [p for p in (_live_plot(traced, s["duration_s"]), _gc_plot(b),
                         _icicle(traced, names)) if p is not None]
    figures = "".join(f"<figure><img alt=\"{_e(t)}\" src=\"data:image/png;base64,{png}\">"
                      f"<figcaption>{_e(t)}</figcaption></figure>" for t, png in plots)
    return (f"<h2>Profile</h2><h3>Top sites by bytes</h3>{table}{gc_line}"
            f"<div class=\"plots\">{figures}</div>")


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _pyplot() -> Any:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _plain_axis(ax: Any) -> None:
    from matplotlib.ticker import FuncFormatter
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt_plain(v)))


def _live_plot(traced: dict[str, features.Traced], run_s: float) -> tuple[str, str] | None:
    if not traced:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for domain, tr in sorted(traced.items()):
        end = max(tr.blocks.end, run_s, 1e-9)
        grid = np.linspace(0, end, 200)
        ax.plot(grid, live_curve(tr.blocks, None, 200, end) / 2**20, label=domain)
    ax.set_xlabel("seconds from the start")
    ax.set_title("live bytes over time (MiB)")
    _plain_axis(ax)
    ax.legend()
    return "live bytes over time, per domain (objects: estimated from samples)", _png(fig)


def _gc_plot(b: fmt.Bundle) -> tuple[str, str] | None:
    g = b.gc
    if not g or not g["pauses"]["duration_ns"]:
        return None
    plt = _pyplot()
    t = np.asarray(g["pauses"]["t_s"], float)
    d = np.asarray(g["pauses"]["duration_ns"], float) / 1e6
    gen = np.asarray(g["pauses"]["generation"], int)
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for k, color in ((0, "tab:blue"), (1, "tab:orange"), (2, "tab:red")):
        m = gen == k
        if m.any():
            ax.scatter(t[m], d[m], s=10, color=color, label=f"generation {k}")
    ax.set_xlabel("seconds from the start")
    ax.set_title("GC pauses (ms)")
    _plain_axis(ax)
    ax.legend()
    return "every GC pause: when, how long, which generation", _png(fig)


def _icicle(traced: dict[str, features.Traced], names: dict[int, str]
            ) -> tuple[str, str] | None:
    """Allocated bytes by module, then function, then line: each level a
    row, each name a bar as wide as its bytes (a flame graph of sites,
    which have no call stacks, drawn top down)."""
    rows: list[tuple[str, str, str, float]] = []
    for tr in traced.values():
        bl = tr.blocks
        sids, inverse = np.unique(bl.site, return_inverse=True)
        per_site = np.bincount(inverse, weights=bl.weight * bl.size.astype(np.float64),
                               minlength=len(sids))
        for sid, nbytes in zip(sids.tolist(), per_site.tolist()):
            module, _, rest = names.get(int(sid), f"?:site {sid}:?").partition(":")
            function, _, line = rest.rpartition(":")
            rows.append((module or "?", function or "?", line or "?", float(nbytes)))
    total = sum(r[3] for r in rows)
    if total <= 0:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(12.8, 3.2))
    colors = plt.get_cmap("tab20")
    modules = sorted({r[0] for r in rows})
    for level in range(3):
        groups: dict[tuple[str, ...], float] = {}
        for module, function, line, nbytes in rows:
            key = (module, function, line)[:level + 1]
            groups[key] = groups.get(key, 0.0) + nbytes
        x = 0.0
        for key, value in sorted(groups.items()):
            w = value / total
            ax.barh(-level, w, left=x, height=0.92, edgecolor="white",
                    color=colors(modules.index(key[0]) % 20))
            if w > 0.04:
                ax.text(x + w / 2, -level, f"{key[-1]}\n{fmt_bytes(value)}", ha="center",
                        va="center", fontsize=7, clip_on=True)
            x += w
    ax.set_yticks([0, -1, -2], ["module", "function", "line"])
    ax.set_xlim(0, 1)
    ax.set_xticks([])
    ax.set_title(f"allocated bytes by module, function and line ({fmt_bytes(total)} in all)")
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    return "where the bytes were allocated (width: share of all bytes)", _png(fig)


# -- the analysis -----------------------------------------------------------------------

def _analysis(plan: Plan, top: int) -> str:
    cfg = plan.config
    rules = []
    for sc in cfg.size_classes:
        hi = fmt_bytes(sc.max_bytes) if sc.max_bytes is not None else "up"
        settings = ", ".join(f"{k} = {v}" for k, v in sc.settings)
        rules.append((f"numpy {fmt_bytes(sc.min_bytes)}..{hi} -> {sc.allocator}", settings,
                      sc.reason))
    for site in cfg.sites:
        settings = ", ".join(f"{k} = {v}" for k, v in site.settings)
        rules.append((f"while {site.function} runs -> {site.allocator}", settings, site.reason))
    if cfg.gc is not None:
        g = cfg.gc
        what = "thresholds " + str(tuple(g.thresholds)) if g.thresholds else "defaults kept"
        if g.full_collection == "growth":
            what += f", full collections at {g.growth_factor}x heap growth"
        if g.freeze_after_startup:
            what += f", gc.freeze() at {g.startup_s} s"
        rules.append(("GC plan", what, g.reason))
    rule_rows = "".join(f"<tr><td><b>{_e(a)}</b></td><td><code>{_e(b)}</code></td>"
                        f"<td>{_e(c)}</td></tr>" for a, b, c in rules)
    decisions = sorted(plan.decisions, key=lambda d: (-d.site.bytes, d.site.name))[:top]
    dec_rows = "".join(
        f"<tr><td><code>{_e(d.site.name)}</code></td><td>{_e(d.site.domain)}</td>"
        f"<td class=\"n\">{_e(fmt_bytes(d.site.bytes))}</td><td>{_e(d.pattern)}</td>"
        f"<td>{_e(d.strategy)}</td><td class=\"n\">{d.confidence:.2f}</td>"
        f"<td>{_e(d.reason)}</td></tr>" for d in decisions)
    sugg = "".join(f"<li>{_e(x)}</li>" for x in plan.suggestions)
    warn = "".join(f"<li class=\"warn\">{_e(x)}</li>" for x in plan.failed_runs + plan.warnings)
    return ("<h2>Analysis</h2><h3>The config's rules</h3>"
            + ("<table><tr><th>rule</th><th>settings</th><th>reason</th></tr>" + rule_rows
               + "</table>" if rule_rows else "<p>Nothing to change: no rule.</p>")
            + ("<h3>Rules weighed and left out</h3><ul>"
               + "".join(f"<li>{_e(x)}</li>" for x in plan.left_out) + "</ul>"
               if plan.left_out else "")
            + "<h3>Sites: pattern and strategy (by bytes)</h3>"
            + ("<table><tr><th>site</th><th>domain</th><th>bytes</th><th>pattern</th>"
               "<th>strategy</th><th>confidence</th><th>reason</th></tr>" + dec_rows
               + "</table>" if dec_rows else "<p>No sites.</p>")
            + (f"<h3>Suggestions (changes no config can make)</h3><ul>{sugg}</ul>" if sugg else "")
            + (f"<h3>Warnings</h3><ul>{warn}</ul>" if warn else ""))
