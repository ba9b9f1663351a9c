"""The profile bundle format: one place that writes and reads it.

A bundle is a directory that ``pgo profile`` writes and ``pgo show`` /
``pgo analyze`` read:

    manifest.json          what ran, where, how long, which collectors, overhead
    allocations.json       tracemalloc sites (Python objects and numpy data)
                           and their live bytes over time (snapshots), when
                           tracemalloc was on
    events.trace           numpy data events from the recording handler (binary:
                           header, blocks of records, footer; see read_events)
    objects.trace          sampled Python object allocations and their frees
                           (same format)
    event_sites.json       the table resolving both traces' site ids
    gc.json                collections and every pause
    cpu.txt                py-spy samples (raw, "frame;frame;frame count")
    cpu.speedscope.json    the same, for speedscope
    children/PID/          a bundle per followed child process
    runs/N/                a merged bundle (``pgo merge``): the runs it
                           combines; its own gc.json and cpu.txt sum theirs

Every writer builds its JSON parts with the ``*_document`` functions here
and writes them with ``write_json``; the traces are written by the recorder
(C, in pgo._core) to the layout named here (tests/unit/test_format_pins.py
pins the two).  Every reader checks the format name and version and raises
``ProfileFormatError`` naming the file, the byte offset and the record for
anything it cannot trust: truncation, bad magic, flipped bits (the trace's
blocks carry a checksum), absurd counts, wrong JSON types.  Nothing is ever
unpickled.  A trace cut short by a killed process (the manifest says the run
did not complete) loads up to its last whole block, with a warning.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pgo._errors import ProfileFormatError

__all__ = [
    "ALLOC", "CALLOC", "EVENT_DTYPE", "EVENT_KINDS", "FORMAT", "FREE", "REALLOC", "VERSION",
    "Bundle", "EventTrace", "allocations_document", "block_checksum", "event_sites_document",
    "gc_document", "in_memory", "load", "manifest_document", "pass_level", "read_cpu_raw",
    "read_events", "read_json", "speedscope_from_samples", "write_json",
]

# The bundle's own format: its manifest's name and version.
FORMAT = "pgo-profile"
VERSION = 1

MANIFEST = "manifest.json"
ALLOCATIONS = "allocations.json"
EVENTS = "events.trace"
OBJECTS = "objects.trace"
EVENT_SITES = "event_sites.json"
GC = "gc.json"
CPU_RAW = "cpu.txt"
CPU_SPEEDSCOPE = "cpu.speedscope.json"
CHILDREN = "children"
RUNS = "runs"

# Formats of the JSON parts: (format name, version).  Writers build their
# documents with the *_document functions below, readers check against these.
JSON_FORMATS = {
    MANIFEST: (FORMAT, VERSION),
    ALLOCATIONS: ("pgo-allocations", 1),
    EVENT_SITES: ("pgo-event-sites", 1),
    GC: ("pgo-gc", 1),
}
# gc.json: the counts of each generation, the columns of the pauses.
GC_COUNTS = ("collections", "collected", "uncollectable")
GC_PAUSE_COLUMNS = ("t_s", "generation", "duration_ns", "collected", "uncollectable")

# The event trace, written by the recorder (C, in pgo._core): a header, blocks
# of records, a footer.  tests/unit/test_format_pins.py pins the recorder's
# values to these.
TRACE_MAGIC = b"PGOTRACE"
TRACE_VERSION = 1
TRACE_HEADER = struct.Struct("<8sIIIIQII")   # magic, version, header, record, block max, t0,
                                             # checksum of the 32 bytes before it, zero
TRACE_SIGNED = 32                            # the header bytes its checksum covers
BLOCK_MAGIC = b"PGOB"
BLOCK_HEADER = struct.Struct("<4sIII")       # BLOCK_MAGIC, count, seq, checksum
FOOTER_MAGIC = b"PGOE"
FOOTER = struct.Struct("<4sIQ")              # FOOTER_MAGIC, blocks, records
EVENT_DTYPE = np.dtype([
    ("t_ns", "<u8"), ("addr", "<u8"), ("size", "<u8"), ("old", "<u8"),
    ("site", "<u4"), ("tid", "<u4"), ("kind", "u1"), ("level", "u1"), ("pad", "V6"),
])
ALLOC, CALLOC, REALLOC, FREE = 1, 2, 3, 4
EVENT_KINDS = {ALLOC: "alloc", CALLOC: "calloc", REALLOC: "realloc", FREE: "free"}
# The recorder writes at most 4096 records per block; a reader accepts up to
# this many so that a bit flip in a count cannot ask for gigabytes.
MAX_BLOCK_RECORDS = 1 << 16
# JSON parts larger than this are refused before being read.
MAX_JSON_BYTES = 1 << 30


def _err(path: str | os.PathLike[str], offset: int | None, record: str,
         what: str) -> ProfileFormatError:
    where = f"{os.fspath(path)}"
    if offset is not None:
        where += f": byte {offset}"
    if record:
        where += f": {record}"
    return ProfileFormatError(f"{where}: {what}")


# -- JSON parts ---------------------------------------------------------------------

def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON atomically (a temporary file, then rename), so a
    reader never sees half a file, even from a process killed mid-write.
    (No fsync: that guards against power loss, at milliseconds a write.)

    Compact, one line: without an indent ``json`` encodes in C.  With one it
    encodes through nested Python closures that are reference cycles, and
    the profiler writes while the program runs: the program's own
    ``gc.collect()`` would find garbage it never made (pyperformance's
    gc_traversal asserts it finds none)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = json.dumps(obj, sort_keys=True, allow_nan=False, separators=(",", ":"))
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(data)
        f.write("\n")
    os.replace(tmp, path)


def _document(part: str, fields: dict[str, Any]) -> dict[str, Any]:
    name, version = JSON_FORMATS[part]
    return {"format": name, "version": version, **fields}


def manifest_document(*, complete: bool, command: list[str], cwd: str, python: str, pid: int,
                      started_at: str, duration_s: float | None, collectors: dict[str, Any],
                      warnings: list[str], **more: Any) -> dict[str, Any]:
    """``manifest.json``: what ran, where, how long, with which collectors
    (the fields every reader needs), and ``more`` (exit, overhead, versions,
    host, ...)."""
    return _document(MANIFEST, {
        "complete": complete, "command": command, "cwd": cwd, "python": python, "pid": pid,
        "started_at": started_at, "duration_s": duration_s, "collectors": collectors,
        "warnings": warnings, **more})


def allocations_document(*, nframes: int, sites: list[dict[str, Any]],
                         snapshots: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
    """``allocations.json``: tracemalloc's sites (id, domain, frames, peak and
    final bytes and counts) and snapshots (t_s, traced_bytes, live rows
    [site, bytes, count])."""
    return _document(ALLOCATIONS, {"nframes": nframes, "sites": sites, "snapshots": snapshots,
                                   **more})


def event_sites_document(table: Iterable[tuple[int, str | None, str, str, int]]
                         ) -> dict[str, Any]:
    """``event_sites.json`` from the recorder's site table: rows of (id,
    module, qualname, file, line)."""
    return _document(EVENT_SITES, {
        "sites": [{"id": sid, "module": module, "qualname": qualname, "file": file,
                   "line": line} for sid, module, qualname, file, line in table]})


def gc_document(*, thresholds: list[int], generations: list[dict[str, int]],
                pauses: dict[str, list[Any]], pauses_dropped: int, total_pause_ns: int,
                wall_s: float, **more: Any) -> dict[str, Any]:
    """``gc.json``: the thresholds in force, per generation its collections,
    collected and uncollectable, and every pause as columns (t_s,
    generation, duration_ns, collected, uncollectable)."""
    return _document(GC, {
        "thresholds": thresholds, "generations": generations, "pauses": pauses,
        "pauses_dropped": pauses_dropped, "total_pause_ns": total_pause_ns, "wall_s": wall_s,
        **more})


def _read_bytes(path: Path, limit: int | None = None) -> bytes:
    try:
        if limit is not None and (size := path.stat().st_size) > limit:
            raise _err(path, 0, "", f"{size} bytes is more than a profile part may hold "
                                    f"({limit})")
        return path.read_bytes()
    except FileNotFoundError:
        raise _err(path, None, "", "missing") from None
    except OSError as e:
        raise _err(path, None, "", f"cannot be read ({e.strerror or e})") from None


def read_json(path: str | os.PathLike[str],
              expect: tuple[str, int] | None = None) -> dict[str, Any]:
    """Read a JSON part; check its ``format`` and ``version`` when given."""
    path = Path(path)
    raw = _read_bytes(path, limit=MAX_JSON_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _err(path, e.start, "", "not UTF-8 text") from None
    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise _err(path, len(text[:e.pos].encode()), f"line {e.lineno} column {e.colno}",
                   f"not valid JSON ({e.msg})") from None
    except ValueError as e:
        raise _err(path, None, "", str(e)) from None
    except RecursionError:
        raise _err(path, None, "", "JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise _err(path, 0, "top level", f"expected an object, got {type(obj).__name__}")
    if expect is not None:
        name, version = expect
        got = obj.get("format")
        if got != name:
            raise _err(path, None, "format", f"expected {name!r}, got {got!r}")
        v = obj.get("version")
        if not isinstance(v, int) or isinstance(v, bool):
            raise _err(path, None, "version", f"expected an int, got {v!r}")
        if v != version:
            raise _err(path, None, "version",
                       f"version {v} is not supported (this pgo reads version {version})")
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a profile")


class _Checker:
    """Type checks on parsed JSON that name the file and the record path."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path

    def get(self, obj: Any, key: str, kind: Any, where: str, *, optional: bool = False,
            default: Any = None) -> Any:
        if not isinstance(obj, dict):
            raise _err(self.path, None, where, f"expected an object, got {type(obj).__name__}")
        if key not in obj:
            if optional:
                return default
            raise _err(self.path, None, f"{where}.{key}" if where else key, "missing")
        return self.check(obj[key], kind, f"{where}.{key}" if where else key)

    def check(self, value: Any, kind: Any, where: str) -> Any:
        ok: bool
        if kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind == "count":
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        elif kind is float:
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and math.isfinite(value))
        elif kind == "nonneg":
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and math.isfinite(value) and value >= 0)
        elif kind is None:
            ok = True
        elif isinstance(kind, tuple):
            ok = any(self._is(value, k) for k in kind)
        else:
            ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            name = kind if isinstance(kind, str) else getattr(kind, "__name__", repr(kind))
            raise _err(self.path, None, where, f"expected {name}, got {_show(value)}")
        return value

    def _is(self, value: Any, kind: Any) -> bool:
        if kind is type(None):
            return value is None
        if kind is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, kind)

    def items(self, obj: Any, key: str, where: str) -> list[Any]:
        items: list[Any] = self.get(obj, key, list, where)
        return items

    def row(self, value: Any, kinds: tuple[Any, ...], where: str, shape: str) -> None:
        """A list of ``len(kinds)`` items of these kinds (``shape`` names them)."""
        self.check(value, list, where)
        if len(value) != len(kinds):
            raise _err(self.path, None, where, f"expected {shape}")
        for j, kind in enumerate(kinds):
            self.check(value[j], kind, f"{where}[{j}]")


def _show(value: Any) -> str:
    text = json.dumps(value)[:40] if not isinstance(value, (bytes, bytearray)) else repr(value)[:40]
    return f"{type(value).__name__} {text}"


# -- the event trace -------------------------------------------------------------

@dataclass
class EventTrace:
    """The events of a trace file as a structured array (``EVENT_DTYPE``)."""

    events: np.ndarray
    t0_ns: int
    complete: bool            # the footer was there and agreed
    warnings: list[str] = field(default_factory=list)


def read_events(path: str | os.PathLike[str], *, allow_truncated: bool = False) -> EventTrace:
    """Read and validate an event trace.

    Each block's count is checked against the bytes left before anything is
    allocated, and its checksum against its records.  A file that ends without
    the footer is an error, or with ``allow_truncated`` (a run that did not
    complete) loads up to its last whole block with a warning.  Of several
    faults, the one nearest the start of the file is reported.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < TRACE_HEADER.size:
        raise _err(path, 0, "header", f"file is {len(data)} bytes, shorter than the "
                                      f"{TRACE_HEADER.size}-byte header")
    (magic, version, header_size, record_size, block_max, t0, head_sum,
     zero) = TRACE_HEADER.unpack_from(data, 0)
    if magic != TRACE_MAGIC:
        raise _err(path, 0, "header", f"bad magic {magic!r}: not a pgo event trace")
    if version != TRACE_VERSION:
        raise _err(path, 8, "header", f"version {version} is not supported "
                                      f"(this pgo reads version {TRACE_VERSION})")
    if block_checksum(data[:TRACE_SIGNED]) != head_sum or zero != 0:
        raise _err(path, TRACE_SIGNED, "header", "checksum mismatch: the header is corrupt")
    if header_size != TRACE_HEADER.size or record_size != EVENT_DTYPE.itemsize:
        raise _err(path, 12, "header", f"header/record sizes {header_size}/{record_size}, "
                                       f"expected {TRACE_HEADER.size}/{EVENT_DTYPE.itemsize}")
    if not 0 < block_max <= MAX_BLOCK_RECORDS:
        raise _err(path, 20, "header", f"absurd block size {block_max}")
    # First the blocks' headers, up to the footer or the first fault in their
    # layout; then the records of the whole blocks before it, all at once.
    pos = TRACE_HEADER.size
    blocks: list[tuple[int, int, int]] = []        # (offset of the records, count, checksum)
    total = 0
    warnings: list[str] = []
    problem: ProfileFormatError | None = None      # raised if the blocks before it are sound
    complete = False
    end = len(data)

    def truncated(what: str) -> None:
        nonlocal problem
        if allow_truncated:
            warnings.append(f"{path}: truncated at byte {pos} after record {total} ({what})")
        else:
            problem = _err(path, pos, f"block {len(blocks)} (after record {total})", what)

    while True:
        seq = len(blocks)
        if pos == end:
            truncated("no footer: the process stopped before the trace was closed")
            break
        if end - pos < 4:
            truncated(f"{end - pos} trailing bytes")
            break
        tag = data[pos:pos + 4]
        if tag == FOOTER_MAGIC:
            if end - pos < FOOTER.size:
                truncated("partial footer")
                break
            _, nblocks, nrecords = FOOTER.unpack_from(data, pos)
            if nblocks != seq or nrecords != total:
                problem = _err(path, pos, "footer", f"says {nblocks} blocks / {nrecords} "
                                                    f"records, the file holds {seq} / {total}")
            elif pos + FOOTER.size != end:
                problem = _err(path, pos + FOOTER.size, "after footer",
                               f"{end - pos - FOOTER.size} unexpected trailing bytes")
            else:
                complete = True
            break
        if tag != BLOCK_MAGIC:
            problem = _err(path, pos, f"block {seq} (after record {total})",
                           f"bad block magic {tag!r}")
            break
        if end - pos < BLOCK_HEADER.size:
            truncated("partial block header")
            break
        _, count, bseq, crc = BLOCK_HEADER.unpack_from(data, pos)
        if count == 0 or count > block_max:
            problem = _err(path, pos + 4, f"block {seq} (after record {total})",
                           f"absurd record count {count} (at most {block_max})")
            break
        if bseq != seq:
            problem = _err(path, pos + 8, f"block {seq} (after record {total})",
                           f"sequence number {bseq}, expected {seq}")
            break
        body = pos + BLOCK_HEADER.size
        nbytes = count * EVENT_DTYPE.itemsize
        if end - body < nbytes:
            have = (end - body) // EVENT_DTYPE.itemsize
            truncated(f"block {seq} holds {count} records, only {have} are in the file")
            break
        blocks.append((body, count, crc))
        total += count
        pos = body + nbytes
    events = _checked_records(path, data, blocks)
    if problem is not None:
        raise problem
    return EventTrace(events=events, t0_ns=t0, complete=complete, warnings=warnings)


def _checked_records(path: Path, data: bytes, blocks: list[tuple[int, int, int]]
                     ) -> np.ndarray:
    """The records of ``blocks`` (offset, count, checksum) as one array, once
    every block's checksum and every record's kind are right; else the
    error of the first block at fault (its checksum before its kinds)."""
    if not blocks:
        return np.empty(0, EVENT_DTYPE)
    rec = EVENT_DTYPE.itemsize
    body, count, crc = (np.array(col, np.int64) for col in zip(*blocks))
    first = np.cumsum(count) - count                # records before each block
    words = np.frombuffer(data, "<u8", count=len(data) // 8)
    bad = np.flatnonzero(_checksums(words, body // 8, count * (rec // 8)) != crc)
    b_sum = int(bad[0]) if len(bad) else len(blocks)
    events = np.concatenate([np.frombuffer(data, EVENT_DTYPE, c, b) for b, c, _ in blocks])
    kind = events["kind"]
    bad = np.flatnonzero(kind - np.uint8(ALLOC) > FREE - ALLOC)   # (uint8: 0 wraps round)
    b_kind = int(np.searchsorted(first, bad[0], "right")) - 1 if len(bad) else len(blocks)
    if b_sum < len(blocks) and b_sum <= b_kind:
        offset, n, _ = blocks[b_sum]
        r0 = int(first[b_sum])
        raise _err(path, offset, f"block {b_sum}, records {r0}..{r0 + n - 1}",
                   "checksum mismatch: the records are corrupt")
    if b_kind < len(blocks):
        i = int(bad[0])
        raise _err(path, blocks[b_kind][0] + (i - int(first[b_kind])) * rec, f"record {i}",
                   f"unknown event kind {int(kind[i])}")
    return events


# -- the trace's checksum and sampling hash ------------------------------------------
# Both are part of the trace format: the recorder computes them in C
# (pgo._core), readers with these; tests/unit/test_format_pins.py pins the two.

_GOLDEN = 0x9E3779B97F4A7C15       # 2**64 / the golden ratio: the multiplier of both
_M64 = (1 << 64) - 1
_FEW_BLOCKS = 2                    # blocks left at which Python ints beat numpy's call cost
_TILE_BYTES = 1 << 20


def pass_level(addr: int) -> int:
    """The deepest sample level that still keeps events of ``addr``, 0 to 32
    (the recorder's address sampling: level L keeps the addresses whose hash
    has its top 2L bits zero, so every level up to this one keeps them)."""
    h = ((addr >> 4) * _GOLDEN) & _M64
    return (64 - h.bit_length()) // 2


def block_checksum(payload: bytes | bytearray | memoryview) -> int:
    """The recorder's checksum of a trace header or of a block's records
    (its length a multiple of 8)."""
    n = memoryview(payload).nbytes
    if n % 8:
        raise ValueError(f"checksum: length {n} is not a multiple of 8")
    words = np.frombuffer(payload, "<u8")
    return int(_checksums(words, np.zeros(1, np.int64), np.array([n // 8], np.int64))[0])


def _checksums(words: np.ndarray, starts: np.ndarray, nwords: np.ndarray) -> np.ndarray:
    """``block_checksum`` of many payloads at once (uint32): payload i is
    ``words[starts[i]:starts[i] + nwords[i]]``.

    The checksum runs four lanes, h = (h ^ w) * K; h ^= h >> 29, lane l over
    words 4j + l at step j, the words left over through lane 0, then the
    length and the lanes through a finalizer.  Each lane is a serial chain,
    so the speed comes from running the lanes of all payloads side by side,
    longest first: while the first ``a`` payloads are still running, tiles
    of steps (a row a step: four words of each of them) are gathered and run
    through ``_steps``."""
    nb = len(starts)
    steps = nwords // 4
    order = np.argsort(-steps, kind="stable")
    steps, starts = steps[order], starts[order]
    h = np.tile(np.arange(1, 5, dtype=np.uint64), nb)   # the lanes, longest payload first
    windows = _windows(words)
    until = [*steps.tolist(), 0]          # the first a payloads run steps until[a]..until[a-1]
    for a in range(nb, 0, -1):
        chunk = max(1, _TILE_BYTES // (32 * a)) if a > _FEW_BLOCKS else until[a - 1] + 1
        for j0 in range(until[a], until[a - 1], chunk):
            j = np.arange(j0, min(j0 + chunk, until[a - 1]), dtype=np.int64)
            tile = windows[(starts[:a] + 4 * j[:, None]).reshape(-1)].view("<u8")
            _steps(h[:4 * a], tile.reshape(len(j), 4 * a))
    lanes = h.reshape(nb, 4)
    left = nwords[order] - 4 * steps
    for r in range(3):
        sel = np.flatnonzero(left > r)
        x = (lanes[sel, 0] ^ words[starts[sel] + 4 * steps[sel] + r]) * np.uint64(_GOLDEN)
        lanes[sel, 0] = x ^ (x >> np.uint64(29))
    out = _fmix(nwords[order].astype(np.uint64) * np.uint64(8))
    for lane in range(3):
        out = _fmix(out ^ lanes[:, lane]) * np.uint64(_GOLDEN)
    out = _fmix(out ^ lanes[:, 3])
    sums = np.empty(nb, np.uint32)
    sums[order] = out.astype(np.uint32)
    return sums


def _steps(h: np.ndarray, tile: np.ndarray) -> None:
    """Run the lanes ``h`` (in place) through the steps of ``tile``, a row of
    words a step: four numpy calls a step, or, for a few lanes, a Python int
    holding them all (a lane in each 128-bit slot, room for the product),
    whose operations cost less than numpy's calls."""
    n = len(h)
    if n > 4 * _FEW_BLOCKS:
        k = np.full(n, _GOLDEN, np.uint64)
        s29 = np.full(n, 29, np.uint64)
        t = np.empty(n, np.uint64)
        for w in tile:
            np.bitwise_xor(h, w, h)
            np.multiply(h, k, h)
            np.right_shift(h, s29, t)
            np.bitwise_xor(h, t, h)
        return
    mask = int.from_bytes((b"\xff" * 8 + bytes(8)) * n, "little")
    x = int.from_bytes(_slots(h), "little")
    rows = memoryview(_slots(tile))
    for w in [int.from_bytes(rows[i:i + 16 * n], "little") for i in range(0, len(rows), 16 * n)]:
        x = (x ^ w) * _GOLDEN & mask
        x ^= x >> 29 & mask
    h[:] = np.frombuffer(x.to_bytes(16 * n, "little"), "<u8")[::2]


def _fmix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    out: np.ndarray = x ^ (x >> np.uint64(33))
    return out


def _windows(words: np.ndarray) -> np.ndarray:
    """Every run of four words (32 bytes) of ``words``, by its first word."""
    return np.ndarray((max(len(words) - 3, 0),), "V32", buffer=words, strides=(8,))


def _slots(values: np.ndarray) -> bytes:
    """uint64 values, each in a 128-bit slot (little-endian)."""
    z = np.zeros((values.size, 2), "<u8")
    z[:, 0] = values.reshape(-1)
    return z.tobytes()


# -- py-spy samples ------------------------------------------------------------------

NO_PYTHON_FRAME = "<no Python frame>"


def read_cpu_raw(path: str | os.PathLike[str], *,
                 allow_truncated: bool = False) -> dict[tuple[str, ...], int]:
    """py-spy's raw output: one stack per line, outermost frame first,
    ``frame;frame;... COUNT``.  Returns {stack: samples}."""
    path = Path(path)
    data = _read_bytes(path)
    stacks: dict[tuple[str, ...], int] = {}
    pos = 0
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        start = pos
        pos += len(line) + 1
        if not line.strip():
            continue
        last = i == len(lines) - 1       # no newline after it: cut short
        if last and allow_truncated:
            # py-spy ends every line with a newline: a last line without
            # one was cut, maybe inside its count ("12" read as "1").
            break
        try:
            # Frame names are read from the live process without stopping it
            # (--nonblocking): one caught mid-update can hold any bytes.
            text = line.decode("utf-8", errors="replace")
            stack, _, count = text.rpartition(" ")
            n = int(count)
            if n < 0:
                raise ValueError
        except ValueError:
            if last and allow_truncated:
                break
            raise _err(path, start, f"line {i + 1}", "not a 'frame;frame;... COUNT' line") from None
        # A sample taken while no Python code ran (start-up, shutdown).
        key = tuple(stack.split(";")) if stack.strip() else (NO_PYTHON_FRAME,)
        stacks[key] = stacks.get(key, 0) + n
    return stacks


def speedscope_from_samples(stacks: dict[tuple[str, ...], int], name: str) -> dict[str, Any]:
    """A speedscope document (https://www.speedscope.app/file-format-schema.json)
    of sampled stacks."""
    frames: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    samples: list[list[int]] = []
    weights: list[int] = []
    for stack, n in sorted(stacks.items()):
        ids = []
        for fr in stack:
            if fr not in index:
                index[fr] = len(frames)
                func, file, line = _split_frame(fr)
                entry: dict[str, Any] = {"name": func}
                if file:
                    entry["file"] = file
                if line is not None:
                    entry["line"] = line
                frames.append(entry)
            ids.append(index[fr])
        samples.append(ids)
        weights.append(n)
    total = sum(weights)
    return {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "shared": {"frames": frames},
        "profiles": [{"type": "sampled", "name": name, "unit": "none", "startValue": 0,
                      "endValue": total, "samples": samples, "weights": weights}],
        "name": name, "activeProfileIndex": 0, "exporter": "pgo",
    }


def check_speedscope(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a speedscope file and check it against the parts of the schema
    pgo uses (sampled profiles, frames by index)."""
    doc = read_json(path)
    c = _Checker(path)
    if doc.get("$schema") != "https://www.speedscope.app/file-format-schema.json":
        raise _err(path, None, "$schema", "not a speedscope document")
    frames = c.items(c.get(doc, "shared", dict, ""), "frames", "shared")
    for i, fr in enumerate(frames):
        c.get(fr, "name", str, f"shared.frames[{i}]")
    for p, prof in enumerate(c.items(doc, "profiles", "")):
        where = f"profiles[{p}]"
        if c.get(prof, "type", str, where) != "sampled":
            raise _err(path, None, f"{where}.type", "only sampled profiles are read")
        samples = c.items(prof, "samples", where)
        weights = c.items(prof, "weights", where)
        if len(samples) != len(weights):
            raise _err(path, None, where, f"{len(samples)} samples but {len(weights)} weights")
        for s, stack in enumerate(samples):
            c.check(stack, list, f"{where}.samples[{s}]")
            for k in stack:
                if not (isinstance(k, int) and not isinstance(k, bool) and 0 <= k < len(frames)):
                    raise _err(path, None, f"{where}.samples[{s}]", f"bad frame index {_show(k)}")
        for w, weight in enumerate(weights):
            c.check(weight, "nonneg", f"{where}.weights[{w}]")
    return doc


def _split_frame(frame: str) -> tuple[str, str | None, int | None]:
    # py-spy writes "function (file.py:123)".
    if frame.endswith(")") and " (" in frame:
        func, _, loc = frame[:-1].rpartition(" (")
        file, _, line = loc.rpartition(":")
        if file and line.isdigit():
            return func, file, int(line)
        return func, loc, None
    return frame, None, None


# -- the bundle ----------------------------------------------------------------------

@dataclass
class Bundle:
    """A loaded profile bundle.  Parts a run did not collect are None; the
    event trace is read on first use of ``events``."""

    path: Path
    manifest: dict[str, Any]
    allocations: dict[str, Any] | None
    event_sites: dict[str, Any] | None
    gc: dict[str, Any] | None
    cpu: dict[tuple[str, ...], int] | None
    warnings: list[str]
    children: list[Bundle]
    _events: EventTrace | None = None
    runs: list[Bundle] = field(default_factory=list)
    _objects: EventTrace | None = None

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def has_events(self) -> bool:
        return (self.path / EVENTS).exists()

    @property
    def events(self) -> EventTrace | None:
        """numpy data events (every one, up to the budget)."""
        if self._events is None and self.has_events:
            self._events = read_events(self.path / EVENTS, allow_truncated=not self.complete)
            self.warnings.extend(self._events.warnings)
        return self._events

    @property
    def objects(self) -> EventTrace | None:
        """Sampled Python object allocations and their frees."""
        if self._objects is None and (self.path / OBJECTS).exists():
            self._objects = read_events(self.path / OBJECTS, allow_truncated=not self.complete)
            self.warnings.extend(self._objects.warnings)
        return self._objects


def load(path: str | os.PathLike[str], *, events: bool = True, children: bool = True) -> Bundle:
    """Load and validate a bundle directory (``events=False`` leaves the
    trace on disk until ``bundle.events`` is read)."""
    path = Path(path)
    if not path.is_dir():
        if path.exists():
            raise ProfileFormatError(f"{path}: not a profile bundle (a bundle is a directory "
                                     f"holding {MANIFEST})")
        raise ProfileFormatError(f"{path}: no such bundle")
    manifest = read_json(path / MANIFEST, JSON_FORMATS[MANIFEST])
    _check_manifest(path / MANIFEST, manifest)
    warnings: list[str] = []
    if not manifest["complete"]:
        warnings.append(f"{path}: the profiled process did not finish cleanly "
                        f"({_exit_text(manifest)}); parts may be cut short")
    allocations = _optional(path / ALLOCATIONS, _check_allocations)
    event_sites = _optional(path / EVENT_SITES, _check_event_sites)
    gc_part = _optional(path / GC, _check_gc)
    cpu = None
    if (path / CPU_RAW).exists():
        cpu = read_cpu_raw(path / CPU_RAW, allow_truncated=not manifest["complete"])
    kids: list[Bundle] = []
    if children and (path / CHILDREN).is_dir():
        for child in sorted((path / CHILDREN).iterdir()):
            if (child / MANIFEST).exists():
                # Every descendant writes into the root's children/: one level.
                kid = load(child, events=events, children=False)
                kids.append(kid)
                warnings.extend(kid.warnings)
    runs: list[Bundle] = []
    if (path / RUNS).is_dir():
        names = sorted((p for p in (path / RUNS).iterdir() if p.name.isdigit()),
                       key=lambda p: int(p.name))
        for run in names:
            r = load(run, events=events, children=False)
            if r.runs:
                raise ProfileFormatError(f"{run}: a merged bundle inside a merged bundle")
            runs.append(r)
            warnings.extend(r.warnings)
        if not runs:
            raise ProfileFormatError(f"{path / RUNS}: a merged bundle without runs")
    bundle = Bundle(path=path, manifest=manifest, allocations=allocations,
                    event_sites=event_sites, gc=gc_part, cpu=cpu, warnings=warnings,
                    children=kids, runs=runs)
    if events:                  # read the traces now, not on first use
        _ = bundle.events, bundle.objects
    return bundle


def in_memory(manifest: dict[str, Any], events: np.ndarray, *,
              event_sites: dict[str, Any] | None = None, t0_ns: int = 0,
              path: str = "<in memory>") -> Bundle:
    """A bundle held in memory, nothing on disk: a manifest
    (``manifest_document``), a complete numpy event trace (``EVENT_DTYPE``)
    and its sites (``event_sites_document``); no other part."""
    return Bundle(path=Path(path), manifest=manifest, allocations=None,
                  event_sites=event_sites, gc=None, cpu=None, warnings=[], children=[],
                  _events=EventTrace(events=events, t0_ns=t0_ns, complete=True))


# How a profiled run ended, for `pgo analyze`: "ok" (exit 0), "interrupted"
# (^C or SIGTERM: the user stopped it, what ran is a sample of the run) or
# "failed" (another exit code or signal: the run did not do its work).
INTERRUPT_CODES = (130, 143)
INTERRUPT_SIGNALS = ("SIGINT", "SIGTERM")


def run_outcome(manifest: dict[str, Any]) -> tuple[str, str]:
    """("ok" | "interrupted" | "failed" | "unknown", how it ended in words)."""
    ex = manifest.get("exit") or {}
    text = _exit_text(manifest)
    if ex.get("signal"):
        return ("interrupted" if ex["signal"] in INTERRUPT_SIGNALS else "failed"), text
    code = ex.get("code")
    if code is None:
        return "unknown", text
    if code == 0:
        return "ok", text
    return ("interrupted" if code in INTERRUPT_CODES else "failed"), text


def _exit_text(manifest: dict[str, Any]) -> str:
    ex = manifest.get("exit") or {}
    if ex.get("signal"):
        return f"killed by {ex['signal']}"
    if ex.get("code") is not None:
        return f"exit code {ex['code']}"
    return "no exit status recorded"


def _optional(path: Path, check: Callable[[Path, dict[str, Any]], None]
              ) -> dict[str, Any] | None:
    if not path.exists():
        return None
    obj = read_json(path, JSON_FORMATS[path.name])
    check(path, obj)
    return obj


def _check_manifest(path: Path, m: dict[str, Any]) -> None:
    c = _Checker(path)
    c.get(m, "complete", bool, "")
    c.get(m, "command", list, "")
    for i, a in enumerate(m["command"]):
        c.check(a, str, f"command[{i}]")
    c.get(m, "cwd", str, "")
    c.get(m, "python", str, "")
    c.get(m, "pid", int, "")
    c.get(m, "started_at", str, "")
    if c.get(m, "duration_s", None, "") is not None:
        c.get(m, "duration_s", "nonneg", "")
    c.get(m, "collectors", dict, "")
    for name, info in m["collectors"].items():
        c.get(info, "status", str, f"collectors.{name}")
    c.get(m, "warnings", list, "")
    c.get(m, "overhead", dict, "", optional=True, default={})
    c.get(m, "exit", dict, "", optional=True, default={})


def _check_allocations(path: Path, a: dict[str, Any]) -> None:
    c = _Checker(path)
    c.get(a, "nframes", "count", "")
    sites = c.items(a, "sites", "")
    ids = set()
    for i, s in enumerate(sites):
        w = f"sites[{i}]"
        sid = c.get(s, "id", "count", w)
        ids.add(sid)
        if c.get(s, "domain", str, w) not in ("objects", "numpy"):
            raise _err(path, None, f"{w}.domain",
                       f"expected 'objects' or 'numpy', got {s['domain']!r}")
        for k, fr in enumerate(c.items(s, "frames", w)):
            c.row(fr, (str, int), f"{w}.frames[{k}]", "[file, line]")
        for key in ("peak_bytes", "peak_count", "final_bytes", "final_count", "snapshots_seen"):
            c.get(s, key, "count", w)
    for i, snap in enumerate(c.items(a, "snapshots", "")):
        w = f"snapshots[{i}]"
        c.get(snap, "t_s", "nonneg", w)
        c.get(snap, "traced_bytes", "count", w)
        for k, row in enumerate(c.items(snap, "live", w)):
            c.row(row, ("count",) * 3, f"{w}.live[{k}]", "[site, bytes, count]")
            if row[0] not in ids:
                raise _err(path, None, f"{w}.live[{k}][0]", f"unknown site id {row[0]}")


def _check_event_sites(path: Path, e: dict[str, Any]) -> None:
    c = _Checker(path)
    for i, s in enumerate(c.items(e, "sites", "")):
        w = f"sites[{i}]"
        c.get(s, "id", "count", w)
        c.get(s, "module", (str, type(None)), w)
        c.get(s, "qualname", str, w)
        c.get(s, "file", str, w)
        c.get(s, "line", int, w)


def _check_gc(path: Path, g: dict[str, Any]) -> None:
    c = _Checker(path)
    thresholds = c.get(g, "thresholds", list, "")
    for i, t in enumerate(thresholds):
        c.check(t, "count", f"thresholds[{i}]")
    for i, gen in enumerate(c.items(g, "generations", "")):
        for key in GC_COUNTS:
            c.get(gen, key, "count", f"generations[{i}]")
    pauses = c.get(g, "pauses", dict, "")
    lengths = set()
    for key in GC_PAUSE_COLUMNS:
        col = c.items(pauses, key, "pauses")
        lengths.add(len(col))
        kind = "nonneg" if key == "t_s" else "count"
        for i, v in enumerate(col):
            c.check(v, kind, f"pauses.{key}[{i}]")
    if len(lengths) > 1:
        raise _err(path, None, "pauses", "columns of different lengths")
    c.get(g, "pauses_dropped", "count", "")
    c.get(g, "total_pause_ns", "count", "")
    c.get(g, "wall_s", "nonneg", "")


# -- merging -----------------------------------------------------------------------

def merge_problems(bundles: list[Bundle]) -> list[str]:
    """Why these bundles should not be mixed: another program, other
    versions, another object sampling rate, an incomplete run."""
    out = []
    first = bundles[0].manifest
    what = ("target", "python", "numpy", "pgo")
    for b in bundles[1:]:
        m = b.manifest
        t0, t1 = first.get("target", {}), m.get("target", {})
        if (t0.get("kind"), os.path.basename(str(t0.get("name", "")))) != \
                (t1.get("kind"), os.path.basename(str(t1.get("name", "")))):
            out.append(f"{b.path}: another program ({t1.get('kind')} {t1.get('name')!r}, "
                       f"not {t0.get('kind')} {t0.get('name')!r})")
        for key in what[1:]:
            if m.get(key) != first.get(key):
                out.append(f"{b.path}: {key} {m.get(key)} (the first bundle has "
                           f"{first.get(key)})")
        r0 = first["collectors"].get("objects", {}).get("sample_bytes")
        r1 = m["collectors"].get("objects", {}).get("sample_bytes")
        if r0 != r1:
            out.append(f"{b.path}: objects sampled every {r1} bytes, not {r0}")
    for b in bundles:
        if not b.complete:
            out.append(f"{b.path}: the run did not complete ({_exit_text(b.manifest)})")
        if b.runs:
            out.append(f"{b.path}: already a merged bundle")
    return out


def merge(paths: list[str | os.PathLike[str]], out: str | os.PathLike[str], *,
          force: bool = False) -> tuple[Path, list[str]]:
    """Combine bundles into ``out``: the runs are copied into ``out/runs/N``
    (analysis weighs them by their length: a run twice as long counts
    twice); ``gc.json`` and ``cpu.txt`` add theirs up (pauses shifted to one
    time line).  Mismatched bundles raise ProfileFormatError listing every
    problem, unless ``force`` (then the problems are warnings in the
    manifest)."""
    import shutil
    out = Path(out)
    if len(paths) < 2:
        raise ProfileFormatError("pgo merge needs at least two bundles")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ProfileFormatError(f"{out}: already exists and is not empty")
    bundles = [load(p, events=False) for p in paths]
    problems = merge_problems(bundles)
    if problems and not force:
        raise ProfileFormatError("these bundles should not be merged (--force to merge "
                                 "anyway):\n  " + "\n  ".join(problems))
    out.mkdir(parents=True, exist_ok=True)
    for i, b in enumerate(bundles):
        shutil.copytree(b.path, out / RUNS / str(i), ignore=shutil.ignore_patterns(CHILDREN))
    first = bundles[0].manifest
    durations = [float(b.manifest.get("duration_s") or 0.0) for b in bundles]
    manifest = dict(first)
    manifest.update({
        "complete": all(b.complete for b in bundles),
        "duration_s": round(sum(durations), 6),
        "merged_from": [{"path": str(b.path), "started_at": b.manifest.get("started_at"),
                         "duration_s": d, "host": b.manifest.get("host"),
                         "pid": b.manifest.get("pid")} for b, d in zip(bundles, durations)],
        "warnings": [f"merged despite: {p}" for p in problems],
        "collectors": {k: {"status": "merged" if any(
            b.manifest["collectors"].get(k, {}).get("status") == "ok" for b in bundles)
            else "off", **({"sample_bytes": v} if (v := first["collectors"].get(k, {}).get(
                "sample_bytes")) else {})} for k in first["collectors"]},
    })
    write_json(out / MANIFEST, manifest)
    gcs = [(b.gc, off) for b, off in zip(bundles, np.cumsum([0.0] + durations[:-1])) if b.gc]
    if gcs:
        g0 = gcs[0][0]
        pauses: dict[str, list[Any]] = {c: [] for c in GC_PAUSE_COLUMNS}
        for g, off in gcs:
            for c in GC_PAUSE_COLUMNS:
                pauses[c] += ([round(x + off, 6) for x in g["pauses"][c]] if c == "t_s"
                              else g["pauses"][c])
        write_json(out / GC, gc_document(
            thresholds=g0["thresholds"],
            generations=[{k: sum(g["generations"][i][k] for g, _ in gcs) for k in GC_COUNTS}
                         for i in range(len(g0["generations"]))],
            pauses=pauses, pauses_dropped=sum(g["pauses_dropped"] for g, _ in gcs),
            total_pause_ns=sum(g["total_pause_ns"] for g, _ in gcs),
            wall_s=round(sum(g["wall_s"] for g, _ in gcs), 6)))
    stacks: dict[tuple[str, ...], int] = {}
    for b in bundles:
        for k, v in (b.cpu or {}).items():
            stacks[k] = stacks.get(k, 0) + v
    if stacks:
        with open(out / CPU_RAW, "w", encoding="utf-8") as f:
            for k in sorted(stacks):
                f.write(f"{';'.join(k)} {stacks[k]}\n")
        write_json(out / CPU_SPEEDSCOPE, speedscope_from_samples(stacks, name="merged"))
    return out, problems
