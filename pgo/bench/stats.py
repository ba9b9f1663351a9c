"""Statistics for before/after runs: medians, the ratio of an arm's median
to the baseline's with a bootstrap 95% confidence interval, and a two-sided
Mann-Whitney U test (scipy.stats): no normality assumed, robust to the odd
slow run of a shared machine.  "significant" means p < 0.05 and a
confidence interval that excludes 1."""

from __future__ import annotations

from typing import Any

import numpy as np

RESAMPLES = 4000
SEED = 20261127


def compare(baseline: list[float], arm: list[float]) -> dict[str, Any]:
    """Ratio arm / baseline of the medians (< 1: the arm is lower)."""
    from scipy import stats as sps
    b = np.asarray(baseline, dtype=np.float64)
    a = np.asarray(arm, dtype=np.float64)
    out: dict[str, Any] = {"median": float(np.median(a)) if len(a) else None,
                           "baseline_median": float(np.median(b)) if len(b) else None,
                           "n": int(len(a))}
    if len(a) == 0 or len(b) == 0 or np.median(b) == 0:
        out.update(ratio=None, ci=[None, None], p=None, significant=False)
        return out
    ratio = float(np.median(a) / np.median(b))
    rng = np.random.default_rng(SEED)
    ra = np.median(rng.choice(a, size=(RESAMPLES, len(a)), replace=True), axis=1)
    rb = np.median(rng.choice(b, size=(RESAMPLES, len(b)), replace=True), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = ra / rb
    boot = boot[np.isfinite(boot)]
    lo, hi = (float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))) if len(boot) \
        else (ratio, ratio)
    if np.all(a == a[0]) and np.all(b == b[0]):
        p = 0.0 if a[0] != b[0] else 1.0
    else:
        p = float(sps.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    out.update(ratio=ratio, ci=[lo, hi], p=p,
               significant=bool(p < 0.05 and (hi < 1.0 or lo > 1.0)))
    return out
