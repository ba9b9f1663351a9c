"""Hypothesis state machines, one per allocator, against a plain-Python model.

The model is the list of live Blocks and arrays (in allocation order) with
the bytes each should hold, plus counters.  Rules allocate (Blocks and
arrays, any size and alignment), free (in and out of the allowed order),
drop, free twice, rewrite and reset; after every step the invariants check
that live blocks never overlap, hold their bytes, and that the allocator's
stats agree with the model.
"""

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import pgo

SETTINGS = settings(max_examples=50, stateful_step_count=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
# NOTE: up to 64 only.  Buffers, chunks and slabs start 64-byte aligned, so
# padding -- and so whether an allocation fits -- does not depend on where
# malloc put them; with larger alignments it would, and Hypothesis needs
# every run of a test case to behave the same.  test_allocators.py covers
# alignments up to 4096.
ALIGNS = [1, 2, 4, 8, 16, 32, 64]


def block_of(obj):
    return obj if isinstance(obj, pgo.Block) else obj.base


def contents(obj):
    return bytes(obj) if isinstance(obj, pgo.Block) else obj.tobytes()


def fill(obj, data):
    if isinstance(obj, pgo.Block):
        with memoryview(obj) as mv:
            mv[:] = data
    else:
        obj[:] = np.frombuffer(data, dtype=np.uint8)


def stats_without_contention(a):
    s = a.stats()
    del s["contention"]
    return s


class AllocatorMachine(RuleBasedStateMachine):
    max_n = 300
    aligns = ALIGNS

    def make(self):
        raise NotImplementedError

    def __init__(self):
        super().__init__()
        self.a = self.make()
        self.live = []            # [obj, expected bytes], oldest first
        self.freed = []           # Blocks given back with free()
        self.align_at = {}        # address of a live block -> the alignment asked for
        self.allocations = self.frees = self.requested = self.resets = 0

    # -- helpers ------------------------------------------------------------
    def pick(self, i, items):
        return items[i % len(items)]

    def expect_refused(self, call, exc, match=None):
        before = stats_without_contention(self.a)
        with pytest.raises(exc, match=match):
            call()
        assert stats_without_contention(self.a) == before

    def check_contents(self, obj, data):
        assert contents(obj) == data, f"{block_of(obj)!r} lost its contents"

    # -- rules ----------------------------------------------------------------
    @rule(n=st.integers(0, 10_000), align_i=st.integers(0, 6), as_array=st.booleans(),
          zero=st.booleans(), seed=st.integers(0, 2**32 - 1))
    def alloc(self, n, align_i, as_array, zero, seed):
        n %= self.max_n + 1
        align = self.aligns[align_i % len(self.aligns)]
        before = stats_without_contention(self.a)
        try:
            if as_array:
                make = self.a.zeros if zero else self.a.empty
                obj = make(n, dtype=np.uint8, align=align)
            else:
                obj = self.a.alloc(n, align)
        except MemoryError:
            after = stats_without_contention(self.a)
            assert after["failed"] == before["failed"] + 1
            after["failed"] = before["failed"]
            assert after == before
            self.check_exhausted(n, align, before)
            return
        b = block_of(obj)
        assert b.allocator is self.a and b.nbytes == n and not b.freed
        assert b.address % align == 0
        if as_array and zero:
            assert not obj.any()
        if n:
            for other, _ in self.live:
                o = block_of(other)
                if o.nbytes:
                    assert b.address + n <= o.address or o.address + o.nbytes <= b.address, \
                        f"{b!r} overlaps {o!r}"
        data = random.Random(seed).randbytes(n)
        fill(obj, data)
        self.live.append([obj, data])
        self.align_at[b.address] = align
        self.allocations += 1
        self.requested += n

    def check_exhausted(self, n, align, st_before):
        pass

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 1000))
    def drop(self, i):
        obj, data = self.live.pop(i % len(self.live))
        self.check_contents(obj, data)
        del obj
        self.frees += 1

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 1000), seed=st.integers(0, 2**32 - 1))
    def rewrite(self, i, seed):
        item = self.pick(i, self.live)
        item[1] = random.Random(seed).randbytes(len(item[1]))
        fill(item[0], item[1])

    @precondition(lambda self: self.freed)
    @rule(i=st.integers(0, 1000))
    def double_free(self, i):
        self.expect_refused(lambda: self.a.free(self.pick(i, self.freed)), pgo.AllocatorError)

    @rule()
    def reset(self):
        if self.live:
            self.expect_refused(self.a.reset, pgo.AllocatorError,
                                match=rf"\b{len(self.live)} block")
            return
        self.a.reset()
        self.resets += 1
        self.requested = 0
        st_ = self.a.stats()
        assert st_["in_use"] == 0 and st_["lost"] == 0

    @precondition(lambda self: len(self.live) > 3)
    @rule()
    def drop_all(self):
        for obj, data in self.live:
            self.check_contents(obj, data)
        self.frees += len(self.live)
        self.live.clear()

    # -- invariants ---------------------------------------------------------------
    @invariant()
    def stats_match_the_model(self):
        s = self.a.stats()
        assert s["allocations"] == self.allocations
        assert s["frees"] == self.frees
        assert s["live_blocks"] == len(self.live)
        assert s["requested"] == self.requested
        assert s["resets"] == self.resets
        assert 0 <= s["in_use"] <= s["capacity"]
        assert s["peak"] >= s["in_use"]
        if not self.live and not isinstance(self.a, pgo.LinearAllocator):
            assert s["in_use"] == 0

    @invariant()
    def contents_survive(self):
        for obj, data in self.live:
            self.check_contents(obj, data)

    def teardown(self):
        self.contents_survive()
        self.frees += len(self.live)
        self.live.clear()
        self.stats_match_the_model()
        self.a.reset()
        assert self.a.live_blocks == 0 and self.a.in_use == 0


class StackMachine(AllocatorMachine):
    def make(self):
        return pgo.StackAllocator(1024)

    def check_exhausted(self, n, align, st_before):
        # Failing is only allowed when header, padding and bytes do not fit.
        pad = max(align, 8) - 1
        assert (st_before["top"] + st_before["header_bytes"] + pad + n + st_before["canary_bytes"]
                > st_before["capacity"])

    @precondition(lambda self: self.live)
    @rule()
    def free_top(self):
        obj, data = self.live[-1]
        self.check_contents(obj, data)
        if not isinstance(obj, pgo.Block):
            self.expect_refused(lambda: self.a.free(obj.base), pgo.AllocatorError, "numpy array")
            return
        self.a.free(obj)
        self.live.pop()
        self.frees += 1
        self.freed = (self.freed + [obj])[-5:]

    @precondition(lambda self: len(self.live) > 1)
    @rule(i=st.integers(0, 1000))
    def free_below_the_top(self, i):
        obj, _ = self.live[i % (len(self.live) - 1)]
        self.expect_refused(lambda: self.a.free(block_of(obj)), pgo.AllocatorError)


class LinearMachine(AllocatorMachine):
    def make(self):
        return pgo.LinearAllocator(2048)

    def check_exhausted(self, n, align, st_before):
        # (A zero-byte block may take a byte: an address of its own.)
        assert st_before["top"] + (align - 1) + max(n, 1) > st_before["capacity"]

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 1000))
    def free_is_refused(self, i):
        obj, _ = self.pick(i, self.live)
        self.expect_refused(lambda: self.a.free(block_of(obj)), pgo.AllocatorError)


class ArenaMachine(LinearMachine):
    def make(self):
        return pgo.ArenaAllocator(256, max_bytes=1024)

    def check_exhausted(self, n, align, st_before):
        # Arena blocks start on 8-byte boundaries (the start bitmaps' grain).
        assert st_before["capacity"] + 256 > 1024 or n + max(align, 8) > 256

    @invariant()
    def chunks_in_use(self):
        s = self.a.stats()
        assert s["chunks_in_use"] <= s["chunks"]
        if not self.live:
            assert s["chunks_in_use"] == 0


class SlabMachine(AllocatorMachine):
    max_n = 128

    def make(self):
        return pgo.SlabAllocator(128, slots_per_slab=2, max_bytes=128 * 8)

    def check_exhausted(self, n, align, st_before):
        assert st_before["free_slots"] == 0

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 1000))
    def free_any(self, i):
        k = i % len(self.live)
        obj, data = self.live[k]
        self.check_contents(obj, data)
        if not isinstance(obj, pgo.Block):
            self.expect_refused(lambda: self.a.free(obj.base), pgo.AllocatorError, "numpy array")
            return
        self.a.free(obj)
        del self.live[k]
        self.frees += 1
        self.freed = (self.freed + [obj])[-5:]

    @invariant()
    def slots_add_up(self):
        s = self.a.stats()
        assert s["in_use"] == len(self.live) * s["stride"]
        assert s["capacity"] == s["in_use"] + s["free_slots"] * s["stride"]


class MappedMachine(SlabMachine):
    max_n = 3000

    def make(self):
        return pgo.MappedPool(16384)

    @staticmethod
    def units(n):
        # What a block of n bytes takes: whole 64-byte units, the test
        # build's canary included, at least one.
        canary = 8 if pgo.DEBUG_BUILD else 0
        return max(1, (n + canary + 63) // 64) * 64

    def check_exhausted(self, n, align, st_before):
        # Refused only when no free extent can hold it (alignments up to 64
        # need no padding: every unit is 64-byte aligned).
        assert st_before["largest_free"] < self.units(n)

    @invariant()
    def slots_add_up(self):
        s = self.a.stats()
        assert s["in_use"] == sum(self.units(block_of(obj).nbytes) for obj, _ in self.live)
        assert s["in_use"] + s["free_bytes"] == s["capacity"]
        if not self.live:
            assert s["free_extents"] == 1 and s["largest_free"] == s["capacity"]


class NUMAMachine(MappedMachine):
    def make(self):
        return pgo.NUMAAllocator(16384)

    @invariant()
    def slots_add_up(self):
        s = self.a.stats()
        assert s["in_use"] == sum(self.units(block_of(obj).nbytes) for obj, _ in self.live)
        assert sum(s["in_use_by_node"].values()) == s["in_use"]
        assert s["peak"] >= s["in_use"]

    def check_exhausted(self, n, align, st_before):
        assert st_before["capacity"] - st_before["in_use"] < self.units(n)


class HierarchicalMachine(SlabMachine):
    max_n = 3000

    def make(self):
        return pgo.HierarchicalAllocator()

    def check_exhausted(self, n, align, st_before):
        raise AssertionError("a 64 GiB reservation ran out")

    @invariant()
    def slots_add_up(self):
        # Each live block takes its size class (of the bytes, the test
        # build's canary and the alignment); nothing else counts.
        s = self.a.stats()
        assert s["in_use"] == sum(
            pgo.HierarchicalAllocator.class_size(block_of(obj).nbytes,
                                                 self.align_at[block_of(obj).address])
            for obj, _ in self.live)


class CompactingMachine(SlabMachine):
    max_n = 3000

    def make(self):
        # Small enough that the machine runs it out of room now and then.
        return pgo.CompactingAllocator(max_bytes=256 * 1024)

    def check_exhausted(self, n, align, st_before):
        # Refused only when a new span of the request's class would take the
        # resident bytes past max_bytes.
        assert st_before["resident_bytes"] + 4096 > st_before["max_bytes"]

    @rule()
    def compact(self):
        # Meshing moves no block: every live one keeps its address and bytes
        # (check_contents, on every later step) and frees as before.
        before = self.a.stats()
        done = self.a.compact()
        after = self.a.stats()
        assert done["resident_after"] == after["resident_bytes"] <= before["resident_bytes"]
        assert after["live_bytes"] == before["live_bytes"]
        for obj, data in self.live:
            self.check_contents(obj, data)

    @invariant()
    def slots_add_up(self):
        s = self.a.stats()
        assert s["in_use"] == s["live_bytes"] == sum(
            pgo.CompactingAllocator.class_size(block_of(obj).nbytes,
                                               self.align_at[block_of(obj).address])
            for obj, _ in self.live)
        assert s["resident_bytes"] <= s["max_bytes"]


class AdaptiveMachine(SlabMachine):
    max_n = 3000
    aligns = (1, 2, 4, 8, 16)

    def make(self):
        # A window of 64 allocations: the machine's runs see it switch.
        return pgo.AdaptiveAllocator(64, max_bytes=4 << 20)

    def check_exhausted(self, n, align, st_before):
        assert st_before["max_bytes"] == 4 << 20

    @invariant()
    def slots_add_up(self):
        s = self.a.stats()
        assert s["live_blocks"] == len(self.live)
        assert s["backend"] in ("system", "slab", "arena", "cache")
        assert sum(s["allocations_by_backend"].values()) == s["allocations"]


TestStack = StackMachine.TestCase
TestLinear = LinearMachine.TestCase
TestArena = ArenaMachine.TestCase
TestSlab = SlabMachine.TestCase
TestMapped = MappedMachine.TestCase
TestNUMA = NUMAMachine.TestCase
TestHierarchical = HierarchicalMachine.TestCase
TestCompacting = CompactingMachine.TestCase
TestAdaptive = AdaptiveMachine.TestCase
for _case in (TestStack, TestLinear, TestArena, TestSlab, TestMapped, TestNUMA,
              TestHierarchical, TestCompacting, TestAdaptive):
    _case.settings = SETTINGS
del _case
