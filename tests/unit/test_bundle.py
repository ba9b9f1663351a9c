"""The profile bundle format (pgo.bundle): the binary event trace, the JSON
parts, py-spy's raw samples and speedscope, and the refusal to unpickle.

The trace is a real one, written by the C recorder in this process (six
batches of arrays, a flush after each, so six blocks), then cut, bit-flipped
and rewritten byte by byte.  The property checked for every corruption: a
``ProfileFormatError`` naming the file and the byte, or -- only when the
caller allows a truncated trace -- the events of the leading whole blocks
with a warning that says "truncated".  Never a different result in silence,
never another exception type, never a large allocation.
"""

import ast
import copy
import json
import os
import pickle
import random
import re
import struct
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgo
from pgo import bundle as fmt
from pgo._core import recorder
from pgo._errors import ProfileFormatError, ProfilerError
from pgo.profiling.tracemalloc_import import bundle_from_dump

# magic, version, header size, record size, block max, t0, checksum of the
# 32 bytes before it, zero
HEADER = struct.Struct("<8sIIIIQII")
SIGNED = 32               # the header bytes its checksum covers
BLOCK = struct.Struct("<4sIII")
FOOTER = struct.Struct("<4sIQ")
RECORD = 48
ALLOC, CALLOC, REALLOC, FREE = 1, 2, 3, 4

BATCHES = 6
SIZES = range(1, 300)


# -- the trace, and a parse of its layout independent of pgo.bundle ----------------

@dataclass
class Block:
    offset: int       # of its header
    count: int
    seq: int
    crc: int

    @property
    def body(self):
        return self.offset + BLOCK.size

    @property
    def end(self):
        return self.body + self.count * RECORD


def layout(data):
    """The blocks of a trace and the offset of its footer, read with struct."""
    pos = HEADER.size
    blocks = []
    while data[pos:pos + 4] == b"PGOB":
        _, count, seq, crc = BLOCK.unpack_from(data, pos)
        blocks.append(Block(pos, count, seq, crc))
        pos = blocks[-1].end
    assert data[pos:pos + 4] == b"PGOE", pos
    assert pos + FOOTER.size == len(data)
    return blocks, pos


@dataclass
class Trace:
    path: Path
    objects_path: Path
    data: bytes
    blocks: list
    footer: int
    full: fmt.EventTrace
    stats: dict
    arrays: list          # (batch, data address, nbytes) of every array made


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    d = tmp_path_factory.mktemp("trace")
    path, objects_path = d / "events.trace", d / "objects.trace"
    assert not recorder.running()
    made = []
    recorder.start(str(path), objects_path=str(objects_path), max_events=10**6)
    try:
        for b in range(BATCHES):
            arrays = [np.ones(n) for n in SIZES]
            made += [(b, a.__array_interface__["data"][0], a.nbytes) for a in arrays]
            del arrays
            recorder.flush()
    finally:
        stats = recorder.stop()
    assert not recorder.running()
    data = path.read_bytes()
    blocks, footer = layout(data)
    full = fmt.read_events(path)
    return Trace(path, objects_path, data, blocks, footer, full, stats, made)


def header_bytes(magic=b"PGOTRACE", version=1, hsize=HEADER.size, rsize=RECORD, bmax=4096,
                 t0=123456789, *, checksum=None, zero=0):
    """A trace header, its checksum computed unless given."""
    head = HEADER.pack(magic, version, hsize, rsize, bmax, t0, 0, 0)[:SIGNED]
    if checksum is None:
        checksum = fmt.block_checksum(head)
    return head + struct.pack("<II", checksum, zero)


def write(tmp_path, data, name="cut.trace"):
    p = tmp_path / name
    p.write_bytes(bytes(data))
    return p


def flip(data, byte, bit):
    out = bytearray(data)
    out[byte] ^= 1 << bit
    return bytes(out)


def whole_blocks_before(trace, offset):
    """Records in the blocks that end at or before ``offset``."""
    return sum(b.count for b in trace.blocks if b.end <= offset)


def check_never_silent(trace, path, *, allow_truncated):
    """Read a corrupted copy: an error, or (allow_truncated) a whole-block
    prefix with a "truncated" warning, or exactly the original events."""
    try:
        got = fmt.read_events(path, allow_truncated=allow_truncated)
    except ProfileFormatError as e:
        assert str(path) in str(e)
        return e
    n = len(got.events)
    prefixes = np.cumsum([0] + [b.count for b in trace.blocks])
    assert n in prefixes, n
    assert got.t0_ns == trace.full.t0_ns
    assert np.array_equal(got.events, trace.full.events[:n])
    if got.warnings or not got.complete:
        assert allow_truncated
        assert not got.complete
        assert any("truncated" in w for w in got.warnings), got.warnings
    else:
        assert n == len(trace.full.events)
    return got


# -- a complete trace ----------------------------------------------------------------

def test_a_complete_trace_loads_with_every_event(trace):
    t = trace.full
    assert t.complete is True
    assert t.warnings == []
    assert t.events.dtype == fmt.EVENT_DTYPE
    assert 0 < t.t0_ns <= time.monotonic_ns()
    assert HEADER.size == fmt.TRACE_HEADER.size == 40
    assert trace.data[:HEADER.size] == header_bytes(bmax=4096, t0=t.t0_ns)
    assert len(trace.blocks) >= 5
    assert [b.seq for b in trace.blocks] == list(range(len(trace.blocks)))
    assert all(0 < b.count <= 4096 for b in trace.blocks)
    assert len(t.events) == sum(b.count for b in trace.blocks) == trace.stats["numpy"]["written"]
    assert trace.stats["numpy"]["blocks"] == len(trace.blocks)
    ev = t.events
    kinds = ev["kind"]
    assert set(np.unique(kinds)) <= {ALLOC, CALLOC, REALLOC, FREE}
    allocs = np.isin(kinds, (ALLOC, CALLOC))
    frees = kinds == FREE
    # Every array made is an allocation of its size, freed later.
    assert allocs.sum() >= BATCHES * len(SIZES)
    assert frees.sum() >= BATCHES * len(SIZES)
    for n in SIZES:
        assert ((ev["size"] == 8 * n) & allocs).sum() >= BATCHES, n
    for batch, addr, nbytes in trace.arrays[::7]:
        at = np.flatnonzero(allocs & (ev["addr"] == addr) & (ev["size"] == nbytes))
        assert len(at), (batch, addr, nbytes)
        freed = np.flatnonzero(frees & (ev["addr"] == addr))
        assert (freed > at[0]).any(), (batch, addr, nbytes)
    # One thread: time runs forward from t0.
    assert (ev["t_ns"] >= t.t0_ns).all()
    assert (np.diff(ev["t_ns"].astype(np.int64)) >= 0).all()
    assert (ev["level"] == 0).all()


def test_the_objects_trace_loads_too(trace):
    t = fmt.read_events(trace.objects_path)
    assert t.complete is True and t.warnings == []
    assert len(t.events) == trace.stats["objects"]["written"]
    assert set(np.unique(t.events["kind"])) <= {ALLOC, CALLOC, REALLOC, FREE}


def test_block_checksum_matches_what_the_recorder_writes(trace):
    for b in trace.blocks:
        payload = trace.data[b.body:b.end]
        assert fmt.block_checksum(payload) == b.crc, b
    b = trace.blocks[0]
    payload = trace.data[b.body:b.end]
    # Swapped words and single flips change it.
    swapped = payload[8:16] + payload[:8] + payload[16:]
    assert swapped != payload
    assert fmt.block_checksum(swapped) != b.crc
    assert fmt.block_checksum(flip(payload, 100, 3)) != b.crc
    # The same function signs the file header.
    head_sum, zero = struct.unpack_from("<II", trace.data, SIGNED)
    assert fmt.block_checksum(trace.data[:SIGNED]) == head_sum and zero == 0
    # Bytes, bytearray or memoryview; the length, like the records', a
    # multiple of 8 (the empty payload too).
    assert fmt.block_checksum(bytearray(payload)) == fmt.block_checksum(memoryview(payload)) == b.crc
    assert isinstance(fmt.block_checksum(b""), int)
    assert fmt.block_checksum(bytes(8)) != fmt.block_checksum(bytes(16))   # the length counts
    for n in (1, 7, 47, 49):
        with pytest.raises(ValueError, match="multiple of 8"):
            fmt.block_checksum(payload[:n])


def _undetected_flips(payload):
    good = fmt.block_checksum(payload)
    return [(byte, bit) for byte in range(len(payload)) for bit in range(8)
            if fmt.block_checksum(flip(payload, byte, bit)) == good]


RANDOM_BLOCK = np.random.default_rng(7).integers(0, 2**64, size=16 * RECORD // 8,
                                                 dtype=np.uint64).tobytes()


@pytest.mark.parametrize("payload", [RANDOM_BLOCK, bytes(16 * RECORD), b"\xff" * 16 * RECORD,
                                     RANDOM_BLOCK[:RECORD], RANDOM_BLOCK[:8]],
                         ids=["random", "zeros", "ones", "one-record", "one-word"])
def test_block_checksum_sees_every_single_bit_flip(payload):
    # Bits 51-63 of the even words included: the old sum-based checksum
    # missed ~1.6% of single flips there.
    assert _undetected_flips(payload) == []


def test_block_checksum_sees_every_single_bit_flip_of_recorded_records(trace):
    b = trace.blocks[0]
    assert _undetected_flips(trace.data[b.body:b.body + 16 * RECORD]) == []


def test_block_checksum_sees_swapped_records_and_words():
    good = fmt.block_checksum(RANDOM_BLOCK)
    recs = [RANDOM_BLOCK[i:i + RECORD] for i in range(0, len(RANDOM_BLOCK), RECORD)]
    words = [RANDOM_BLOCK[i:i + 8] for i in range(0, len(RANDOM_BLOCK), 8)]
    for i in range(len(recs) - 1):
        swapped = recs[:i] + [recs[i + 1], recs[i]] + recs[i + 2:]
        assert fmt.block_checksum(b"".join(swapped)) != good, i
    for i in range(len(words) - 4):
        for j in (1, 4):          # a neighbour, and the next word of the same lane
            w = list(words)
            w[i], w[i + j] = w[i + j], w[i]
            assert fmt.block_checksum(b"".join(w)) != good, (i, j)


def test_a_flipped_top_bit_of_a_recorded_size_is_detected(trace, tmp_path):
    size_msb = trace.blocks[0].body + 16 + 7       # record 0, word 2 (size), bit 63
    p = write(tmp_path, flip(trace.data, size_msb, 7))
    for allow in (False, True):
        with pytest.raises(ProfileFormatError, match="checksum mismatch: the records are corrupt"):
            fmt.read_events(p, allow_truncated=allow)


def test_a_missing_trace_is_a_format_error(tmp_path):
    with pytest.raises(ProfileFormatError, match="missing"):
        fmt.read_events(tmp_path / "nope.trace")


# -- truncation ----------------------------------------------------------------------

def truncation_offsets(trace):
    data = trace.data
    offsets = set(range(HEADER.size + 1))
    for b in trace.blocks:
        for edge in (b.offset, b.body, b.end):
            offsets.update((edge - 1, edge, edge + 1))
        offsets.update(range(b.offset, b.body + 1))
    offsets.update(range(trace.footer - 1, len(data)))
    offsets.update(np.linspace(0, len(data) - 1, 120).astype(int).tolist())
    rng = random.Random(19)
    offsets.update(rng.randrange(len(data)) for _ in range(60))
    return sorted(o for o in offsets if 0 <= o < len(data))


def unit_start(trace, offset):
    """Where the reader stops on a file cut at ``offset``: the header, the
    block being read, or the footer."""
    if offset < HEADER.size:
        return 0
    starts = [HEADER.size] + [b.offset for b in trace.blocks] + [trace.footer]
    return max(s for s in starts if s <= offset)


def test_truncation_is_an_error_naming_the_file_and_byte(trace, tmp_path):
    offsets = truncation_offsets(trace)
    assert len(offsets) >= 200
    for off in offsets:
        p = write(tmp_path, trace.data[:off])
        with pytest.raises(ProfileFormatError) as info:
            fmt.read_events(p)
        msg = str(info.value)
        assert msg.startswith(str(p)), (off, msg)
        assert f"byte {unit_start(trace, off)}" in msg, (off, msg)


def test_a_truncated_trace_allowed_loads_its_whole_blocks_with_a_warning(trace, tmp_path):
    for off in truncation_offsets(trace):
        p = write(tmp_path, trace.data[:off])
        if off < HEADER.size:
            with pytest.raises(ProfileFormatError, match=r"byte 0: header") as info:
                fmt.read_events(p, allow_truncated=True)
            assert str(p) in str(info.value)
            continue
        got = fmt.read_events(p, allow_truncated=True)
        k = whole_blocks_before(trace, off)
        assert got.complete is False, off
        assert len(got.events) == k, off
        assert np.array_equal(got.events, trace.full.events[:k]), off
        assert got.t0_ns == trace.full.t0_ns
        assert len(got.warnings) == 1, (off, got.warnings)
        w = got.warnings[0]
        assert "truncated" in w and str(p) in w, w
        assert f"after record {k}" in w, (off, w)


# -- bit flips -----------------------------------------------------------------------

def test_a_flipped_bit_in_the_records_is_a_checksum_error(trace, tmp_path):
    rng = random.Random(20)
    spots = []
    # Any bit: the first and last of each block, the top bit of its first
    # words (even and odd), and random ones.
    for i, b in enumerate(trace.blocks):
        spots += [(i, b.body, 0), (i, b.end - 1, 7), (i, b.end - 3, 7), (i, b.body + 7, 7),
                  (i, b.body + 15, 7), (i, b.body + 23, 3), (i, b.end - RECORD + 7, 7)]
        while len(spots) < 45 * (i + 1):
            spots.append((i, rng.randrange(b.body, b.end), rng.randrange(8)))
    for i, byte, bit in spots:
        p = write(tmp_path, flip(trace.data, byte, bit))
        for allow in (False, True):
            with pytest.raises(ProfileFormatError, match="checksum") as info:
                fmt.read_events(p, allow_truncated=allow)
            msg = str(info.value)
            assert str(p) in msg
            assert f"byte {trace.blocks[i].body}: block {i}," in msg, msg


@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_a_flipped_bit_in_a_block_header_is_an_error(trace, tmp_path, which):
    i = {"first": 0, "middle": len(trace.blocks) // 2, "last": len(trace.blocks) - 1}[which]
    b = trace.blocks[i]
    expect = {0: "magic", 4: None, 8: "sequence number", 12: "checksum"}
    for byte in range(BLOCK.size):
        for bit in range(8):
            p = write(tmp_path, flip(trace.data, b.offset + byte, bit))
            with pytest.raises(ProfileFormatError) as info:
                fmt.read_events(p)
            msg = str(info.value)
            assert str(p) in msg and "byte" in msg
            want = expect[byte - byte % 4]
            if want:
                assert want in msg, (byte, bit, msg)
            # Allowing truncation, a count may look cut short; nothing else.
            got = check_never_silent(trace, p, allow_truncated=True)
            if not isinstance(got, ProfileFormatError):
                assert 4 <= byte < 8, (byte, bit)
                assert len(got.events) == sum(x.count for x in trace.blocks[:i])


def test_a_flipped_bit_in_the_footer_is_an_error(trace, tmp_path):
    for byte in range(trace.footer, len(trace.data)):
        for bit in range(8):
            p = write(tmp_path, flip(trace.data, byte, bit))
            for allow in (False, True):
                with pytest.raises(ProfileFormatError) as info:
                    fmt.read_events(p, allow_truncated=allow)
                assert str(p) in str(info.value) and "byte" in str(info.value)


def test_a_flipped_bit_in_the_file_header_is_an_error(trace, tmp_path):
    # Every bit of all 40 bytes: magic and version are named; any other
    # field, t0, the checksum and the zero word fail the header checksum.
    for byte in range(HEADER.size):
        for bit in range(8):
            p = write(tmp_path, flip(trace.data, byte, bit))
            if byte < 8:
                pattern = r"byte 0: header: bad magic"
            elif byte < 12:
                pattern = r"byte 8: header: version \d+ is not supported"
            else:
                pattern = r"byte 32: header: checksum mismatch: the header is corrupt"
            for allow in (False, True):
                with pytest.raises(ProfileFormatError, match=pattern) as info:
                    fmt.read_events(p, allow_truncated=allow)
                assert str(info.value).startswith(str(p))


def test_a_flipped_bit_in_t0_is_detected(trace, tmp_path):
    p = write(tmp_path, flip(trace.data, 30, 2))
    for allow in (False, True):
        with pytest.raises(ProfileFormatError, match="byte 32: header: checksum mismatch"):
            fmt.read_events(p, allow_truncated=allow)


# -- bad header fields ---------------------------------------------------------------

def patched_header(data, **fields):
    """The trace with header fields replaced, the header checksum recomputed
    (unless ``checksum`` is given)."""
    magic, version, hsize, rsize, bmax, t0, _, zero = HEADER.unpack_from(data, 0)
    vals = dict(magic=magic, version=version, hsize=hsize, rsize=rsize, bmax=bmax, t0=t0,
                checksum=None, zero=zero)
    vals.update(fields)
    return header_bytes(**vals) + data[HEADER.size:]


@pytest.mark.parametrize("fields, pattern", [
    (dict(magic=b"PGOTRACF"), r"byte 0: header: bad magic b'PGOTRACF'"),
    (dict(magic=b"\x89PNG\r\n\x1a\n"), r"bad magic"),
    (dict(version=2), r"byte 8: header: version 2 is not supported"),
    (dict(version=0), r"version 0 is not supported"),
    (dict(rsize=40), r"byte 12: header: header/record sizes 40/40, expected 40/48"),
    (dict(rsize=2**32 - 1), r"header/record sizes"),
    (dict(hsize=64), r"header/record sizes 64/48"),
    (dict(hsize=32), r"byte 12: header: header/record sizes 32/48, expected 40/48"),
    (dict(checksum=0), r"byte 32: header: checksum mismatch: the header is corrupt"),
    (dict(zero=1), r"byte 32: header: checksum mismatch: the header is corrupt"),
    (dict(bmax=0), r"byte 20: header: absurd block size 0"),
    (dict(bmax=2**31), r"absurd block size 2147483648"),
    (dict(bmax=100), r"absurd record count"),      # smaller than the blocks written
])
def test_bad_header_fields_are_named(trace, tmp_path, fields, pattern):
    p = write(tmp_path, patched_header(trace.data, **fields))
    for allow in (False, True):
        with pytest.raises(ProfileFormatError, match=pattern) as info:
            fmt.read_events(p, allow_truncated=allow)
        assert str(info.value).startswith(str(p))


def test_a_trace_with_the_old_32_byte_header_is_refused(trace, tmp_path):
    # Version 1 as first written: no header checksum, the first block at 32.
    old = struct.pack("<8sIIIIQ", b"PGOTRACE", 1, 32, RECORD, 4096, trace.full.t0_ns)
    p = write(tmp_path, old + trace.data[HEADER.size:])
    for allow in (False, True):
        with pytest.raises(ProfileFormatError, match=r"byte 32: header: checksum mismatch"):
            fmt.read_events(p, allow_truncated=allow)


def test_not_a_trace_at_all(tmp_path):
    for data in (b"", b"PGOTRACE", b"{}" * 40, bytes(64)):
        p = write(tmp_path, data)
        for allow in (False, True):
            with pytest.raises(ProfileFormatError, match="byte 0: header"):
                fmt.read_events(p, allow_truncated=allow)


# -- absurd counts, memory -----------------------------------------------------------

def peak_bytes_of(fn):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        try:
            fn()
        finally:
            peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak - base


@pytest.mark.parametrize("count", [2**31, 2**32 - 1, 2**16, 4097, 0])
@pytest.mark.parametrize("which", [0, -1])
def test_an_absurd_block_count_fails_fast_in_little_memory(trace, tmp_path, count, which):
    b = trace.blocks[which]
    data = bytearray(trace.data)
    struct.pack_into("<I", data, b.offset + 4, count)
    p = write(tmp_path, data)
    for allow in (False, True):
        t = time.perf_counter()
        errors = []

        def read():
            with pytest.raises(ProfileFormatError) as info:
                fmt.read_events(p, allow_truncated=allow)
            errors.append(str(info.value))

        peak = peak_bytes_of(read)
        assert time.perf_counter() - t < 2.0
        assert peak < 50 << 20, peak
        assert f"byte {b.offset + 4}" in errors[0] and f"absurd record count {count}" in errors[0]


def make_trace(blocks, *, t0=123456789, block_max=4096, footer=True, seqs=None, crcs=None):
    """A trace written by hand: ``blocks`` is a list of record arrays."""
    out = bytearray(header_bytes(bmax=block_max, t0=t0))
    total = 0
    for i, recs in enumerate(blocks):
        payload = recs.tobytes()
        seq = i if seqs is None else seqs[i]
        crc = fmt.block_checksum(payload) if crcs is None else crcs[i]
        out += BLOCK.pack(b"PGOB", len(recs), seq, crc) + payload
        total += len(recs)
    if footer:
        out += FOOTER.pack(b"PGOE", len(blocks), total)
    return bytes(out)


def records(n, *, start=0, kind=ALLOC):
    r = np.zeros(n, fmt.EVENT_DTYPE)
    r["t_ns"] = np.arange(start, start + n) * 10 + 1000
    r["addr"] = 0x7F0000000000 + np.arange(start, start + n) * 64
    r["size"] = np.arange(start, start + n) + 1
    r["site"] = 2
    r["tid"] = 77
    r["kind"] = kind
    return r


def test_a_hand_written_trace_reads_back_exactly(tmp_path):
    blocks = [records(5), records(3, start=5, kind=FREE), records(1, start=8, kind=REALLOC)]
    got = fmt.read_events(write(tmp_path, make_trace(blocks)))
    assert got.complete and got.warnings == [] and got.t0_ns == 123456789
    assert np.array_equal(got.events, np.concatenate(blocks))
    empty = fmt.read_events(write(tmp_path, make_trace([])))
    assert empty.complete and len(empty.events) == 0 and empty.events.dtype == fmt.EVENT_DTYPE


def test_a_block_claiming_more_than_the_file_holds_allocates_nothing(tmp_path):
    # The largest bound a header may give, a block claiming all of it, one
    # record present.
    data = bytearray(make_trace([records(1)], block_max=1 << 16, footer=False))
    struct.pack_into("<I", data, HEADER.size + 4, 1 << 16)
    p = write(tmp_path, data)
    with pytest.raises(ProfileFormatError, match=rf"byte {HEADER.size}: block 0 \(after record 0\): block 0 holds 65536"):
        fmt.read_events(p)
    seen = []
    peak = peak_bytes_of(lambda: seen.append(fmt.read_events(p, allow_truncated=True)))
    assert peak < 1 << 20
    assert len(seen[0].events) == 0 and "truncated" in seen[0].warnings[0]


def test_an_unknown_event_kind_is_named_by_record(tmp_path):
    recs = records(6)
    recs["kind"][4] = 9
    p = write(tmp_path, make_trace([records(3), recs]))
    for allow in (False, True):
        with pytest.raises(ProfileFormatError, match=r"record 7: unknown event kind 9") as info:
            fmt.read_events(p, allow_truncated=allow)
        assert f"byte {HEADER.size + 16 + 3 * 48 + 16 + 4 * 48}" in str(info.value)


@pytest.mark.parametrize("case, pattern", [
    ("seq", r"sequence number 5, expected 1"),
    ("crc", r"checksum mismatch"),
    ("footer-blocks", r"footer: says 3 blocks / 9 records, the file holds 2 / 9"),
    ("footer-records", r"footer: says 2 blocks / 10 records"),
])
def test_hand_written_inconsistencies(tmp_path, case, pattern):
    blocks = [records(5), records(4, start=5)]
    if case == "seq":
        data = make_trace(blocks, seqs=[0, 5])
    elif case == "crc":
        data = make_trace(blocks, crcs=[fmt.block_checksum(blocks[0].tobytes()), 1234])
    else:
        data = make_trace(blocks, footer=False)
        data += FOOTER.pack(b"PGOE", 3, 9) if case == "footer-blocks" else FOOTER.pack(b"PGOE", 2, 10)
    p = write(tmp_path, data)
    for allow in (False, True):
        with pytest.raises(ProfileFormatError, match=pattern):
            fmt.read_events(p, allow_truncated=allow)


@pytest.mark.parametrize("faults, pattern", [
    # (block 0's fault, block 1's fault): the one nearer the start is named.
    (("kind", "crc"), r"record 2: unknown event kind 9"),
    (("crc", "kind"), r"block 0, records 0\.\.4: checksum mismatch"),
    (("crc+kind", None), r"block 0, records 0\.\.4: checksum mismatch"),
    ((None, "crc+seq"), r"block 1, records 5\.\.8: checksum mismatch"),
    (("kind", "magic"), r"record 2: unknown event kind 9"),
    ((None, "magic"), r"block 2 \(after record 9\): bad block magic b'JUNK'"),
    (("crc", "cut"), r"block 0, records 0\.\.4: checksum mismatch"),
])
def test_of_several_faults_the_first_in_the_file_is_named(tmp_path, faults, pattern):
    # The block headers are walked first, the records then checked all at
    # once: the error is still the one a block-by-block reader meets first.
    blocks = [records(5), records(4, start=5)]
    crcs = [fmt.block_checksum(b.tobytes()) for b in blocks]
    seqs = [0, 1]
    for i, fault in enumerate(faults):
        if fault and "kind" in fault:
            blocks[i]["kind"][2] = 9
            crcs[i] = fmt.block_checksum(blocks[i].tobytes())
        if fault and "crc" in fault:
            crcs[i] ^= 1
        if fault and "seq" in fault and i + 1 < len(seqs):
            seqs[i + 1] = 7
    data = make_trace(blocks, crcs=crcs, seqs=seqs, footer=faults[1] not in ("magic", "cut"))
    if faults[1] == "magic":
        data += b"JUNK" * 4
    if faults[1] == "cut":
        data = data[:-20]
    p = write(tmp_path, data)
    for allow in (False, True):
        with pytest.raises(ProfileFormatError, match=pattern):
            fmt.read_events(p, allow_truncated=allow)


@pytest.mark.parametrize("garbage", [b"\0", b"PGOE", b"x" * 100, FOOTER.pack(b"PGOE", 0, 0)])
def test_trailing_bytes_after_the_footer_are_an_error(trace, tmp_path, garbage):
    p = write(tmp_path, trace.data + garbage)
    for allow in (False, True):
        with pytest.raises(ProfileFormatError, match=f"byte {len(trace.data)}: after footer: "
                                                     f"{len(garbage)} unexpected trailing bytes"):
            fmt.read_events(p, allow_truncated=allow)


def test_garbage_between_blocks_is_an_error(trace, tmp_path):
    b = trace.blocks[2]
    data = trace.data[:b.offset] + b"JUNK" * 4 + trace.data[b.offset:]
    p = write(tmp_path, data)
    for allow in (False, True):
        with pytest.raises(ProfileFormatError, match=rf"byte {b.offset}: block 2 .*bad block magic"):
            fmt.read_events(p, allow_truncated=allow)


# A small hand-written trace, corrupted at random anywhere, header
# included: truncated, bits flipped, bytes overwritten, inserted, deleted.
SMALL_BLOCKS = [records(5), records(3, start=5, kind=FREE), records(4, start=8)]
SMALL = make_trace(SMALL_BLOCKS)


@dataclass
class _Small:
    blocks: list
    full: fmt.EventTrace


def _small_trace():
    blocks, _ = layout(SMALL)
    full = fmt.EventTrace(events=np.concatenate(SMALL_BLOCKS), t0_ns=123456789, complete=True)
    return _Small(blocks, full)


corruption = st.one_of(
    st.tuples(st.just("cut"), st.integers(0, len(SMALL) - 1)),
    st.tuples(st.just("flip"), st.integers(0, len(SMALL) * 8 - 1)),
    st.tuples(st.just("set"), st.integers(0, len(SMALL) - 1), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, len(SMALL)), st.binary(min_size=1, max_size=60)),
    st.tuples(st.just("delete"), st.integers(0, len(SMALL) - 1), st.integers(1, 60)),
)


def corrupt(data, ops):
    data = bytearray(data)
    for op in ops:
        if op[0] == "cut":
            del data[op[1]:]
        elif op[0] == "flip" and op[1] // 8 < len(data):
            data[op[1] // 8] ^= 1 << (op[1] % 8)
        elif op[0] == "set" and op[1] < len(data):
            data[op[1]] = op[2]
        elif op[0] == "insert":
            data[op[1]:op[1]] = op[2]
        elif op[0] == "delete":
            del data[op[1]:op[1] + op[2]]
    return bytes(data)


@settings(max_examples=1000, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(corruption, min_size=1, max_size=3))
def test_random_corruption_is_an_error_or_a_warned_prefix(tmp_path, ops):
    data = corrupt(SMALL, ops)
    p = write(tmp_path, data, "fuzz.trace")
    small = _small_trace()
    for allow in (False, True):
        got = check_never_silent(small, p, allow_truncated=allow)
        if data == SMALL:
            assert not isinstance(got, ProfileFormatError)


# -- JSON parts ----------------------------------------------------------------------

def minimal_parts():
    return {
        "manifest.json": {
            "format": "pgo-profile", "version": 1, "complete": True,
            "command": ["python", "tärget.py", "--n", "3"], "cwd": "/tmp/wörk",
            "python": "3.11.9", "pid": 4242, "started_at": "2024-05-01T12:00:00+00:00",
            "duration_s": 1.25, "collectors": {"events": {"status": "ok"}, "cpu": {"status": "off"}},
            "warnings": [], "exit": {"code": 0, "signal": None}, "overhead": {"events": 0.01},
        },
        "gc.json": {
            "format": "pgo-gc", "version": 1, "thresholds": [700, 10, 10],
            "generations": [{"collections": 30, "collected": 100, "uncollectable": 0},
                            {"collections": 2, "collected": 5, "uncollectable": 0},
                            {"collections": 0, "collected": 0, "uncollectable": 0}],
            "pauses": {"t_s": [0.1, 0.5], "generation": [0, 1], "duration_ns": [1000, 5000],
                       "collected": [10, 5], "uncollectable": [0, 0]},
            "pauses_dropped": 0, "total_pause_ns": 6000, "wall_s": 1.25,
        },
        "allocations.json": {
            "format": "pgo-allocations", "version": 1, "nframes": 2,
            "sites": [
                {"id": 1, "domain": "numpy", "frames": [["tärget.py", 10], ["tärget.py", 3]],
                 "peak_bytes": 8000, "peak_count": 1, "final_bytes": 0, "final_count": 0,
                 "snapshots_seen": 2},
                {"id": 2, "domain": "objects", "frames": [["tärget.py", 11]],
                 "peak_bytes": 500, "peak_count": 5, "final_bytes": 100, "final_count": 1,
                 "snapshots_seen": 1},
            ],
            "snapshots": [{"t_s": 0.5, "traced_bytes": 8500, "live": [[1, 8000, 1], [2, 500, 5]]},
                          {"t_s": 1.0, "traced_bytes": 100, "live": [[2, 100, 1]]}],
        },
        "event_sites.json": {
            "format": "pgo-event-sites", "version": 1,
            "sites": [{"id": 2, "module": "__main__", "qualname": "main", "file": "tärget.py",
                       "line": 10},
                      {"id": 3, "module": None, "qualname": "f.<locals>.g", "file": "x.py",
                       "line": 1}],
        },
    }


def dump(obj):
    return json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def write_bundle(d, parts=None, *, trace=None, cpu=None):
    d.mkdir(parents=True, exist_ok=True)
    for name, obj in (minimal_parts() if parts is None else parts).items():
        (d / name).write_text(obj if isinstance(obj, str) else dump(obj), encoding="utf-8")
    if trace is not None:
        (d / "events.trace").write_bytes(trace)
    if cpu is not None:
        (d / "cpu.txt").write_bytes(cpu)
    return d


def test_a_minimal_bundle_loads(tmp_path, trace):
    d = write_bundle(tmp_path / "b", trace=trace.data, cpu=b"main (t.py:3);f (t.py:9) 5\n 2\n")
    (d / "objects.trace").write_bytes(trace.objects_path.read_bytes())
    write_bundle(d / "children" / "4243")
    b = fmt.load(d)
    parts = minimal_parts()
    assert b.complete is True and b.warnings == []
    assert b.manifest == parts["manifest.json"]
    assert b.allocations == parts["allocations.json"]
    assert b.event_sites == parts["event_sites.json"]
    assert b.gc == parts["gc.json"]
    assert b.cpu == {("main (t.py:3)", "f (t.py:9)"): 5, (fmt.NO_PYTHON_FRAME,): 2}
    assert np.array_equal(b.events.events, trace.full.events) and b.events.complete
    assert b.objects is not None and b.objects.complete
    assert [k.path.name for k in b.children] == ["4243"]
    assert b.children[0].events is None and b.children[0].cpu is None
    # Without the optional parts.
    d2 = write_bundle(tmp_path / "c", {"manifest.json": parts["manifest.json"]})
    b2 = fmt.load(d2)
    assert (b2.allocations, b2.event_sites, b2.gc, b2.cpu, b2.events, b2.objects) == (None,) * 6
    assert b2.children == []


def test_write_json_round_trips_and_refuses_nan(tmp_path):
    obj = minimal_parts()["manifest.json"]
    p = tmp_path / "manifest.json"
    fmt.write_json(p, obj)
    assert fmt.read_json(p, ("pgo-profile", 1)) == obj
    assert os.listdir(tmp_path) == ["manifest.json"]
    with pytest.raises(ValueError):
        fmt.write_json(p, {**obj, "duration_s": float("nan")})
    assert fmt.read_json(p) == obj
    assert os.listdir(tmp_path) == ["manifest.json"]


def _set(path, value):
    def mutate(parts):
        obj = parts
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value
    return mutate


def _del(path):
    def mutate(parts):
        obj = parts
        for k in path[:-1]:
            obj = obj[k]
        del obj[path[-1]]
    return mutate


M, G, A, E = "manifest.json", "gc.json", "allocations.json", "event_sites.json"

MUTATIONS = [
    # (id, part, mutation, record path, words in the message)
    ("pid-str", M, _set([M, "pid"], "x"), "pid", "expected int"),
    ("pid-bool", M, _set([M, "pid"], True), "pid", "expected int"),
    ("pid-float", M, _set([M, "pid"], 1.5), "pid", "expected int"),
    ("command-str", M, _set([M, "command"], "python x.py"), "command", "expected list"),
    ("command-item", M, _set([M, "command"], ["python", 3]), "command[1]", "expected str"),
    ("complete-int", M, _set([M, "complete"], 1), "complete", "expected bool"),
    ("complete-missing", M, _del([M, "complete"]), "complete", "missing"),
    ("cwd-missing", M, _del([M, "cwd"]), "cwd", "missing"),
    ("python-null", M, _set([M, "python"], None), "python", "expected str"),
    ("started-at-int", M, _set([M, "started_at"], 0), "started_at", "expected"),
    ("duration-str", M, _set([M, "duration_s"], "1.0"), "duration_s", "expected"),
    ("duration-bool", M, _set([M, "duration_s"], False), "duration_s", "expected"),
    ("collectors-list", M, _set([M, "collectors"], []), "collectors", "expected dict"),
    ("collector-str", M, _set([M, "collectors", "cpu"], "off"), "collectors.cpu",
     "expected an object"),
    ("collector-status", M, _set([M, "collectors", "cpu"], {}), "collectors.cpu.status", "missing"),
    ("warnings-str", M, _set([M, "warnings"], "none"), "warnings", "expected list"),
    ("exit-int", M, _set([M, "exit"], 0), "exit", "expected dict"),
    ("format", M, _set([M, "format"], "pgo-profile2"), "format", "expected 'pgo-profile'"),
    ("format-missing", M, _del([M, "format"]), "format", "got None"),
    ("version-2", M, _set([M, "version"], 2), "version", "version 2 is not supported"),
    ("version-0", M, _set([M, "version"], 0), "version", "not supported"),
    ("version-str", M, _set([M, "version"], "1"), "version", "expected an int"),
    ("version-bool", M, _set([M, "version"], True), "version", "expected an int"),
    ("version-missing", M, _del([M, "version"]), "version", "expected an int"),
    ("gc-collections-neg", G, _set([G, "generations", 0, "collections"], -1),
     "generations[0].collections", "expected count"),
    ("gc-collections-bool", G, _set([G, "generations", 0, "collections"], True),
     "generations[0].collections", "expected count"),
    ("gc-collected-float", G, _set([G, "generations", 2, "collected"], 1.0),
     "generations[2].collected", "expected count"),
    ("gc-generation-list", G, _set([G, "generations", 1], [1, 2, 3]), "generations[1]",
     "expected an object"),
    ("gc-threshold", G, _set([G, "thresholds", 1], "10"), "thresholds[1]", "expected count"),
    ("gc-pause-t", G, _set([G, "pauses", "t_s", 1], -0.5), "pauses.t_s[1]", "expected nonneg"),
    ("gc-pause-duration", G, _set([G, "pauses", "duration_ns", 0], 1.5), "pauses.duration_ns[0]",
     "expected count"),
    ("gc-pause-lengths", G, _set([G, "pauses", "collected"], [1]), "pauses",
     "columns of different lengths"),
    ("gc-pause-missing", G, _del([G, "pauses", "generation"]), "pauses.generation", "missing"),
    ("gc-pauses-list", G, _set([G, "pauses"], []), "pauses", "expected dict"),
    ("gc-wall-missing", G, _del([G, "wall_s"]), "wall_s", "missing"),
    ("gc-wall-neg", G, _set([G, "wall_s"], -1), "wall_s", "expected nonneg"),
    ("gc-format", G, _set([G, "format"], "pgo-profile"), "format", "expected 'pgo-gc'"),
    ("gc-version", G, _set([G, "version"], 9), "version", "version 9 is not supported"),
    ("alloc-peak-neg", A, _set([A, "sites", 0, "peak_bytes"], -1), "sites[0].peak_bytes",
     "expected count"),
    ("alloc-peak-str", A, _set([A, "sites", 1, "peak_bytes"], "500"), "sites[1].peak_bytes",
     "expected count"),
    ("alloc-peak-missing", A, _del([A, "sites", 0, "final_count"]), "sites[0].final_count",
     "missing"),
    ("alloc-id-neg", A, _set([A, "sites", 0, "id"], -1), "sites[0].id", "expected count"),
    ("alloc-domain", A, _set([A, "sites", 0, "domain"], "gpu"), "sites[0].domain",
     "expected 'objects' or 'numpy'"),
    ("alloc-frame-short", A, _set([A, "sites", 0, "frames", 1], ["x.py"]), "sites[0].frames[1]",
     "expected [file, line]"),
    ("alloc-frame-line", A, _set([A, "sites", 0, "frames", 0], ["x.py", "3"]),
     "sites[0].frames[0][1]", "expected int"),
    ("alloc-frame-file", A, _set([A, "sites", 1, "frames", 0], [3, 3]), "sites[1].frames[0][0]",
     "expected str"),
    ("alloc-sites-dict", A, _set([A, "sites"], {}), "sites", "expected list"),
    ("alloc-nframes", A, _set([A, "nframes"], -2), "nframes", "expected count"),
    ("alloc-unknown-site", A, _set([A, "snapshots", 1, "live", 0, 0], 99), "snapshots[1].live[0][0]",
     "unknown site id 99"),
    ("alloc-live-short", A, _set([A, "snapshots", 0, "live", 1], [2, 500]), "snapshots[0].live[1]",
     "expected [site, bytes, count]"),
    ("alloc-live-neg", A, _set([A, "snapshots", 0, "live", 0, 1], -8000), "snapshots[0].live[0][1]",
     "expected count"),
    ("alloc-t-neg", A, _set([A, "snapshots", 1, "t_s"], -1.0), "snapshots[1].t_s", "expected nonneg"),
    ("alloc-traced-missing", A, _del([A, "snapshots", 0, "traced_bytes"]),
     "snapshots[0].traced_bytes", "missing"),
    ("alloc-format", A, _set([A, "format"], "pgo-allocs"), "format", "expected 'pgo-allocations'"),
    ("sites-line", E, _set([E, "sites", 0, "line"], "10"), "sites[0].line", "expected int"),
    ("sites-module", E, _set([E, "sites", 1, "module"], 5), "sites[1].module", "expected"),
    ("sites-id", E, _set([E, "sites", 0, "id"], -2), "sites[0].id", "expected count"),
    ("sites-qualname", E, _del([E, "sites", 1, "qualname"]), "sites[1].qualname", "missing"),
    ("sites-item", E, _set([E, "sites", 0], "main"), "sites[0]", "expected an object"),
    ("sites-version", E, _set([E, "version"], 2), "version", "not supported"),
]


@pytest.mark.parametrize("part, mutate, record, words",
                         [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS])
def test_a_wrong_field_is_named_by_file_and_record(tmp_path, part, mutate, record, words):
    parts = minimal_parts()
    mutate(parts)
    d = write_bundle(tmp_path / "b", parts)
    with pytest.raises(ProfileFormatError) as info:
        fmt.load(d)
    msg = str(info.value)
    assert msg.startswith(f"{d / part}: "), msg
    assert f": {record}: " in msg, msg
    assert words in msg, msg
    # The unmodified bundle loads: the mutation is what failed.
    fmt.load(write_bundle(tmp_path / "ok"))


@pytest.mark.parametrize("part", [M, G, A, E])
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_literals_are_refused(tmp_path, part, literal):
    text = dump(minimal_parts()[part])
    # The last number in the part; every part ends with one.
    nums = list(re.finditer(r"(?<=: )-?\d+(\.\d+)?(?=,?\n)", text))
    assert nums
    m = nums[-1]
    d = write_bundle(tmp_path / "b")
    (d / part).write_text(text[:m.start()] + literal + text[m.end():], encoding="utf-8")
    with pytest.raises(ProfileFormatError, match=f"{literal.lstrip('-')} is not allowed") as info:
        fmt.load(d)
    assert str(info.value).startswith(str(d / part))


@pytest.mark.parametrize("where, value", [
    ((G, "wall_s"), "1e999"),
    ((G, "pauses", "t_s", 0), "1e999"),
    ((A, "snapshots", 0, "t_s"), "-1e999"),
])
def test_an_overflowing_number_is_refused(tmp_path, where, value):
    parts = minimal_parts()
    _set(list(where), "@@@")(parts)
    d = write_bundle(tmp_path / "b", {k: dump(v).replace('"@@@"', value) for k, v in parts.items()})
    with pytest.raises(ProfileFormatError, match="expected nonneg, got float") as info:
        fmt.load(d)
    assert str(info.value).startswith(str(d / where[0]))


@pytest.mark.parametrize("value", ["1e999", "-1e999", "-5", "-0.5"])
def test_an_infinite_or_negative_duration_is_refused(tmp_path, value):
    parts = minimal_parts()
    parts[M]["duration_s"] = "@@@"
    d = write_bundle(tmp_path / "b", {k: dump(v).replace('"@@@"', value) for k, v in parts.items()})
    with pytest.raises(ProfileFormatError, match=r"duration_s: expected nonneg, got (float|int) ") as info:
        fmt.load(d)
    assert str(info.value).startswith(f"{d / M}: ")


@pytest.mark.parametrize("value", [0, 0.0, 3, 1e300, None])
def test_a_finite_nonnegative_or_null_duration_loads(tmp_path, value):
    parts = minimal_parts()
    parts[M]["duration_s"] = value
    assert fmt.load(write_bundle(tmp_path / "b", parts)).manifest["duration_s"] == value


def test_invalid_json_names_line_column_and_byte(tmp_path):
    text = dump(minimal_parts()[M]).replace('"pid": 4242', '"pid": @')
    raw = text.encode()
    byte = raw.index(b"@")
    char = text.index("@")
    assert byte != char             # non-ASCII text before it: bytes, not characters
    line = text[:char].count("\n") + 1
    col = char - text.rfind("\n", 0, char)
    d = write_bundle(tmp_path / "b")
    (d / M).write_bytes(raw)
    with pytest.raises(ProfileFormatError) as info:
        fmt.load(d)
    msg = str(info.value)
    assert msg.startswith(f"{d / M}: byte {byte}: line {line} column {col}: not valid JSON"), msg


@pytest.mark.parametrize("raw, pattern", [
    (b'{"format": "pgo-profile", "cwd": "\xff\xfe"}', r"byte 34: not UTF-8 text"),
    (b"[1, 2, 3]", r"byte 0: top level: expected an object, got list"),
    (b'"pgo-profile"', r"top level: expected an object, got str"),
    (b"null", r"top level: expected an object, got NoneType"),
    (b"", r"byte 0: line 1 column 1: not valid JSON"),
    (b"[" * 200000, r"nested too deeply|not valid JSON"),
    (b'{"format": "pgo-profile", "version": 1, "pid": 1' + b"0" * 5000 + b"}", r"digits"),
    (b'{"format": "pgo-profile"}{"x": 1}', r"not valid JSON \(Extra data\)"),
])
def test_json_that_is_not_a_profile_part(tmp_path, raw, pattern):
    d = write_bundle(tmp_path / "b")
    (d / M).write_bytes(raw)
    with pytest.raises(ProfileFormatError, match=pattern) as info:
        fmt.load(d)
    assert str(info.value).startswith(str(d / M))


@pytest.mark.parametrize("part", [M, G, A, E])
def test_a_part_truncated_anywhere_is_a_format_error(tmp_path, part):
    d = write_bundle(tmp_path / "b")
    raw = (d / part).read_bytes()
    assert raw.endswith(b"}\n") and len(raw) > 200
    assert any(c >= 0x80 for c in raw) or part == G   # cuts inside a UTF-8 character too
    for off in range(len(raw) - 1):
        (d / part).write_bytes(raw[:off])
        try:
            fmt.load(d, events=False)
        except ProfileFormatError as e:
            assert str(e).startswith(f"{d / part}: byte "), (off, str(e))
        else:
            pytest.fail(f"{part} cut at byte {off} loaded")
    (d / part).write_bytes(raw[:-1])      # only the newline gone: still whole
    fmt.load(d, events=False)


def test_load_refuses_what_is_not_a_bundle(tmp_path):
    with pytest.raises(ProfileFormatError, match="no such bundle"):
        fmt.load(tmp_path / "nope")
    f = tmp_path / "file"
    f.write_text("{}")
    with pytest.raises(ProfileFormatError, match="not a profile bundle"):
        fmt.load(f)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProfileFormatError, match="manifest.json: missing"):
        fmt.load(tmp_path / "empty")


@pytest.mark.parametrize("part", [M, A, G, E, "events.trace", "objects.trace", "cpu.txt"])
def test_a_part_that_is_a_directory_is_a_format_error(tmp_path, part):
    d = write_bundle(tmp_path / "b")
    if (d / part).exists():
        (d / part).unlink()
    (d / part).mkdir()
    for events in (True, False):
        with pytest.raises(ProfileFormatError, match=r"cannot be read \(") as info:
            b = fmt.load(d, events=events)
            b.events, b.objects            # lazily: on first use
        assert str(info.value).startswith(f"{d / part}: cannot be read"), str(info.value)


@pytest.mark.parametrize("part", [M, A, "events.trace", "cpu.txt"])
@pytest.mark.parametrize("errno_, text", [(13, "Permission denied"), (5, "Input/output error")])
def test_an_unreadable_part_is_a_format_error(tmp_path, monkeypatch, trace, part, errno_, text):
    # (chmod 0 would not stop root: the read fails by hand instead.)
    d = write_bundle(tmp_path / "b", trace=trace.data, cpu=b"main (t.py:3) 5\n")
    real = Path.read_bytes

    def read_bytes(self):
        if self == d / part:
            raise OSError(errno_, text, str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(ProfileFormatError, match=rf"cannot be read \({text}\)") as info:
        fmt.load(d)
    assert str(info.value).startswith(f"{d / part}: cannot be read"), str(info.value)


def test_a_dangling_link_is_a_missing_part(tmp_path):
    d = write_bundle(tmp_path / "b")
    (d / M).unlink()
    (d / M).symlink_to(tmp_path / "gone.json")
    with pytest.raises(ProfileFormatError, match="manifest.json: missing"):
        fmt.load(d)


def test_an_incomplete_run_loads_a_truncated_trace_with_a_warning(tmp_path, trace):
    parts = minimal_parts()
    parts[M]["complete"] = False
    parts[M]["exit"] = {"code": None, "signal": "SIGKILL"}
    b3 = trace.blocks[3]
    cut = trace.data[:b3.body + 5 * RECORD]         # inside block 3: blocks 0..2 whole
    k = sum(b.count for b in trace.blocks[:3])
    d = write_bundle(tmp_path / "b", parts, trace=cut, cpu=b"main (t.py:3) 5\nmain (t.py:3);f (t.p")
    b = fmt.load(d)
    assert b.complete is False
    assert np.array_equal(b.events.events, trace.full.events[:k])
    assert b.events.complete is False
    assert any("did not finish cleanly (killed by SIGKILL)" in w for w in b.warnings), b.warnings
    assert any("truncated" in w and f"after record {k}" in w and "events.trace" in w
               for w in b.warnings), b.warnings
    assert b.cpu == {("main (t.py:3)",): 5}
    # Lazily, the same.
    lazy = fmt.load(d, events=False)
    assert not any("truncated" in w for w in lazy.warnings)
    assert len(lazy.events.events) == k
    assert any("truncated" in w for w in lazy.warnings)
    # A run that says it completed may not have a cut trace, nor a cut cpu.txt.
    parts[M]["complete"] = True
    d2 = write_bundle(tmp_path / "c", parts, trace=cut)
    with pytest.raises(ProfileFormatError, match="events.trace: byte"):
        fmt.load(d2)
    lazy = fmt.load(d2, events=False)
    with pytest.raises(ProfileFormatError, match="no footer|holds"):
        lazy.events
    d3 = write_bundle(tmp_path / "d", parts, cpu=b"main (t.py:3) 5\nmain (t.py:3);f (t.p")
    with pytest.raises(ProfileFormatError, match=r"cpu.txt: byte 16: line 2"):
        fmt.load(d3)


def test_a_bad_child_bundle_fails_the_parent_naming_the_child(tmp_path):
    d = write_bundle(tmp_path / "b")
    kid = minimal_parts()
    kid[G]["generations"][0]["collections"] = -1
    write_bundle(d / "children" / "4243", kid)
    with pytest.raises(ProfileFormatError) as info:
        fmt.load(d)
    assert str(info.value).startswith(str(d / "children" / "4243" / G))
    # A killed child warns through its parent.
    kid = minimal_parts()
    kid[M]["complete"] = False
    write_bundle(d / "children" / "4243", kid)
    b = fmt.load(d)
    assert b.complete and not b.children[0].complete
    assert any("4243" in w and "did not finish" in w for w in b.warnings)


def test_children_are_loaded_one_level_deep(tmp_path):
    # Every descendant writes into the root's children/, so a child's own
    # children/ is not read: not even a bad bundle there fails the load.
    d = write_bundle(tmp_path / "b")
    write_bundle(d / "children" / "4243")
    write_bundle(d / "children" / "4250")
    bad = minimal_parts()
    bad[M]["pid"] = "x"
    write_bundle(d / "children" / "4243" / "children" / "4244", bad)
    (d / "children" / "not-a-bundle").mkdir()
    (d / "children" / "stray.txt").write_text("x")
    b = fmt.load(d)
    assert [k.path.name for k in b.children] == ["4243", "4250"]
    assert all(k.children == [] for k in b.children)
    assert b.warnings == []
    # Loaded as a root itself, the child reads its own children/.
    with pytest.raises(ProfileFormatError, match="4244"):
        fmt.load(d / "children" / "4243")
    assert fmt.load(d, children=False).children == []


# -- py-spy raw samples and speedscope ----------------------------------------------

def cpu_file(tmp_path, data):
    p = tmp_path / "cpu.txt"
    p.write_bytes(data)
    return p


def test_raw_samples_aggregate_by_stack(tmp_path):
    p = cpu_file(tmp_path, b"main (t.py:3);f (t.py:9) 5\n"
                           b"main (t.py:3);g (t.py:12) 1\n"
                           b"main (t.py:3);f (t.py:9) 2\n"
                           b" 2\n"
                           b"\n"
                           b"   7\n"
                           b"<module> (t.py:1) 0\n")
    got = fmt.read_cpu_raw(p)
    assert got == {("main (t.py:3)", "f (t.py:9)"): 7, ("main (t.py:3)", "g (t.py:12)"): 1,
                   (fmt.NO_PYTHON_FRAME,): 9, ("<module> (t.py:1)",): 0}
    assert fmt.read_cpu_raw(cpu_file(tmp_path, b"")) == {}


@pytest.mark.parametrize("bad", [b"main (t.py:3) x", b"main (t.py:3) -1", b"main (t.py:3)",
                                 b"main (t.py:3) 1.5", b"main (t.py:3) 5 "])
def test_a_line_that_is_not_stack_and_count_is_named(tmp_path, bad):
    data = b"a (t.py:1) 4\n" + bad + b"\nb (t.py:2) 1\n"
    for allow in (False, True):
        with pytest.raises(ProfileFormatError) as info:
            fmt.read_cpu_raw(cpu_file(tmp_path, data), allow_truncated=allow)
        msg = str(info.value)
        assert msg.startswith(str(tmp_path / "cpu.txt")) and ": byte 13: line 2: " in msg, msg


def test_a_cut_last_line_is_dropped_when_allowed(tmp_path):
    whole = b"a (t.py:1);b (t.py:2) 4\nc (t.py:3) 2\n"
    for cut in (b"a (t.", b"a (t.py:1);b (t.py:2)", b"a (t.py:1);b (t.py:2) ",
                b"a (t.py:1);b (t.py:2) 4", b"d (t.py:4) 1", b"\xc3"):
        p = cpu_file(tmp_path, whole + cut)
        assert fmt.read_cpu_raw(p, allow_truncated=True) == {
            ("a (t.py:1)", "b (t.py:2)"): 4, ("c (t.py:3)",): 2}
        if cut.endswith((b" 4", b" 1")):
            # Whole-looking, but no newline after it: counted only when the
            # run completed (a complete run's file is not cut).
            assert sum(fmt.read_cpu_raw(p).values()) == 6 + int(cut[-1:])
        else:
            with pytest.raises(ProfileFormatError, match="line 3"):
                fmt.read_cpu_raw(p)


def test_a_last_line_cut_inside_its_count_is_not_miscounted(tmp_path):
    # py-spy ends every line with a newline: with allow_truncated, a last
    # line without one is dropped, whatever it looks like ("12" cut to "1").
    whole = b"a (t.py:1) 4\nb (t.py:2) 12\n\nc (t.py:3) 1\n"
    for off in range(len(whole) + 1):
        got = fmt.read_cpu_raw(cpu_file(tmp_path, whole[:off]), allow_truncated=True)
        kept = whole[:whole.rfind(b"\n", 0, off) + 1]
        assert got == fmt.read_cpu_raw(cpu_file(tmp_path, kept)), (off, got)
        for stack, n in got.items():
            assert n == {("a (t.py:1)",): 4, ("b (t.py:2)",): 12, ("c (t.py:3)",): 1}[stack], \
                (off, got)


def test_frame_names_that_are_not_utf8_do_not_crash(tmp_path):
    p = cpu_file(tmp_path, b"main (t.py:3);f\xff\xfeoo (t\xc3.py:9) 3\n\xc3\xa9t\xe9 (x.py:1) 1\n")
    got = fmt.read_cpu_raw(p)
    assert sum(got.values()) == 4 and len(got) == 2
    assert all(isinstance(f, str) for stack in got for f in stack)
    assert ("main (t.py:3)", "f\ufffd\ufffdoo (t\ufffd.py:9)") in got
    doc = fmt.speedscope_from_samples(got, "x")
    out = tmp_path / "cpu.speedscope.json"
    fmt.write_json(out, doc)
    fmt.check_speedscope(out)


def test_a_missing_cpu_file_is_a_format_error(tmp_path):
    with pytest.raises(ProfileFormatError, match="missing"):
        fmt.read_cpu_raw(tmp_path / "cpu.txt")


STACKS = {("main (t.py:3)", "f (t.py:9)"): 7, ("main (t.py:3)", "g (t.py:12)"): 1,
          (fmt.NO_PYTHON_FRAME,): 2, ("native",): 3}


def speedscope_file(tmp_path, doc=None):
    p = tmp_path / "cpu.speedscope.json"
    fmt.write_json(p, fmt.speedscope_from_samples(STACKS, "pid 1") if doc is None else doc)
    return p


def test_speedscope_from_samples_is_valid_and_faithful(tmp_path):
    doc = fmt.check_speedscope(speedscope_file(tmp_path))
    frames = doc["shared"]["frames"]
    [prof] = doc["profiles"]
    assert prof["type"] == "sampled" and prof["name"] == "pid 1"
    assert prof["endValue"] == sum(prof["weights"]) == sum(STACKS.values())
    back = {tuple(frames[i]["name"] for i in s): w for s, w in zip(prof["samples"], prof["weights"])}
    assert back == {("main", "f"): 7, ("main", "g"): 1, (fmt.NO_PYTHON_FRAME,): 2, ("native",): 3}
    by_name = {f["name"]: f for f in frames}
    assert by_name["f"] == {"name": "f", "file": "t.py", "line": 9}
    assert by_name["native"] == {"name": "native"}
    assert len(frames) == len(by_name)


def _doc_with(mutate):
    doc = copy.deepcopy(fmt.speedscope_from_samples(STACKS, "pid 1"))
    mutate(doc)
    return doc


@pytest.mark.parametrize("mutate, pattern", [
    (lambda d: d["profiles"][0]["samples"][0].append(99), r"profiles\[0\]\.samples\[0\]: bad frame index int 99"),
    (lambda d: d["profiles"][0]["samples"][1].append(-1), r"samples\[1\]: bad frame index int -1"),
    (lambda d: d["profiles"][0]["samples"][0].append(True), r"bad frame index bool true"),
    (lambda d: d["profiles"][0]["samples"][0].append("0"), r"bad frame index str"),
    (lambda d: d["profiles"][0]["samples"].__setitem__(0, 0), r"samples\[0\]: expected list"),
    (lambda d: d["profiles"][0]["weights"].pop(), r"profiles\[0\]: 4 samples but 3 weights"),
    (lambda d: d["profiles"][0]["samples"].pop(), r"3 samples but 4 weights"),
    (lambda d: d["profiles"][0]["weights"].__setitem__(2, -1), r"weights\[2\]: expected nonneg"),
    (lambda d: d["profiles"][0].__setitem__("type", "evented"), r"profiles\[0\]\.type: only sampled"),
    (lambda d: d.pop("$schema"), r"\$schema: not a speedscope document"),
    (lambda d: d["shared"]["frames"][0].pop("name"), r"shared\.frames\[0\]\.name: missing"),
    (lambda d: d.pop("profiles"), r"profiles: missing"),
])
def test_check_speedscope_rejects(tmp_path, mutate, pattern):
    p = speedscope_file(tmp_path, _doc_with(mutate))
    with pytest.raises(ProfileFormatError, match=pattern) as info:
        fmt.check_speedscope(p)
    assert str(info.value).startswith(str(p))


# -- pickles (RELIABILITY 21) --------------------------------------------------------

class Evil:
    """Unpickling it makes a directory: proof that code ran."""

    def __init__(self, marker):
        self.marker = os.fspath(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_load_never_unpickles(tmp_path, protocol):
    # The payload works: unpickled, it runs.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Evil(control), protocol=protocol))
    assert control.is_dir()
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Evil(marker), protocol=protocol)
    for part in (A, E, G, M, "events.trace", "objects.trace", "cpu.txt"):
        d = write_bundle(tmp_path / f"b-{part}")
        (d / part).write_bytes(payload)
        with pytest.raises(ProfileFormatError) as info:
            fmt.load(d)
        assert str(d / part) in str(info.value)
        assert not marker.exists(), part
    with pytest.raises(ProfileFormatError):
        fmt.read_json(write(tmp_path, payload, "x.json"))
    with pytest.raises(ProfileFormatError):
        fmt.check_speedscope(write(tmp_path, payload, "x.speedscope.json"))
    assert not marker.exists()


def test_the_bundle_module_imports_no_unpickler():
    tree = ast.parse(Path(fmt.__file__).read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Attribute) and node.attr in ("load", "loads"):
            base = node.value
            assert not (isinstance(base, ast.Name) and base.id in ("np", "numpy", "pickle")), \
                ast.unparse(node)
        elif isinstance(node, ast.keyword) and node.arg == "allow_pickle":
            pytest.fail(ast.unparse(node))
    assert names, "no imports found: the check is broken"
    assert not names & {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill",
                        "cloudpickle", "joblib"}


def test_a_tracemalloc_dump_needs_trust_pickle(tmp_path):
    marker = tmp_path / "pwned"
    dumpfile = tmp_path / "snap.pickle"
    dumpfile.write_bytes(pickle.dumps(Evil(marker)))
    out = tmp_path / "out"
    with pytest.raises(ProfilerError, match="--trust-pickle") as info:
        bundle_from_dump(dumpfile, out, trust_pickle=False)
    assert str(dumpfile) in str(info.value)
    assert isinstance(info.value, pgo.PgoError)
    assert not marker.exists()
    assert not out.exists()


def test_a_trusted_pickle_that_is_not_a_snapshot_is_refused(tmp_path):
    dumpfile = tmp_path / "snap.pickle"
    dumpfile.write_bytes(pickle.dumps({"traces": []}))
    with pytest.raises(ProfileFormatError, match="not a tracemalloc Snapshot"):
        bundle_from_dump(dumpfile, tmp_path / "out", trust_pickle=True)
    dumpfile.write_bytes(b"not a pickle at all")
    with pytest.raises(ProfileFormatError, match="not a tracemalloc snapshot"):
        bundle_from_dump(dumpfile, tmp_path / "out", trust_pickle=True)
    with pytest.raises(ProfilerError, match="no such file"):
        bundle_from_dump(tmp_path / "nope", tmp_path / "out", trust_pickle=True)


def _allocate_for_snapshot():
    keep = [bytearray(1000) for _ in range(200)]                  # objects site
    arr = np.ones(50_000)                                          # numpy site
    return keep, arr


def test_a_trusted_tracemalloc_dump_becomes_a_json_bundle(tmp_path):
    tracemalloc.start(4)
    try:
        keep = _allocate_for_snapshot()
        snap = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    dumpfile = tmp_path / "snap.pickle"
    snap.dump(str(dumpfile))
    out = bundle_from_dump(dumpfile, tmp_path / "out", trust_pickle=True)
    assert sorted(os.listdir(out)) == ["allocations.json", "manifest.json"]
    b = fmt.load(out)
    assert b.complete and b.events is None and b.gc is None
    sites = b.allocations["sites"]
    assert sites and b.allocations["nframes"] == 4
    here = os.path.abspath(__file__)
    line_objects = _allocate_for_snapshot.__code__.co_firstlineno + 1
    mine = {s["domain"]: s for s in sites
            if any(os.path.abspath(f) == here and line == line_objects + (s["domain"] == "numpy")
                   for f, line in s["frames"])}
    assert mine["objects"]["peak_bytes"] >= 200 * 1000 and mine["objects"]["peak_count"] >= 200
    assert mine["numpy"]["peak_bytes"] >= 50_000 * 8
    [snapshot] = b.allocations["snapshots"]
    assert snapshot["traced_bytes"] == sum(s["peak_bytes"] for s in sites)
    del keep
    # It refuses to write into a bundle that is already there.
    with pytest.raises(ProfilerError, match="not empty"):
        bundle_from_dump(dumpfile, out, trust_pickle=True)
