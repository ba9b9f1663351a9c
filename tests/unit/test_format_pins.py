"""The trace format has two implementations: the recorder writes it in C
(pgo._core), pgo.bundle reads it in Python without importing the recorder.
These tests pin the two together: the checksum of headers and blocks, the
address sampling's pass level, and the names, versions and sizes a real
trace carries."""

import subprocess
import sys

import numpy as np
import pytest

from pgo import bundle
from pgo._core import recorder

RNG_SEED = 13


def _either(f, payload):
    """What ``f(payload)`` returns, or (ValueError, whether it names the
    multiple of 8) when it refuses the length."""
    try:
        return f(payload)
    except ValueError as e:
        return ValueError, "multiple of 8" in str(e)


# -- the checksum -------------------------------------------------------------------

def test_checksum_equals_the_recorders_for_every_length():
    # Lengths that are not a multiple of 8 are refused by both.
    rng = np.random.default_rng(RNG_SEED)
    for n in range(601):
        for payload in (rng.bytes(n), bytes(n), b"\xff" * n):
            assert _either(bundle.block_checksum, payload) == \
                _either(recorder.checksum, payload), n
        if n % 8:
            with pytest.raises(ValueError, match="multiple of 8"):
                bundle.block_checksum(bytes(n))
    payload = rng.bytes(96)
    for view in (bytearray(payload), memoryview(payload)):
        assert bundle.block_checksum(view) == recorder.checksum(view)


def test_checksum_equals_the_recorders_on_full_blocks():
    rng = np.random.default_rng(RNG_SEED)
    size = recorder.BLOCK_RECORDS * recorder.RECORD_SIZE
    assert size == 4096 * 48
    for _ in range(4):
        payload = rng.bytes(size)
        assert bundle.block_checksum(payload) == recorder.checksum(payload)
    assert bundle.block_checksum(bytes(size)) == recorder.checksum(bytes(size))


def test_many_payloads_at_once_equal_the_recorders_one_by_one():
    # What read_events does: every block of a trace in one call, blocks of
    # all lengths, full ones and ones of a few records, in any order.
    rng = np.random.default_rng(RNG_SEED)
    counts = [4096, 1, 4096, 37, 0, 2, 4096, 1918, 5, 4095, 3, 1]
    words = np.frombuffer(rng.bytes(8 * (3 + 6 * sum(counts))), "<u8")
    starts = 3 + 6 * (np.cumsum(counts) - counts)
    got = bundle._checksums(words, starts, 6 * np.array(counts))
    data = words.tobytes()
    assert got.tolist() == [recorder.checksum(data[8 * s:8 * s + 48 * c])
                            for s, c in zip(starts.tolist(), counts)]


@pytest.mark.parametrize("n", [8, 32, 48, 56, 96, 480])
def test_flipping_any_bit_changes_the_checksum(n):
    payload = np.random.default_rng([RNG_SEED, n]).bytes(n)
    good = bundle.block_checksum(payload)
    assert good == recorder.checksum(payload)
    for byte in range(n):
        for bit in range(8):
            flipped = bytearray(payload)
            flipped[byte] ^= 1 << bit
            assert bundle.block_checksum(flipped) != good, (byte, bit)


def test_flipping_bits_of_a_full_block_changes_the_checksum():
    rng = np.random.default_rng(RNG_SEED)
    payload = rng.bytes(4096 * 48)
    good = bundle.block_checksum(payload)
    for pos in rng.integers(0, len(payload) * 8, 64).tolist():
        flipped = bytearray(payload)
        flipped[pos // 8] ^= 1 << (pos % 8)
        assert bundle.block_checksum(flipped) != good, pos


# -- the sampling hash --------------------------------------------------------------

EDGES = [0, 1, 15, 16, 17, 2**64 - 1, 2**64 - 16, 2**63, 2**63 - 1,
         *[2**k for k in range(64)], *[2**k - 1 for k in range(1, 64)]]


def test_pass_level_equals_the_recorders():
    rng = np.random.default_rng(RNG_SEED)
    addrs = rng.integers(0, 2**64, 20_000, dtype=np.uint64).tolist()
    # Addresses numpy hands out: 16-byte aligned, in a heap's range.
    addrs += (rng.integers(0x10000, 2**47, 5_000, dtype=np.uint64) & ~np.uint64(15)).tolist()
    for addr in EDGES + addrs:
        assert bundle.pass_level(addr) == recorder.pass_level(addr), hex(addr)


def test_pass_level_reaches_every_level():
    # An address whose hash is 0 passes every level (32); each level L
    # keeps about 4**-L of the addresses.
    assert bundle.pass_level(0) == recorder.pass_level(0) == 32
    rng = np.random.default_rng(RNG_SEED)
    levels = [bundle.pass_level(a) for a in rng.integers(0, 2**64, 40_000,
                                                         dtype=np.uint64).tolist()]
    share = np.bincount(levels, minlength=4)[:4] / len(levels)
    assert np.allclose(share, [0.75, 0.1875, 0.046875, 0.01171875], atol=0.01)


# -- what a real trace carries ------------------------------------------------------

def test_a_recorded_trace_carries_bundles_names_and_sizes(tmp_path):
    path = tmp_path / "events.trace"
    assert not recorder.running()
    recorder.start(str(path), max_events=10**6)
    try:
        arrays = [np.ones(n) for n in range(1, 200)]
        recorder.flush()
        del arrays
        arrays = [np.zeros(n) for n in range(1, 50)]
        del arrays
    finally:
        stats = recorder.stop()
    data = path.read_bytes()
    (magic, version, header_size, record_size, block_max, _, head_sum,
     zero) = bundle.TRACE_HEADER.unpack_from(data, 0)
    assert magic == bundle.TRACE_MAGIC
    assert version == bundle.TRACE_VERSION
    assert header_size == bundle.TRACE_HEADER.size == recorder.HEADER_SIZE
    assert record_size == bundle.EVENT_DTYPE.itemsize == recorder.RECORD_SIZE
    assert block_max == recorder.BLOCK_RECORDS <= bundle.MAX_BLOCK_RECORDS
    assert head_sum == bundle.block_checksum(data[:bundle.TRACE_SIGNED]) and zero == 0
    # The blocks and the footer, walked with the struct layouts bundle names.
    pos, blocks, records = bundle.TRACE_HEADER.size, 0, 0
    while data[pos:pos + 4] == bundle.BLOCK_MAGIC:
        _, count, seq, crc = bundle.BLOCK_HEADER.unpack_from(data, pos)
        body = pos + bundle.BLOCK_HEADER.size
        payload = data[body:body + count * record_size]
        assert seq == blocks
        assert crc == bundle.block_checksum(payload) == recorder.checksum(payload)
        blocks, records, pos = blocks + 1, records + count, body + len(payload)
    assert blocks >= 2
    magic, nblocks, nrecords = bundle.FOOTER.unpack_from(data, pos)
    assert (magic, nblocks, nrecords) == (bundle.FOOTER_MAGIC, blocks, records)
    assert pos + bundle.FOOTER.size == len(data)
    # And bundle reads it whole: every kind one it knows.
    trace = bundle.read_events(path)
    assert trace.complete and trace.warnings == []
    assert len(trace.events) == records == stats["numpy"]["written"]
    assert set(np.unique(trace.events["kind"]).tolist()) <= set(bundle.EVENT_KINDS)
    assert {bundle.ALLOC, bundle.FREE} <= set(trace.events["kind"].tolist())


def test_the_json_parts_are_built_with_bundles_names(tmp_path):
    docs = {
        bundle.MANIFEST: bundle.manifest_document(
            complete=True, command=["x"], cwd="/", python="3.11", pid=1,
            started_at="2026-01-01T00:00:00+00:00", duration_s=1.0, collectors={},
            warnings=[]),
        bundle.ALLOCATIONS: bundle.allocations_document(nframes=1, sites=[], snapshots=[]),
        bundle.EVENT_SITES: bundle.event_sites_document([(2, "m", "f", "m.py", 3)]),
        bundle.GC: bundle.gc_document(
            thresholds=[700, 10, 10], generations=[], pauses={c: [] for c in
                                                              bundle.GC_PAUSE_COLUMNS},
            pauses_dropped=0, total_pause_ns=0, wall_s=1.0),
    }
    assert set(docs) == set(bundle.JSON_FORMATS)
    assert bundle.JSON_FORMATS[bundle.MANIFEST] == (bundle.FORMAT, bundle.VERSION)
    for name, doc in docs.items():
        assert (doc["format"], doc["version"]) == bundle.JSON_FORMATS[name]
        bundle.write_json(tmp_path / name, doc)
    loaded = bundle.load(tmp_path)
    assert loaded.event_sites["sites"] == [
        {"id": 2, "module": "m", "qualname": "f", "file": "m.py", "line": 3}]
    assert loaded.gc["thresholds"] == [700, 10, 10]


def test_reading_bundles_never_imports_the_recorder():
    # pgo.bundle and analysis are pure Python over numpy: a bundle loads,
    # its checksums checked, without pgo._core (or the runtime) imported.
    code = ("import sys, pgo.bundle, pgo.analysis.lifetimes, pgo.analysis.synthetic\n"
            "pgo.bundle.load('profiles/examples/small_arrays')\n"
            "print(sorted(m for m in sys.modules if m.startswith(('pgo._core', 'pgo.runtime'))))")
    root = __file__.rsplit("/tests/", 1)[0]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
