"""Bench results: the summary (every arm against the baseline, per metric),
the JSON file, and an HTML report whose plots are embedded (no network)."""

from __future__ import annotations

import base64
import html
import io
import json
import os
from typing import Any

from pgo._sizes import fmt_plain
from pgo.bench.stats import compare

METRICS = (("wall_s", "wall time", "s"), ("cpu_s", "CPU time", "s"),
           ("max_rss_kib", "peak RSS", "KiB"), ("minor_faults", "minor page faults", ""),
           ("gc_pause_s", "GC pause", "s"), ("gc_pauses", "GC collections", ""))
FORMAT = "pgo-bench"
VERSION = 1


def summarize(runs: list[dict[str, Any]], arms: list[str]) -> dict[str, Any]:
    by_arm = {a: [r for r in runs if r["arm"] == a and not r.get("error")] for a in arms}
    base = by_arm.get("baseline", [])
    out: dict[str, Any] = {}
    for arm in arms:
        rows = by_arm[arm]
        out[arm] = {"runs": len(rows), "failed": sum(1 for r in runs if r["arm"] == arm
                                                     and r.get("error"))}
        for key, _, _ in METRICS:
            out[arm][key] = compare([float(r.get(key, 0) or 0) for r in base],
                                    [float(r.get(key, 0) or 0) for r in rows])
        allocator = [r["runtime"] for r in rows if "runtime" in r]
        if allocator:
            out[arm]["runtime_stats"] = allocator[-1]
    return out


DEFAULT_MAX_RSS_INCREASE = 10.0     # percent: more is flagged


def verdict(summary: dict[str, Any], max_rss_increase: float = DEFAULT_MAX_RSS_INCREASE,
            arm: str = "config") -> dict[str, Any] | None:
    """The config arm's verdict on time and on memory, in numbers and in
    words (None without that arm): faster / slower / no significant
    difference, and its peak RSS against the baseline's, flagged when it is
    more than ``max_rss_increase`` percent over."""
    row = summary.get(arm)
    if not row or row["wall_s"]["ratio"] is None or row["max_rss_kib"]["ratio"] is None:
        return None
    w, m = row["wall_s"], row["max_rss_kib"]
    if w["significant"]:
        speed = (f"{1 / w['ratio']:.2f}x faster" if w["ratio"] < 1 else
                 f"{w['ratio']:.2f}x slower")
        time_text = (f"time: {speed} than the baseline ({w['median']:.3f} vs "
                     f"{w['baseline_median']:.3f} s, 95% CI of the ratio "
                     f"{w['ci'][0]:.3f}-{w['ci'][1]:.3f}, p={_p(w['p'])})")
    else:
        time_text = (f"time: no significant difference ({w['median']:.3f} vs "
                     f"{w['baseline_median']:.3f} s, ratio {w['ratio']:.3f}, "
                     f"p={_p(w['p'])})")
    increase = (m["ratio"] - 1.0) * 100
    over = increase > max_rss_increase
    rss_text = (f"peak RSS: {increase:+.1f}% ({m['median'] / 1024:.0f} vs "
                f"{m['baseline_median'] / 1024:.0f} MiB), "
                + (f"over the {max_rss_increase:g}% allowed (--max-rss-increase): this config "
                   f"buys its speed with memory" if over else
                   f"within the {max_rss_increase:g}% allowed"))
    return {"time": time_text, "rss": rss_text, "time_ratio": w["ratio"],
            "time_significant": w["significant"], "rss_increase_percent": round(increase, 2),
            "max_rss_increase_percent": max_rss_increase, "rss_over": over}


def _p(p: float | None) -> str:
    # A Mann-Whitney p is never exactly 0 with runs on both sides.
    if p is None:
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def document(target: list[str], config: str | None, arms: list[str], runs: list[dict[str, Any]],
             warnings: list[str], meta: dict[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "command": target, "config": config,
            "arms": arms, "runs": runs, "summary": summarize(runs, arms),
            "warnings": warnings, **meta}


def load(path: str) -> dict[str, Any]:
    from pgo._errors import ProfileFormatError
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise ProfileFormatError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise ProfileFormatError(f"{path}: not a pgo bench file ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ProfileFormatError(f"{path}: not a pgo bench file (format {doc.get('format')!r})"
                                 if isinstance(doc, dict) else f"{path}: not a pgo bench file")
    if doc.get("version") != VERSION:
        raise ProfileFormatError(f"{path}: bench file version {doc.get('version')} is not "
                                 f"supported (this pgo reads {VERSION})")
    if not isinstance(doc.get("runs"), list) or not isinstance(doc.get("arms"), list):
        raise ProfileFormatError(f"{path}: runs and arms must be lists")
    doc["summary"] = summarize(doc["runs"], doc["arms"])    # recomputed, not trusted
    limit = (doc.get("verdict") or {}).get("max_rss_increase_percent") \
        if isinstance(doc.get("verdict"), dict) else None
    doc["verdict"] = verdict(doc["summary"], float(limit) if isinstance(limit, (int, float))
                             else DEFAULT_MAX_RSS_INCREASE)
    return doc


# The plots: (metric, title, unit shown, factor from the stored unit).
PLOTS = (("wall_s", "wall time", "s", 1.0), ("max_rss_kib", "peak RSS", "MiB", 1 / 1024),
         ("minor_faults", "minor page faults", "", 1.0), ("gc_pause_s", "GC pause", "ms", 1e3))


def _plots(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """One PNG per metric, (title, base64): each is laid out on its own in
    the page, so nothing is cut off however many arms there are."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    arms = doc["arms"]
    out = []
    for key, title, unit, factor in PLOTS:
        data = [[float(r.get(key, 0) or 0) * factor for r in doc["runs"]
                 if r["arm"] == a and not r.get("error")] for a in arms]
        fig, ax = plt.subplots(figsize=(max(4.8, 0.9 * len(arms) + 2.2), 3.4))
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(arms) + 1), arms)
        for i, ys in enumerate(data, 1):
            ax.scatter([i] * len(ys), ys, s=12, alpha=0.6, color="tab:blue", zorder=3)
        if data and data[0]:
            # The baseline's median as a reference line; the axis is fitted
            # to the data (from zero, arms a few percent apart look alike).
            ax.axhline(sorted(data[0])[len(data[0]) // 2], color="grey", lw=0.8, ls="--")
        ax.set_title(f"{title} ({unit})" if unit else title)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt_plain(v)))
        ax.margins(y=0.15)
        ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        out.append((title, base64.b64encode(buf.getvalue()).decode()))
    return out


def _cell(c: dict[str, Any], *, baseline: bool = False, scale: float = 1.0,
          unit: str = "") -> str:
    if c.get("median") is None:
        return "&ndash;"
    value = f"{fmt_plain(c['median'] * scale)}{(' ' + unit) if unit else ''}"
    if baseline:
        return f"{value}<br>the reference"
    if c.get("ratio") is None:
        return value
    lo, hi = c["ci"]
    sig = "" if c["significant"] else " <em>(not significant)</em>"
    return (f"{value}<br><b>{c['ratio']:.3f}x</b> "
            f"[{lo:.3f}, {hi:.3f}], p={html.escape(_p(c['p']))}{sig}")


# How the table shows each metric: (unit, factor from the stored unit).
_SHOWN = {"wall_s": ("s", 1.0), "cpu_s": ("s", 1.0), "max_rss_kib": ("MiB", 1 / 1024),
          "minor_faults": ("", 1.0), "gc_pause_s": ("ms", 1e3), "gc_pauses": ("", 1.0)}


def write_html(doc: dict[str, Any], path: str) -> None:
    plots = _plots(doc)
    s = doc["summary"]
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t, _ in METRICS)

    def cells(a: str) -> str:
        out = []
        for k, _, _ in METRICS:
            unit, scale = _SHOWN[k]
            out.append(f"<td>{_cell(s[a][k], baseline=a == 'baseline', scale=scale, unit=unit)}</td>")
        return "".join(out)

    rows = "".join(f"<tr><td><b>{html.escape(a)}</b><br>{s[a]['runs']} runs</td>{cells(a)}</tr>"
                   for a in doc["arms"])
    figures = "".join(f'<figure><img alt="{html.escape(t)} per arm" '
                      f'src="data:image/png;base64,{png}"></figure>' for t, png in plots)
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in doc.get("warnings", []))
    v = doc.get("verdict")
    verdicts = ""
    if v:
        flag = ' style="color:#a60"' if v["rss_over"] else ""
        verdicts = (f"<h2>Verdict</h2><p>config, {html.escape(v['time'])}</p>"
                    f"<p{flag}>config, {html.escape(v['rss'])}</p>")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>pgo bench: {html.escape(' '.join(doc['command']))}</title>
<style>body{{font-family:sans-serif;margin:2em;}} table{{border-collapse:collapse;}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:90%;}}
th{{background:#f3f3f3;}} em{{color:#a60;}}
.plots{{display:flex;flex-wrap:wrap;gap:12px;}} figure{{margin:0;}}
img{{max-width:100%;height:auto;}}</style></head><body>
<h1>pgo bench</h1>
<p><code>{html.escape(' '.join(doc['command']))}</code>; config
<code>{html.escape(str(doc.get('config')))}</code>; {html.escape(str(doc.get('date', '')))};
{html.escape(str(doc.get('machine', '')))}</p>
<p>Each cell: the arm's median; its ratio to the baseline's median (&lt; 1: lower) with a
bootstrap 95% confidence interval; the Mann-Whitney U test's p.</p>
<table><tr><th>arm</th>{head}</tr>{rows}</table>
{verdicts}
{'<h3>Warnings</h3><ul>' + warn + '</ul>' if warn else ''}
<h2>Distributions (every run; dashed: the baseline's median)</h2>
<div class="plots">{figures}</div>
</body></html>
"""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, path)
