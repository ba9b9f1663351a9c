"""Vector, IntMap and StringBuilder against the Python built-ins they replace.

Hypothesis state machines run each container next to its model (list,
dict, io.BytesIO) and compare after every step; the specific tests check
what the models do not have: zero-copy views and the BufferError they
impose on growth, fixed capacity, the two marker keys of IntMap
(INT64_MIN and INT64_MIN + 1, stored apart), NaN payloads, and that none of
the containers gives the garbage collector anything to track.
"""

import array
import gc
import io
import math
import struct

import numpy as np
import pytest

import pgo
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pgo import IntMap, StringBuilder, Vector

I64_MIN = -(1 << 63)
I64_MAX = (1 << 63) - 1
EMPTY_KEY = I64_MIN          # the IntMap's free-slot markers, stored apart
TOMB_KEY = I64_MIN + 1

i64 = st.integers(I64_MIN, I64_MAX)
f64 = st.floats(allow_nan=False, allow_infinity=False)

MACHINE_SETTINGS = settings(max_examples=40, stateful_step_count=40, deadline=None,
                            suppress_health_check=list(HealthCheck))


def bits(x):
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def from_bits(b):
    return struct.unpack("<d", struct.pack("<Q", b))[0]


# -- Vector vs list ---------------------------------------------------------------


class _VectorMachine(RuleBasedStateMachine):
    DTYPE = None
    values = None

    def __init__(self):
        super().__init__()
        self.v = Vector(self.DTYPE)
        self.model = []

    @rule(data=st.data())
    def append(self, data):
        x = data.draw(self.values)
        self.v.append(x)
        self.model.append(x)

    @rule(data=st.data())
    def extend_list(self, data):
        xs = data.draw(st.lists(self.values, max_size=20))
        self.v.extend(xs)
        self.model.extend(xs)

    @rule(data=st.data())
    def extend_array(self, data):
        xs = data.draw(st.lists(self.values, max_size=40))
        arr = np.array(xs, dtype=self.DTYPE)
        self.v.extend(arr)
        self.model.extend(arr.tolist())

    @rule(data=st.data())
    def pop(self, data):
        n = len(self.model)
        i = data.draw(st.integers(-n - 2, n + 1) | st.just(-1))
        if -n <= i < n:
            assert self.v.pop(i) == self.model.pop(i)
        else:
            with pytest.raises(IndexError):
                self.v.pop(i)
            with pytest.raises(IndexError):
                self.model.pop(i)

    @rule()
    def pop_default(self):
        if self.model:
            assert self.v.pop() == self.model.pop()
        else:
            with pytest.raises(IndexError):
                self.v.pop()

    @rule(data=st.data())
    def setitem(self, data):
        n = len(self.model)
        i = data.draw(st.integers(-n - 2, n + 1))
        x = data.draw(self.values)
        if -n <= i < n:
            self.v[i] = x
            self.model[i] = x
            assert self.v[i] == x
        else:
            with pytest.raises(IndexError):
                self.v[i] = x

    @rule(data=st.data())
    def getitem(self, data):
        n = len(self.model)
        i = data.draw(st.integers(-n - 2, n + 1))
        if -n <= i < n:
            got = self.v[i]
            assert got == self.model[i]
            assert type(got) is type(self.model[i])
        else:
            with pytest.raises(IndexError):
                self.v[i]

    @rule()
    def clear(self):
        cap = self.v.capacity
        self.v.clear()
        self.model.clear()
        assert self.v.capacity == cap

    @invariant()
    def same(self):
        assert len(self.v) == len(self.model)
        assert list(self.v) == self.model
        assert self.v.tolist() == self.model
        a = self.v.as_array()
        assert a.dtype == np.dtype(self.DTYPE)
        assert a.shape == (len(self.model),)
        assert np.array_equal(a, np.array(self.model, dtype=self.DTYPE))
        del a
        assert self.v.capacity >= len(self.v)


class VectorInt64Machine(_VectorMachine):
    DTYPE = "int64"
    values = i64


class VectorFloat64Machine(_VectorMachine):
    DTYPE = "float64"
    values = f64


TestVectorInt64 = VectorInt64Machine.TestCase
TestVectorInt64.settings = MACHINE_SETTINGS
TestVectorFloat64 = VectorFloat64Machine.TestCase
TestVectorFloat64.settings = MACHINE_SETTINGS


# -- IntMap vs dict -----------------------------------------------------------------

# Many collisions: multiples of 2**20 share their low bits, plus the two
# marker keys and the int64 extremes.
keys = st.one_of(
    i64,
    st.sampled_from([EMPTY_KEY, TOMB_KEY, I64_MAX, 0, -1, 1]),
    st.integers(-(1 << 43), (1 << 43) - 1).map(lambda k: k << 20),
    st.integers(0, 63).map(lambda k: k << 20),
)


class _IntMapMachine(RuleBasedStateMachine):
    VALUE = None
    values = None

    def __init__(self):
        super().__init__()
        self.m = IntMap(self.VALUE)
        self.model = {}

    def _key(self, data):
        if self.model and data.draw(st.booleans()):
            return data.draw(st.sampled_from(sorted(self.model)))
        return data.draw(keys)

    @rule(data=st.data())
    def set(self, data):
        k = self._key(data)
        x = data.draw(self.values)
        self.m[k] = x
        self.model[k] = x

    @rule(ks=st.lists(st.integers(0, 200).map(lambda k: k << 20), max_size=60))
    def set_many(self, ks):
        for k in ks:
            self.m[k] = k >> 20
            self.model[k] = k >> 20

    @rule(data=st.data())
    def get(self, data):
        k = self._key(data)
        if k in self.model:
            assert self.m[k] == self.model[k]
            assert k in self.m
        else:
            with pytest.raises(KeyError):
                self.m[k]
            assert k not in self.m
        assert self.m.get(k) == self.model.get(k)
        assert self.m.get(k, 12345) == self.model.get(k, 12345)

    @rule(data=st.data())
    def delete(self, data):
        k = self._key(data)
        if k in self.model:
            del self.m[k]
            del self.model[k]
        else:
            with pytest.raises(KeyError):
                del self.m[k]

    @rule(data=st.data())
    def pop(self, data):
        k = self._key(data)
        if k in self.model:
            assert self.m.pop(k) == self.model.pop(k)
        else:
            with pytest.raises(KeyError):
                self.m.pop(k)
        assert self.m.pop(k, 7) == self.model.pop(k, 7)

    @rule(data=st.data())
    def setdefault(self, data):
        k = self._key(data)
        x = data.draw(self.values)
        assert self.m.setdefault(k, x) == self.model.setdefault(k, x)

    @rule()
    def clear(self):
        self.m.clear()
        self.model.clear()

    @invariant()
    def same(self):
        assert len(self.m) == len(self.model)
        assert set(self.m.keys()) == set(self.model.keys())
        assert set(self.m.items()) == set(self.model.items())
        assert sorted(self.m.values()) == sorted(self.model.values())
        ks = list(self.m)
        assert len(ks) == len(set(ks)) == len(self.model)
        assert set(ks) == set(self.model)
        for k in (EMPTY_KEY, TOMB_KEY):
            assert (k in self.m) == (k in self.model)


class IntMapInt64Machine(_IntMapMachine):
    VALUE = "int64"
    values = i64


class IntMapFloat64Machine(_IntMapMachine):
    VALUE = "float64"
    values = f64


TestIntMapInt64 = IntMapInt64Machine.TestCase
TestIntMapInt64.settings = MACHINE_SETTINGS
TestIntMapFloat64 = IntMapFloat64Machine.TestCase
TestIntMapFloat64.settings = MACHINE_SETTINGS


# -- StringBuilder vs io.BytesIO ---------------------------------------------------

chunks = st.one_of(
    st.binary(max_size=300).map(lambda b: ("bytes", b)),
    st.binary(max_size=64).map(lambda b: ("bytearray", bytearray(b))),
    st.binary(max_size=64).map(lambda b: ("memoryview", memoryview(b))),
    st.text(max_size=50).filter(lambda s: not any(0xD800 <= ord(c) < 0xE000 for c in s))
      .map(lambda s: ("str", s)),
    st.sampled_from(["é", "ß€𝄞", "日本語", "\x00"]).map(lambda s: ("str", s)),
)


class StringBuilderMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.sb = StringBuilder()
        self.model = io.BytesIO()

    @rule(chunk=chunks)
    def write(self, chunk):
        kind, x = chunk
        raw = x.encode("utf-8") if kind == "str" else bytes(x)
        n = self.sb.write(x) if kind != "bytes" else self.sb.append(x)
        assert n == len(raw)
        self.model.write(raw)

    @rule()
    def reset(self):
        cap = self.sb.capacity
        self.sb.reset()
        self.model = io.BytesIO()
        assert self.sb.capacity == cap

    @invariant()
    def same(self):
        expect = self.model.getvalue()
        assert self.sb.getvalue() == expect
        assert len(self.sb) == len(expect)
        assert self.sb.capacity >= len(self.sb)
        with memoryview(self.sb) as mv:
            assert mv.tobytes() == expect


TestStringBuilder = StringBuilderMachine.TestCase
TestStringBuilder.settings = MACHINE_SETTINGS


def test_string_builder_text_round_trip():
    sb = StringBuilder()
    s = "plain, é, 日本語, 𝄞"
    sb.append(s)
    assert sb.text() == s
    assert len(sb) == len(s.encode())
    assert StringBuilder().text() == ""
    assert StringBuilder().getvalue() == b""


# -- Vector specifics -------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["int64", "float64"])
def test_as_array_is_zero_copy(dtype):
    v = Vector(dtype)
    v.extend([1, 2, 3])
    a = v.as_array()
    assert a.flags.writeable
    a[1] = 42
    assert v[1] == 42
    v[0] = 7
    assert a[0] == 7
    b = v.as_array()
    assert a.ctypes.data == b.ctypes.data


@pytest.mark.parametrize("dtype", ["int64", "float64"])
@pytest.mark.parametrize("view", ["array", "memoryview"])
def test_growing_with_a_view_open_raises_and_leaves_it_unchanged(dtype, view):
    v = Vector(dtype)
    v.extend(list(range(8)))
    while len(v) < v.capacity:        # full: the next element must move the data
        v.append(len(v))
    before = v.tolist()
    cap = v.capacity
    a = v.as_array() if view == "array" else memoryview(v)
    with pytest.raises(BufferError):
        v.append(99)
    with pytest.raises(BufferError):
        v.extend(np.arange(5, dtype=dtype))
    with pytest.raises(BufferError):
        v.extend([99])
    assert v.tolist() == before
    assert len(v) == len(before) and v.capacity == cap
    assert list(a) == before
    del a
    v.append(99)
    v.extend(np.arange(100, dtype=dtype))
    assert v.tolist() == before + [99] + list(range(100))


def test_extend_from_own_view_past_capacity_raises():
    v = Vector("int64")
    v.extend(list(range(8)))
    assert len(v) == v.capacity
    with pytest.raises(BufferError):
        v.extend(v.as_array())
    assert v.tolist() == list(range(8))


def test_pop_from_middle_with_view_open_raises():
    v = Vector("int64")
    v.extend([1, 2, 3, 4])
    a = v.as_array()
    with pytest.raises(BufferError):
        v.pop(0)
    assert v.tolist() == [1, 2, 3, 4]
    del a
    assert v.pop(0) == 1


@pytest.mark.parametrize("n", [10, 1000, 100_003])
def test_pop_front_shifts_correctly(n):
    # pop(k) shifts the tail down over itself (overlapping ranges).
    v = Vector("int64")
    v.extend(np.arange(n))
    model = list(range(n))
    for k in (0, 1, n // 3, 0):
        assert v.pop(k) == model.pop(k)
    assert np.array_equal(v.as_array(), np.array(model))


def test_fixed_capacity():
    v = Vector("int64", 3, fixed=True)
    assert v.capacity == 3
    for i in range(3):
        v.append(i)
    with pytest.raises(OverflowError):
        v.append(3)
    with pytest.raises(OverflowError):
        v.extend(np.array([3]))
    with pytest.raises(OverflowError):
        v.extend([3])
    assert v.tolist() == [0, 1, 2] and v.capacity == 3
    v.pop()
    v.append(5)
    assert v.tolist() == [0, 1, 5]
    empty = Vector("float64", 0, fixed=True)
    with pytest.raises(OverflowError):
        empty.append(1.0)
    assert len(empty) == 0


@pytest.mark.parametrize("dtype", ["int32", "float32", "complex128", "uint64", np.int8, object])
def test_bad_dtype(dtype):
    with pytest.raises(TypeError):
        Vector(dtype)


def test_good_dtypes_and_negative_capacity():
    assert Vector(np.int64).dtype == np.dtype("int64")
    assert Vector(np.dtype("float64")).dtype == np.dtype("float64")
    with pytest.raises(ValueError):
        Vector("int64", -1)
    assert Vector("int64", 100).capacity >= 100


def test_int64_range():
    v = Vector("int64")
    v.extend([I64_MIN, I64_MAX])
    assert v.tolist() == [I64_MIN, I64_MAX]
    with pytest.raises(OverflowError):
        v.append(I64_MAX + 1)
    assert len(v) == 2


def test_empty_vector_views():
    v = Vector("float64")
    assert v.as_array().shape == (0,)
    assert v.tolist() == [] and list(v) == []
    with pytest.raises(IndexError):
        v[0]
    with pytest.raises(IndexError):
        v[-1]


# -- IntMap specifics -------------------------------------------------------------


@pytest.mark.parametrize("how", ["iter", "keys", "values", "items"])
@pytest.mark.parametrize("change", ["add", "remove", "clear"])
def test_intmap_iteration_while_changing_raises(how, change):
    m = IntMap()
    for k in range(20):
        m[k << 20] = k
    m[EMPTY_KEY] = -1
    it = iter(m) if how == "iter" else getattr(m, how)()
    next(it)
    if change == "add":
        m[12345] = 1
    elif change == "remove":
        del m[0]
    else:
        m.clear()
    with pytest.raises(RuntimeError):
        for _ in it:
            pass


def test_intmap_changing_values_during_iteration_is_fine():
    m = IntMap()
    for k in range(50):
        m[k] = k
    for k in m:
        m[k] = -k
    assert dict(m.items()) == {k: -k for k in range(50)}


@pytest.mark.parametrize("key", ["a", 1.5, None, b"1", (1,), 1 << 63, I64_MIN - 1, 1 << 100])
def test_intmap_contains_non_int_is_false(key):
    m = IntMap()
    m[1] = 1
    m[EMPTY_KEY] = 2
    assert (key in m) is False
    assert m.get(key) is None
    assert m.get(key, 5) == 5


@pytest.mark.parametrize("key", [1 << 63, I64_MIN - 1, 1 << 64])
def test_intmap_out_of_range_setitem(key):
    m = IntMap()
    with pytest.raises(OverflowError):
        m[key] = 1
    assert len(m) == 0


def test_intmap_missing_keys():
    m = IntMap()
    m[3] = 3
    for k in (4, EMPTY_KEY, TOMB_KEY, I64_MAX):
        with pytest.raises(KeyError):
            m[k]
        with pytest.raises(KeyError):
            del m[k]
        with pytest.raises(KeyError):
            m.pop(k)
    assert len(m) == 1


def test_intmap_marker_keys_are_ordinary_keys():
    m = IntMap()
    m[EMPTY_KEY] = 1
    m[TOMB_KEY] = 2
    for k in range(100):
        m[k << 20] = k
    assert len(m) == 102
    assert m[EMPTY_KEY] == 1 and m[TOMB_KEY] == 2
    del m[EMPTY_KEY]
    assert EMPTY_KEY not in m and TOMB_KEY in m and len(m) == 101
    assert m.pop(TOMB_KEY) == 2
    assert set(m) == {k << 20 for k in range(100)}


def test_intmap_float_values_keep_bits():
    m = IntMap("float64")
    payloads = [0x7FF8000000000000, 0x7FF8000000000123, 0xFFF8000000000001,
                0x7FF0000000000000, 0xFFF0000000000000, 0x8000000000000000, 0x0000000000000001]
    for i, b in enumerate(payloads):
        m[i] = from_bits(b)
    for i, b in enumerate(payloads):
        assert bits(m[i]) == b
        assert bits(m.get(i)) == b
    assert bits(dict(m.items())[1]) == payloads[1]
    assert math.isinf(m[3]) and m[4] == -math.inf
    assert math.copysign(1.0, m[5]) == -1.0


def test_intmap_int_values_reject_floats_and_out_of_range():
    m = IntMap()
    with pytest.raises(TypeError):
        m[1] = "x"
    with pytest.raises(OverflowError):
        m[1] = 1 << 63
    assert len(m) == 0
    with pytest.raises(TypeError):
        IntMap("int32")
    with pytest.raises(ValueError):
        IntMap("int64", -1)


def test_intmap_large_churn_against_dict():
    rng = np.random.default_rng(1)
    m, d = IntMap(), {}
    ks = (rng.integers(0, 5000, 60_000) << 20).tolist()
    ops = rng.integers(0, 3, 60_000).tolist()
    for k, op in zip(ks, ops):
        if op == 2:
            assert m.pop(k, None) == d.pop(k, None)
        else:
            m[k] = op
            d[k] = op
    assert len(m) == len(d)
    assert dict(m.items()) == d


# -- StringBuilder specifics ----------------------------------------------------------


def test_string_builder_view_is_read_only_and_zero_copy():
    sb = StringBuilder()
    sb.append(b"hello")
    mv = memoryview(sb)
    assert mv.readonly
    assert mv.tobytes() == b"hello"
    with pytest.raises(TypeError):
        mv[0] = 0
    a = np.frombuffer(sb, dtype=np.uint8)
    b = np.frombuffer(mv, dtype=np.uint8)
    assert not a.flags.writeable
    assert a.ctypes.data == b.ctypes.data           # both views see the same memory
    with pytest.raises((BufferError, TypeError)):
        import ctypes
        (ctypes.c_char * 5).from_buffer(sb)
    del a, b
    mv.release()


def test_string_builder_append_or_reset_with_view_open():
    sb = StringBuilder()
    sb.append(b"x" * 10)
    mv = memoryview(sb)
    with pytest.raises(BufferError):
        sb.append(b"y" * (sb.capacity + 1))         # would have to move
    with pytest.raises(BufferError):
        sb.reset()
    assert sb.getvalue() == b"x" * 10
    assert mv.tobytes() == b"x" * 10
    mv.release()
    sb.reset()
    sb.append(b"y" * 1000)
    assert sb.getvalue() == b"y" * 1000


def test_string_builder_view_never_changes_under_appends():
    # An append that fits the capacity leaves the bytes a view shows as they were.
    sb = StringBuilder(1024)
    sb.append(b"abc")
    with memoryview(sb) as mv:
        try:
            sb.append(b"def")
        except BufferError:
            pass
        assert mv.tobytes() == b"abc"


def test_string_builder_non_byte_formats_append_raw_bytes():
    sb = StringBuilder()
    ai = array.array("i", [1, -2, 3])
    assert sb.append(ai) == ai.itemsize * 3
    ad = array.array("d", [1.5])
    assert sb.write(ad) == 8
    cast = memoryview(b"\x01\x00\x00\x00\x02\x00\x00\x00").cast("I")
    assert sb.append(cast) == 8
    arr = np.arange(4, dtype=np.int16)
    assert sb.append(arr) == 8
    assert sb.getvalue() == ai.tobytes() + ad.tobytes() + cast.tobytes() + arr.tobytes()
    with pytest.raises(TypeError):
        sb.append(12)
    with pytest.raises(TypeError):
        sb.append(None)


def test_string_builder_capacity_and_negative():
    assert StringBuilder(100).capacity == 100
    with pytest.raises(ValueError):
        StringBuilder(-1)


# -- GC-free ---------------------------------------------------------------------------

N = 100_000


def _tracked_delta(build):
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        obj = build()
        after = len(gc.get_objects())
    finally:
        gc.enable()
    return obj, after - before


def _build_vector_i():
    v = Vector("int64")
    for i in range(N):
        v.append(i)
    return v


def _build_vector_f():
    v = Vector("float64")
    for i in range(N):
        v.append(i * 0.5)
    v.extend(np.arange(N, dtype=np.float64))
    return v


def _build_intmap():
    m = IntMap()
    for i in range(N):
        m[i << 20] = i
    return m


def _build_intmap_f():
    m = IntMap("float64")
    for i in range(N):
        m[i * 7919] = i * 0.25
    return m


def _build_sb():
    sb = StringBuilder()
    for i in range(N):
        sb.append(b"chunk")
        sb.append("é")
    return sb


@pytest.mark.parametrize("build", [_build_vector_i, _build_vector_f, _build_intmap,
                                   _build_intmap_f, _build_sb])
def test_building_adds_no_gc_tracked_objects(build):
    obj, delta = _tracked_delta(build)
    assert gc.is_tracked(obj) is False
    assert delta <= (1 if gc.is_tracked(obj) else 0), delta
    assert len(obj) >= N


def test_containers_are_not_tracked():
    for obj in (Vector("int64"), Vector("float64", 10, fixed=True), IntMap(), IntMap("float64"),
                StringBuilder(), StringBuilder(64)):
        assert gc.is_tracked(obj) is False
    # A list of the same size is what the containers replace: it is tracked.
    assert gc.is_tracked(list(range(3)))


# -- found by these tests, fixed --------------------------------------------------------


def test_intmap_numpy_int_keys_in_contains_and_get():
    m = IntMap()
    m[5] = 1
    assert m[np.int64(5)] == 1
    assert np.int64(5) in m
    assert m.get(np.int64(5)) == 1
    assert m.pop(np.int32(5)) == 1 and len(m) == 0


def test_intmap_pop_out_of_range_with_default():
    m = IntMap()
    assert m.pop(1 << 64, None) is None
    with pytest.raises(KeyError):
        m.pop(1 << 64)


def test_intmap_setdefault_returns_the_stored_value():
    m = IntMap("float64")
    assert m.setdefault(5, 1) == 1.0 and isinstance(m.setdefault(5, 7), float)


def test_intmap_huge_capacity_is_a_memory_error():
    with pytest.raises(MemoryError):
        IntMap(capacity=2 ** 62 - 1)


def test_vector_extend_with_itself_doubles():
    v = Vector("int64")
    v.extend([1, 2])
    v.extend(v)
    assert v.tolist() == [1, 2, 1, 2]


def test_vector_pop_front_keeps_the_order():
    v = Vector("int64")
    v.extend(list(range(100)))
    assert v.pop(0) == 0 and v.tolist() == list(range(1, 100))


# -- the nogil C API (containers.pxd) from third-party Cython ---------------------------


def test_containers_c_api_without_the_gil(cext):
    v = Vector("int64")
    cext.vector_fill_c(v, 10_000)
    assert v.tolist() == list(range(10_000))
    f = Vector("float64")
    cext.vector_fill_c(f, 100, True)
    assert f.as_array().sum() == sum(range(100))
    m = IntMap()
    keys = [3, 7, 3, -(2 ** 63), 3, 2 ** 63 - 1, -(2 ** 63) + 1] * 1000
    assert cext.intmap_count_c(m, keys) == 5
    assert dict(m.items()) == {3: 3000, 7: 1000, -(2 ** 63): 1000, 2 ** 63 - 1: 1000,
                               -(2 ** 63) + 1: 1000}
    assert cext.intmap_delete_c(m, 7) == 1 and cext.intmap_delete_c(m, 7) == 0
    b = StringBuilder()
    cext.sb_repeat_c(b, b"ab", 50_000)
    assert b.getvalue() == b"ab" * 50_000


def test_containers_c_api_raises_from_nogil_code(cext):
    fixed = Vector("int64", 4, fixed=True)
    with pytest.raises(OverflowError, match="full"):
        cext.vector_fill_c(fixed, 5)
    assert fixed.tolist() == [0, 1, 2, 3]
    v = Vector("int64", 8)
    cext.vector_fill_c(v, 8)
    view = v.as_array()
    with pytest.raises(BufferError):
        cext.vector_fill_c(v, 1)            # would move the data under the view
    assert len(v) == 8
    del view
    with pytest.raises(MemoryError):
        cext.vector_reserve_c(v, 2 ** 62)
    b = StringBuilder()
    cext.sb_repeat_c(b, b"x", 10)
    with memoryview(b):
        with pytest.raises(BufferError):
            cext.sb_repeat_c(b, b"y" * 4096, 1)
    assert b.getvalue() == b"x" * 10


# -- Vector growth from a chosen allocator ------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: pgo.ArenaAllocator(1 << 20, threadsafe=True),
    lambda: pgo.StackAllocator(1 << 22, threadsafe=True),
    lambda: pgo.LinearAllocator(1 << 22, threadsafe=True),
    lambda: pgo.CacheAllocator(1 << 24),
], ids=["arena", "stack", "linear", "cache"])
def test_vector_grows_in_allocator_memory(make):
    a = make()
    v = pgo.Vector("int64", allocator=a)
    assert v.allocator is a
    for i in range(20000):
        v.append(i * 3)
    assert v.tolist() == [i * 3 for i in range(20000)]
    # The elements lie in the allocator's memory: the router's ownership
    # lookup (the allocator's own block records) finds them there.
    router = pgo.Router([pgo.SizeClass(0, None, a)])
    assert router.owner_of(v.as_array().ctypes.data) is a
    assert a.live_blocks == 1                 # grown many times, old blocks given back
    assert a.in_use >= 20000 * 8
    assert a.stats()["allocations"] >= 10
    del v
    assert a.live_blocks == 0


def test_vector_in_an_arena_blocks_reset_until_it_is_gone():
    arena = pgo.ArenaAllocator(1 << 16)
    v = pgo.Vector("float64", 100, allocator=arena)
    v.extend(np.arange(100.0))
    with pytest.raises(pgo.AllocatorError):
        arena.reset()
    assert v.tolist() == list(np.arange(100.0))
    del v
    gc.collect()
    arena.reset()


def test_vector_growth_refused_by_its_allocator_is_memoryerror_and_keeps_the_data():
    slab = pgo.SlabAllocator(256)                 # serves blocks of at most 256 bytes
    v = pgo.Vector("int64", allocator=slab)
    for i in range(32):                           # 32 * 8 = 256 bytes: fits
        v.append(i)
    with pytest.raises(MemoryError, match="cannot serve"):
        v.append(32)
    assert v.tolist() == list(range(32)) and len(v) == 32
    with pytest.raises(MemoryError):
        pgo.Vector("int64", 1000, allocator=slab)


def test_vector_allocator_must_be_a_pgo_allocator():
    with pytest.raises(TypeError, match="pgo allocator"):
        pgo.Vector("int64", allocator=object())
    with pytest.raises(TypeError, match="pgo allocator"):
        pgo.Vector("int64", allocator=bytearray(10))


def test_vector_keeps_its_allocator_alive():
    import weakref
    arena = pgo.ArenaAllocator(1 << 16)
    ref = weakref.ref(arena)
    v = pgo.Vector("int64", 10, allocator=arena)
    del arena
    gc.collect()
    assert ref() is not None
    v.extend(range(1000))
    assert sum(v) == sum(range(1000))
    del v
    gc.collect()
    assert ref() is None


def test_fixed_vector_from_an_allocator():
    stack = pgo.StackAllocator(1 << 16)
    v = pgo.Vector("float64", 16, fixed=True, allocator=stack)
    v.extend(range(16))
    with pytest.raises(OverflowError):
        v.append(1.0)
    assert stack.in_use >= 16 * 8
    del v
    assert stack.in_use == 0
