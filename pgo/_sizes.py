"""Sizes every layer shares: the units, the size rules of numpy's data
handler, and how pgo writes a size or a duration for people.

The C layer has its own copies of the two size rules (C cannot import
Python); ``pgo._core.numpy_bridge`` exports them and tests/unit/test_layers.py
pins them equal to these.
"""

from __future__ import annotations

import math

KiB = 1 << 10
MiB = 1 << 20

# Blocks under this size stay in the handler's per-thread small-block cache
# (pgo's Router keeps numpy's own below it): no allocator of a size class or
# of a [[site]] is asked for them, and `pgo analyze` routes none of them.
# It is also the smallest class of a CacheAllocator (one page).
SMALL_BLOCK_BYTES = 4 * KiB

# numpy's default handler advises MADV_HUGEPAGE on blocks of this size and
# more; pgo's handler and its cache do the same.
HUGEPAGE_MIN_BYTES = 4 * MiB


def fmt_plain(value: float) -> str:
    """A number for a plot's axis or a table: thousands separators, a few
    significant digits, never 1e5 notation ("41,823", "1.25", "0.0312")."""
    a = abs(value)
    if a >= 100:
        return f"{value:,.0f}"
    if a >= 1:
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    return f"{value:.3g}"


def fmt_bytes(n: float, spec: str = ".1f") -> str:
    """``n`` bytes in the largest binary unit under 1024 of it ("48.0 MiB");
    ``spec`` formats the number of the units above bytes."""
    if not math.isfinite(n):
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:{spec}} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def fmt_seconds(s: float, ms_spec: str = ".1f", s_spec: str = ".2f") -> str:
    """``s`` seconds as µs, ms or s, the number formatted by ``ms_spec`` or
    ``s_spec``."""
    if not math.isfinite(s):
        return "?"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:{ms_spec}} ms"
    return f"{s:{s_spec}} s"
