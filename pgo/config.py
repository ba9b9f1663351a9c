"""The pgo config: one model, its loader and its writer.

``pgo analyze`` writes it, ``pgo run`` / ``pgo.apply`` read it.  The format
is TOML (read with ``tomllib``; written here, deterministically: the same
config gives the same bytes):

    [pgo]
    version = 1
    profile = "profiles/job-20261127"        # provenance: the bundle ...
    profile_started_at = "2026-11-27T..."    # ... when it was recorded
    pgo = "0.1.0"                            # ... and by which pgo
    python = "3.11.7"                        # the GC plan was made for this Python
    numpy = "2.1.3"                          # ... and the size classes for this numpy
    program = "job.py"                       # the program profiled (a script's file
    program_sha256 = "9f2c..."               # name, a -m module) and its source's hash:
                                             # `pgo run` warns on another (--strict: error)

    [gc]
    thresholds = [50000, 20, 100]            # gc.set_threshold (0 first: no automatic GC)
    freeze_after_startup = true              # gc.freeze() once start-up is over ...
    startup_s = 0.8                          # ... at this time after start
    full_collection = "growth"               # "default", or: a full collection
    growth_factor = 2.0                      # when the heap grew by this factor
    peak_heap_blocks = 6085835               # the profile's peak heap, where its
                                             # collections found nothing: the first
                                             # full one waits for growth_factor x it
    profiled_gc_share = 0.28                 # GC's share of the profiled run (the
                                             # metrics' gc_pressure_reduction_ratio)
    reason = "..."

    [[numpy.size_class]]                     # route numpy data by size
    min_bytes = 1048576
    allocator = "cache"
    max_cached_bytes = 536870912
    pattern = "large-repeated"
    reason = "..."

    [[site]]                                 # route by allocation site
    function = "mypkg.pipeline:normalize"
    allocator = "cache"
    max_cached_bytes = 8388608
    pattern = "scoped-temporaries"
    confidence = 0.93
    reason = "98% of 12,400 arrays freed before normalize returns; sizes 8-64 KiB"

Every mistake is a ``ConfigError`` naming the file, the line and the valid
choices.  ``load(write(cfg)) == cfg``.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from typing import Any

from pgo._errors import ConfigError

VERSION = 1

# allocator -> {setting: (type, least value)}.  A setting left out is the
# allocator class's own default (its docstring says which): the classes are
# the one home of those.  `pgo analyze` writes every size it chose.
SETTINGS: dict[str, dict[str, tuple[type, int]]] = {
    "cache": {"max_cached_bytes": (int, 0), "headroom_percent": (int, 0), "reuse_window": (int, 0),
              "hugepages": (bool, 0), "prefault": (bool, 0)},
    "slab": {"block_size": (int, 1), "slots_per_slab": (int, 0), "limit_bytes": (int, 0)},
    "arena": {"chunk_size": (int, 1), "limit_bytes": (int, 0)},
    "linear": {"capacity": (int, 1)},
    "mapped": {"capacity": (int, 1), "populate": (bool, 0), "huge_pages": (bool, 0)},
    "numa": {"capacity": (int, 1), "node": (int, 0), "huge_pages": (bool, 0)},
    "hierarchical": {"limit_bytes": (int, 0)},
    "compacting": {"limit_bytes": (int, 0), "fragmentation_percent": (int, 101)},
    "adaptive": {"window": (int, 64), "limit_bytes": (int, 0)},
    "stack": {"capacity": (int, 1)},
}
ALLOCATORS = tuple(sorted(SETTINGS))
SITE_ALLOCATORS = ("arena", "linear", "stack", "slab", "cache", "mapped", "numa")
# The largest block HierarchicalAllocator serves (pinned to the extension's
# HIER_MAX_SMALL by a test); size classes only, as its blocks are small.
HIERARCHICAL_MAX_BYTES = 262144
# The largest block CompactingAllocator serves (pinned to the extension's
# COMPACT_MAX_SMALL by a test): meshing needs many blocks to a span.
COMPACTING_MAX_BYTES = 16384
SIZE_KEYS = ("min_bytes", "max_bytes", "allocator")
FULL_COLLECTION = ("default", "growth")
# The most a "growth" plan waits for (the runtime's backoff stops there too).
MAX_GROWTH_FACTOR = 64.0
NOTE_KEYS = ("pattern", "reason", "confidence")
# [pgo]'s provenance: what the config was made from and for.
HEAD_STRINGS = ("profile", "profile_started_at", "pgo", "python", "numpy", "program",
                "program_sha256")
MAX_SIZE = (1 << 63) - 1      # a size must fit the C layer's signed 64 bits


class Pattern:
    """What `pgo analyze` saw a site or size class do (``pattern = ...``).
    Plain strings, not an Enum: ``pgo run`` imports this module before the
    program starts, and an Enum class costs milliseconds to make."""

    LIFO_SCRATCH = "lifo-scratch"
    SCOPED_TEMPORARIES = "scoped-temporaries"
    FIXED_SIZE_CHURN = "fixed-size-churn"
    LARGE_REPEATED = "large-repeated"
    LONG_LIVED = "long-lived"
    IRREGULAR = "irregular"
    # Blocks freed by another thread than the one that made them.
    CROSS_THREAD = "cross-thread-frees"
    # A site whose sizes or lifetimes change from one part of the run to another.
    PHASED = "phase-changing"
    # Small blocks, most freed in no order while a share lives on: holes in every page.
    FRAGMENTING = "fragmenting-survivors"


PATTERNS = (Pattern.LIFO_SCRATCH, Pattern.SCOPED_TEMPORARIES, Pattern.FIXED_SIZE_CHURN,
            Pattern.LARGE_REPEATED, Pattern.LONG_LIVED, Pattern.IRREGULAR, Pattern.CROSS_THREAD,
            Pattern.PHASED, Pattern.FRAGMENTING)


@dataclass(frozen=True)
class GCPlan:
    """The ``[gc]`` table: what ``pgo run`` does to the cyclic GC."""

    thresholds: tuple[int, int, int] | None = None
    freeze_after_startup: bool = False
    startup_s: float | None = None
    full_collection: str = "default"
    growth_factor: float | None = None
    peak_heap_blocks: int | None = None
    profiled_gc_share: float | None = None     # GC's share of the profiled run's wall time
    reason: str = ""


@dataclass(frozen=True)
class SizeClassRule:
    """One ``[[numpy.size_class]]``: numpy data of these sizes to an allocator."""

    min_bytes: int
    max_bytes: int | None
    allocator: str
    settings: tuple[tuple[str, Any], ...] = ()     # allocator settings, sorted
    pattern: str = ""
    reason: str = ""
    confidence: float | None = None


@dataclass(frozen=True)
class SiteRule:
    """One ``[[site]]``: numpy data made while a function runs to an allocator."""

    function: str                                   # "module:qualname"
    allocator: str
    settings: tuple[tuple[str, Any], ...] = ()
    pattern: str = ""
    reason: str = ""
    confidence: float | None = None


@dataclass(frozen=True)
class Config:
    """A whole config file."""

    version: int = VERSION
    profile: str = ""
    profile_started_at: str = ""
    pgo: str = ""
    python: str = ""
    numpy: str = ""
    program: str = ""
    program_sha256: str = ""
    gc: GCPlan | None = None
    size_classes: tuple[SizeClassRule, ...] = ()
    sites: tuple[SiteRule, ...] = field(default=())


# -- writing -------------------------------------------------------------------------

def dumps(cfg: Config) -> str:
    out: list[str] = ["# pgo config: written by `pgo analyze`; applied by `pgo run` / pgo.apply().",
                      "", "[pgo]"]
    out.append(f"version = {cfg.version}")
    for key in HEAD_STRINGS:
        value = getattr(cfg, key)
        if value:
            out.append(f"{key} = {_value(value)}")
    if cfg.gc is not None:
        g = cfg.gc
        out += ["", "[gc]"]
        if g.thresholds is not None:
            out.append(f"thresholds = {_value(list(g.thresholds))}")
        out.append(f"freeze_after_startup = {_value(g.freeze_after_startup)}")
        if g.startup_s is not None:
            out.append(f"startup_s = {_value(g.startup_s)}")
        out.append(f"full_collection = {_value(g.full_collection)}")
        if g.growth_factor is not None:
            out.append(f"growth_factor = {_value(g.growth_factor)}")
        if g.peak_heap_blocks is not None:
            out.append(f"peak_heap_blocks = {g.peak_heap_blocks}")
        if g.profiled_gc_share is not None:
            out.append(f"profiled_gc_share = {_value(g.profiled_gc_share)}")
        if g.reason:
            out.append(f"reason = {_value(g.reason)}")
    for sc in cfg.size_classes:
        out += ["", "[[numpy.size_class]]", f"min_bytes = {sc.min_bytes}"]
        if sc.max_bytes is not None:
            out.append(f"max_bytes = {sc.max_bytes}")
        out.append(f"allocator = {_value(sc.allocator)}")
        out += [f"{k} = {_value(v)}" for k, v in sc.settings]
        out += _notes(sc)
    for site in cfg.sites:
        out += ["", "[[site]]", f"function = {_value(site.function)}",
                f"allocator = {_value(site.allocator)}"]
        out += [f"{k} = {_value(v)}" for k, v in site.settings]
        out += _notes(site)
    return "\n".join(out) + "\n"


def _notes(rule: SizeClassRule | SiteRule) -> list[str]:
    out = []
    if rule.pattern:
        out.append(f"pattern = {_value(rule.pattern)}")
    if rule.confidence is not None:
        out.append(f"confidence = {_value(rule.confidence)}")
    if rule.reason:
        out.append(f"reason = {_value(rule.reason)}")
    return out


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"a config holds finite numbers only, got {v}")
        return repr(v)
    if isinstance(v, str):
        # A JSON string is a TOML basic string, but for DEL, which TOML
        # wants escaped.
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to a config")


def write(cfg: Config, path: str | os.PathLike[str]) -> None:
    path = os.fspath(path)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(dumps(cfg))
    os.replace(tmp, path)


# -- reading -------------------------------------------------------------------------

# `pgo run` loads a config before the program starts, and pays for every
# import here: no pathlib (4 ms), and re only where a site rule or an error
# needs it.

def load(path: str | os.PathLike[str]) -> Config:
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read ({e})") from None
    return loads(text, source=str(path))


def loads(text: str, source: str = "<config>") -> Config:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        import re
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        where = f"{source}:{m.group(1)}:{m.group(2)}" if m else source
        raise ConfigError(f"{where}: not valid TOML: {str(e).split(' (at line')[0]}") from None
    return _Reader(text, source).config(doc)


def size_classes(entries: Any, source: str = "<config>") -> tuple[SizeClassRule, ...]:
    """``[[numpy.size_class]]`` tables given as Python data (a list of
    dicts, as ``Router.from_config`` takes them), checked as a file's are.

    Raises:
        pgo.ConfigError: naming ``source`` and the entry.
    """
    return _Reader("", source).size_classes(entries)


class _Reader:
    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.lines = _key_lines(text)

    def fail(self, table: str, index: int | None, key: str | None, message: str) -> ConfigError:
        line = self.lines.get((table, index, key)) or self.lines.get((table, index, None))
        where = f"{self.source}:{line}" if line else self.source
        name = table + (f"[{index}]" if index is not None else "") + (f".{key}" if key else "")
        return ConfigError(f"{where}: {name}: {message}")

    def check_keys(self, table: str, index: int | None, got: dict[str, Any],
                   allowed: tuple[str, ...]) -> None:
        for key in got:
            if key not in allowed:
                raise self.fail(table, index, key,
                                f"unknown key {key!r}; valid keys: {', '.join(allowed)}")

    def typed(self, table: str, index: int | None, d: dict[str, Any], key: str, kind: Any,
              default: Any = None, required: bool = False) -> Any:
        if key not in d:
            if required:
                raise self.fail(table, index, None, f"{key} is required")
            return default
        v = d[key]
        ok = {int: lambda x: isinstance(x, int) and not isinstance(x, bool),
              float: lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)
              and math.isfinite(x),
              bool: lambda x: isinstance(x, bool),
              str: lambda x: isinstance(x, str)}[kind](v)
        if not ok:
            raise self.fail(table, index, key, f"expected {kind.__name__}, got "
                                               f"{type(v).__name__} {v!r}")
        if kind is int and abs(v) > MAX_SIZE:
            raise self.fail(table, index, key, f"must be at most 2**63 - 1, got {v}")
        return float(v) if kind is float else v

    def config(self, doc: dict[str, Any]) -> Config:
        self.check_keys("", None, doc, ("pgo", "gc", "numpy", "site"))
        head = doc.get("pgo")
        if not isinstance(head, dict):
            raise self.fail("pgo", None, None, "the [pgo] table is required (with version = 1)")
        self.check_keys("pgo", None, head, ("version", *HEAD_STRINGS))
        version = self.typed("pgo", None, head, "version", int, required=True)
        if version != VERSION:
            raise self.fail("pgo", None, "version", f"version {version} is not supported "
                                                    f"(this pgo reads version {VERSION})")
        strings = {k: self.typed("pgo", None, head, k, str, "") for k in HEAD_STRINGS}
        gc_plan = self.gc(doc["gc"]) if "gc" in doc else None
        numpy = doc.get("numpy", {})
        if not isinstance(numpy, dict):
            raise self.fail("numpy", None, None, "expected a table")
        self.check_keys("numpy", None, numpy, ("size_class",))
        classes = self.size_classes(numpy.get("size_class", []))
        sites = doc.get("site", [])
        if not isinstance(sites, list):
            raise self.fail("site", None, None, "expected [[site]] tables")
        return Config(version=version, gc=gc_plan,
                      size_classes=classes,
                      sites=tuple(self.site(i, d) for i, d in enumerate(sites)), **strings)

    def gc(self, d: Any) -> GCPlan:
        if not isinstance(d, dict):
            raise self.fail("gc", None, None, "expected a table")
        self.check_keys("gc", None, d, tuple(f.name for f in fields(GCPlan)))
        th = d.get("thresholds")
        if th is not None:
            if not (isinstance(th, list) and len(th) == 3
                    and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in th)):
                raise self.fail("gc", None, "thresholds",
                                f"expected three integers >= 0 (gc.set_threshold), got {th!r}")
            th = tuple(th)
        full = self.typed("gc", None, d, "full_collection", str, "default")
        if full not in FULL_COLLECTION:
            raise self.fail("gc", None, "full_collection",
                            f"unknown {full!r}; valid: {', '.join(FULL_COLLECTION)}")
        growth = self.typed("gc", None, d, "growth_factor", float)
        if growth is not None and growth <= 1.0:
            raise self.fail("gc", None, "growth_factor", f"must be > 1, got {growth}")
        if full == "growth" and growth is None:
            raise self.fail("gc", None, "growth_factor", "full_collection = \"growth\" needs it")
        startup = self.typed("gc", None, d, "startup_s", float)
        if startup is not None and startup < 0:
            raise self.fail("gc", None, "startup_s", f"must be >= 0, got {startup}")
        peak = self.typed("gc", None, d, "peak_heap_blocks", int)
        if peak is not None and peak < 0:
            raise self.fail("gc", None, "peak_heap_blocks", f"must be >= 0, got {peak}")
        share = self.typed("gc", None, d, "profiled_gc_share", float)
        if share is not None and not 0.0 <= share <= 1.0:
            raise self.fail("gc", None, "profiled_gc_share", f"must be within 0 and 1, got {share}")
        return GCPlan(thresholds=th,
                      freeze_after_startup=self.typed("gc", None, d, "freeze_after_startup",
                                                      bool, False),
                      startup_s=startup, full_collection=full, growth_factor=growth,
                      peak_heap_blocks=peak, profiled_gc_share=share,
                      reason=self.typed("gc", None, d, "reason", str, ""))

    def _notes(self, table: str, i: int, d: dict[str, Any]) -> dict[str, Any]:
        pattern = self.typed(table, i, d, "pattern", str, "")
        if pattern and pattern not in PATTERNS:
            raise self.fail(table, i, "pattern",
                            f"unknown {pattern!r}; valid: {', '.join(PATTERNS)}")
        conf = self.typed(table, i, d, "confidence", float)
        if conf is not None and not 0.0 <= conf <= 1.0:
            raise self.fail(table, i, "confidence", f"must be in [0, 1], got {conf}")
        return {"pattern": pattern, "confidence": conf,
                "reason": self.typed(table, i, d, "reason", str, "")}

    def _settings(self, table: str, i: int, d: dict[str, Any], allocator: str) -> tuple[Any, ...]:
        out = []
        for key, (kind, least) in SETTINGS[allocator].items():
            if key in d:
                value = self.typed(table, i, d, key, kind)
                if kind is int and value < least:
                    raise self.fail(table, i, key, f"must be >= {least}, got {value}")
                out.append((key, value))
        return tuple(sorted(out))

    def _allocator(self, table: str, i: int, d: dict[str, Any], valid: tuple[str, ...]) -> str:
        a = self.typed(table, i, d, "allocator", str, required=True)
        if a not in valid:
            raise self.fail(table, i, "allocator",
                            f"unknown allocator {a!r}; valid: {', '.join(valid)}")
        return str(a)

    def size_classes(self, entries: Any) -> tuple[SizeClassRule, ...]:
        if not isinstance(entries, (list, tuple)):
            raise self.fail("numpy.size_class", None, None,
                            f"expected [[numpy.size_class]] tables, got {type(entries).__name__}")
        return tuple(self.size_class(i, d) for i, d in enumerate(entries))

    def size_class(self, i: int, d: Any) -> SizeClassRule:
        table = "numpy.size_class"
        if not isinstance(d, dict):
            raise self.fail(table, i, None, f"expected a table, got {type(d).__name__}")
        a = self._allocator(table, i, d, ALLOCATORS)
        self.check_keys(table, i, d, SIZE_KEYS + tuple(SETTINGS[a]) + NOTE_KEYS)
        lo = self.typed(table, i, d, "min_bytes", int, required=True)
        hi = self.typed(table, i, d, "max_bytes", int)
        if lo < 0 or (hi is not None and hi < lo):
            raise self.fail(table, i, "max_bytes" if hi is not None and hi < lo else "min_bytes",
                            f"bad size range {lo}..{hi}: need 0 <= min_bytes <= max_bytes")
        settings = self._settings(table, i, d, a)
        if a == "slab":
            block = dict(settings).get("block_size")
            if block is None and hi is None:
                raise self.fail(table, i, None, "a slab needs max_bytes or block_size")
            if block is not None and hi is not None and block < hi:
                raise self.fail(table, i, "block_size",
                                f"block_size {block} is smaller than max_bytes {hi}")
        self._check_capacity(table, i, a, settings)
        for kind, most in (("hierarchical", HIERARCHICAL_MAX_BYTES),
                           ("compacting", COMPACTING_MAX_BYTES)):
            if a == kind and (hi is None or hi > most):
                raise self.fail(table, i, "max_bytes",
                                f"a {kind} allocator serves blocks of at most "
                                f"{most} bytes; give max_bytes <= that")
        return SizeClassRule(min_bytes=lo, max_bytes=hi, allocator=a, settings=settings,
                             **self._notes(table, i, d))

    def _check_capacity(self, table: str, i: int, a: str, settings: tuple[Any, ...]) -> None:
        # Mapped pools (and a numa allocator's) never grow: their size is the config's to say.
        if a == "mapped" and "capacity" not in dict(settings):
            raise self.fail(table, i, None, "a mapped pool needs capacity (bytes; it never grows)")
        if a == "numa" and "capacity" not in dict(settings):
            raise self.fail(table, i, None,
                            "a numa allocator needs capacity (bytes per node; it never grows)")

    def site(self, i: int, d: Any) -> SiteRule:
        table = "site"
        if not isinstance(d, dict):
            raise self.fail(table, i, None, "expected a table")
        a = self._allocator(table, i, d, SITE_ALLOCATORS)
        self.check_keys(table, i, d, ("function", "allocator") + tuple(SETTINGS[a]) + NOTE_KEYS)
        fn = self.typed(table, i, d, "function", str, required=True)
        import re
        if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_<][\w.<>]*", fn):
            raise self.fail(table, i, "function",
                            f"expected 'module:qualname' (e.g. 'mypkg.io:load'), got {fn!r}")
        settings = self._settings(table, i, d, a)
        if a == "slab" and "block_size" not in dict(settings):
            raise self.fail(table, i, None, "a slab [[site]] needs block_size")
        self._check_capacity(table, i, a, settings)
        return SiteRule(function=fn, allocator=a, settings=settings, **self._notes(table, i, d))


def _key_lines(text: str) -> dict[tuple[str, int | None, str | None], int]:
    """Line numbers of tables and their keys: (table, array index, key) -> line."""
    out: dict[tuple[str, int | None, str | None], int] = {}
    counts: dict[str, int] = {}
    table, index = "", None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("[["):
            table = line[2:line.find("]]")].strip()
            index = counts.get(table, 0)
            counts[table] = index + 1
            out[(table, index, None)] = n
        elif line.startswith("["):
            table = line[1:line.find("]")].strip()
            index = None
            out[(table, None, None)] = n
        elif "=" in line and not line.startswith("#"):
            key = line.split("=", 1)[0].strip().strip('"')
            out.setdefault((table, index, key), n)
    return out
