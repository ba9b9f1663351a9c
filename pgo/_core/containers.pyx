"""GC-free containers: Vector, IntMap, StringBuilder.

Design: each container is one C struct and one or two malloc'd arrays
(through ``pgo._core._memory``, so big arrays get huge pages as the
allocators' do).  Elements are C values: a million of them are a few
arrays, not a million Python objects, so they cost no per-object header and
nothing for the garbage collector to track or traverse (the classes are
``no_gc``: they hold no Python references at all, or only immutable ones).

- Vector: int64 or float64 elements, doubling growth (or a fixed capacity).
  ``as_array()`` is a zero-copy numpy view; while a view is open the vector
  refuses to move its data (BufferError), as bytearray does.
- IntMap: open addressing with linear probing over two parallel int64
  arrays (keys, values), splitmix64 hashing, at most 3/4 full.  Two key
  values mark free slots (INT64_MIN: empty, INT64_MIN + 1: deleted); those
  two keys, when used, are stored apart, so every int64 is a valid key.
- StringBuilder: appends bytes and UTF-8 text into one growing buffer;
  ``getvalue()`` copies it out, ``reset()`` keeps the memory for the next
  round.

# NOTE: ownership.  The struct and its arrays belong to the Python object
# (``__cinit__`` / ``__dealloc__``); a Vector made on a pgo allocator holds
# that allocator, which outlives its data.
# NOTE: threads and the GIL.  No locks: a container is for one thread at a
# time, like list and dict without the GIL's help.  The C API (containers.pxd)
# is nogil.
"""

cimport cython
from cpython.buffer cimport PyBUF_FORMAT, PyBUF_WRITABLE, PyObject_GetBuffer, PyBuffer_Release
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from libc.stdint cimport INT64_MIN, int64_t, uint64_t
from libc.string cimport memcpy, memmove

from pgo._core._memory cimport pgo_sys_alloc, pgo_sys_free, pgo_sys_realloc
from pgo._core._base cimport Allocator
from pgo._core._typedefs cimport (
    PGO_OK, pgo_add_overflow, pgo_backend_give, pgo_backend_take, pgo_mul_overflow,
)

import operator

import numpy as np

cdef int64_t EMPTY = INT64_MIN
cdef int64_t TOMB = INT64_MIN + 1


cdef int _raise_nomem(size_t n) except -1 with gil:
    raise MemoryError(f"cannot allocate {n:,} bytes")


cdef int _raise_moving(const char* what) except -1 with gil:
    raise BufferError(f"{what.decode()}: cannot grow while views of its data are open "
                      f"(as_array() results, memoryviews); drop them first")


cdef int _raise_full(size_t cap) except -1 with gil:
    raise OverflowError(f"fixed Vector is full ({cap:,} elements)")


# -- Vector -------------------------------------------------------------------------

cdef int vector_reserve(pgo_vector_t* v, size_t capacity) except -1 nogil:
    cdef size_t nbytes
    cdef char* data
    if capacity <= v.capacity:
        return 0
    if v.fixed and v.data != NULL:
        return _raise_full(v.capacity)
    if v.exports:
        return _raise_moving("Vector")
    if pgo_mul_overflow(capacity, v.itemsize, &nbytes):
        return _raise_nomem(<size_t>-1)
    if v.be != NULL:
        return _reserve_from(v, capacity, nbytes)
    data = <char*>pgo_sys_realloc(v.data, capacity, v.itemsize)
    if data == NULL:
        return _raise_nomem(nbytes)
    v.data = data
    v.capacity = capacity
    return 0


cdef int _raise_refused(size_t n, int err) except -1 with gil:
    raise MemoryError(f"Vector: its allocator cannot serve {n:,} bytes (error {err}: "
                      f"exhausted, or past what it serves)")


cdef int _reserve_from(pgo_vector_t* v, size_t capacity, size_t nbytes) except -1 nogil:
    # Growth through a pgo allocator: a new block, the elements copied, the
    # old block given back (allocators have no realloc of their own).
    cdef void* data = NULL
    cdef int err = pgo_backend_take(v.be, nbytes, False, &data)
    if err != PGO_OK or data == NULL:
        return _raise_refused(nbytes, err)
    if v.data != NULL:
        memcpy(data, v.data, v.length * v.itemsize)
        pgo_backend_give(v.be, v.data)
    v.data = <char*>data
    v.capacity = capacity
    return 0


cdef inline int _vector_grow(pgo_vector_t* v) except -1 nogil:
    return vector_reserve(v, v.capacity * 2 if v.capacity >= 8 else 8)


cdef inline char* _vector_next(pgo_vector_t* v) except NULL nogil:
    # The slot of one more element (counted already), grown into unless fixed.
    if v.length == v.capacity:
        if v.fixed:
            _raise_full(v.capacity)
        _vector_grow(v)
    v.length += 1
    return v.data + (v.length - 1) * v.itemsize


cdef int vector_push_i64(pgo_vector_t* v, int64_t x) except -1 nogil:
    (<int64_t*>_vector_next(v))[0] = x
    return 0


cdef int vector_push_f64(pgo_vector_t* v, double x) except -1 nogil:
    (<double*>_vector_next(v))[0] = x
    return 0


cdef inline void _export_1d(Py_buffer* buf, object owner, Py_ssize_t* exports, char* data,
                            size_t* length, Py_ssize_t itemsize, Py_ssize_t* shape, bint readonly,
                            char* fmt, int flags) noexcept:
    # What Vector and StringBuilder export: a contiguous one-dimensional view
    # of the *length items at data (an empty container's data may be NULL:
    # the view gets a valid address all the same), its shape read from
    # `shape` (NULL: buf.len, for bytes), counted in *exports until
    # __releasebuffer__.
    buf.buf = data if data != NULL else <char*>length
    buf.len = <Py_ssize_t>(length[0] * itemsize)
    buf.readonly = readonly
    buf.itemsize = itemsize
    buf.format = fmt if flags & PyBUF_FORMAT else NULL
    buf.ndim = 1
    buf.shape = shape if shape != NULL else &buf.len
    buf.strides = &buf.itemsize
    buf.suboffsets = NULL
    buf.internal = NULL
    buf.obj = owner
    exports[0] += 1


@cython.no_gc
@cython.final
cdef class Vector:
    """A typed growable array (int64 or float64): list-like, GC-free.

    Args:
        dtype: "int64" or "float64" (numpy dtypes of those are accepted).
        capacity: elements to reserve up front.
        fixed: never grow past ``capacity``: an append beyond it raises
            OverflowError (a fixed-capacity array).
        allocator: a pgo allocator to take the element array from (and
            give it back to as the vector grows); default: the system.  The
            allocator is kept alive and refuses ``reset()`` while it holds
            the vector's data; one that cannot serve a size (an exhausted
            arena, a slab's block size) makes growth raise MemoryError.

    ``as_array()`` is a zero-copy numpy view of the elements; while it (or
    any memoryview) is alive the vector cannot grow (BufferError), because
    growing moves the data.
    """

    def __cinit__(self, dtype="float64", Py_ssize_t capacity=0, *, bint fixed=False,
                  allocator=None):
        dt = np.dtype(dtype)
        if dt != np.dtype(np.int64) and dt != np.dtype(np.float64):
            raise TypeError(f"Vector holds int64 or float64, not {dt}")
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        if allocator is not None:
            if not isinstance(allocator, Allocator) or \
                    (<Allocator>allocator)._backend(&self._be) != 0:
                raise TypeError(f"allocator must be a pgo allocator, got "
                                f"{type(allocator).__name__}")
        self.v = <pgo_vector_t*>pgo_sys_alloc(sizeof(pgo_vector_t), 8)
        if self.v == NULL:
            raise MemoryError(f"cannot allocate {sizeof(pgo_vector_t)} bytes")
        self.v.data = NULL
        self.v.length = 0
        self.v.capacity = 0
        self.v.itemsize = 8
        self.v.kind = PGO_VEC_I64 if dt == np.dtype(np.int64) else PGO_VEC_F64
        self.v.fixed = False
        self.v.exports = 0
        self.v.be = &self._be if allocator is not None else NULL
        self.allocator = allocator
        self._dtype = dt
        if capacity:
            vector_reserve(self.v, <size_t>capacity)
        self.v.fixed = fixed

    def __dealloc__(self):
        if self.v != NULL:
            if self.v.be != NULL:
                if self.v.data != NULL:
                    pgo_backend_give(self.v.be, self.v.data)
            else:
                pgo_sys_free(self.v.data)
            pgo_sys_free(self.v)

    @property
    def dtype(self):
        return self._dtype

    @property
    def capacity(self):
        return self.v.capacity

    def __len__(self):
        return self.v.length

    cdef size_t _index(self, Py_ssize_t i) except? 0:
        if i < 0:
            i += <Py_ssize_t>self.v.length
        if i < 0 or <size_t>i >= self.v.length:
            raise IndexError("Vector index out of range")
        return <size_t>i

    def append(self, x):
        if self.v.kind == PGO_VEC_I64:
            vector_push_i64(self.v, x)
        else:
            vector_push_f64(self.v, x)

    def extend(self, values):
        """Append every element of an iterable (a numpy array is copied at C speed)."""
        cdef size_t n, need
        if values is self:
            values = self.as_array().copy()     # a snapshot, as list.extend(itself)
        if isinstance(values, np.ndarray) and values.ndim == 1:
            arr = np.ascontiguousarray(values, dtype=self._dtype)
            n = <size_t>arr.shape[0]
            if pgo_add_overflow(self.v.length, n, &need):
                raise MemoryError("Vector would overflow")
            if need > self.v.capacity:
                if self.v.fixed:
                    raise OverflowError(f"fixed Vector is full ({self.v.capacity:,} elements)")
                vector_reserve(self.v, max(need, self.v.capacity * 2))
            if n:
                memcpy(self.v.data + self.v.length * 8, <char*><size_t>arr.ctypes.data, n * 8)
                self.v.length = need
            return
        for x in values:
            self.append(x)

    def pop(self, Py_ssize_t i=-1):
        cdef size_t k = self._index(i)
        value = self[k]
        if k + 1 < self.v.length:
            if self.v.exports:
                raise BufferError("Vector: cannot shift elements while views of its data are open")
            memmove(self.v.data + k * 8, self.v.data + (k + 1) * 8, (self.v.length - k - 1) * 8)
        self.v.length -= 1
        return value

    def clear(self):
        """Remove every element (the capacity is kept)."""
        self.v.length = 0

    def __getitem__(self, Py_ssize_t i):
        cdef size_t k = self._index(i)
        if self.v.kind == PGO_VEC_I64:
            return (<int64_t*>self.v.data)[k]
        return (<double*>self.v.data)[k]

    def __setitem__(self, Py_ssize_t i, x):
        cdef size_t k = self._index(i)
        if self.v.kind == PGO_VEC_I64:
            (<int64_t*>self.v.data)[k] = x
        else:
            (<double*>self.v.data)[k] = x

    def __iter__(self):
        cdef size_t k = 0
        while k < self.v.length:
            yield self[k]
            k += 1

    def tolist(self):
        return self.as_array().tolist()

    def as_array(self):
        """A zero-copy numpy view of the elements (the vector cannot grow
        while it is alive)."""
        return np.asarray(memoryview(self))

    def __getbuffer__(self, Py_buffer* buf, int flags):
        # NOTE: the view shares the data; exports stops vector_reserve from
        # moving it until every view is released.
        _export_1d(buf, self, &self.v.exports, self.v.data, &self.v.length, 8,
                   <Py_ssize_t*>&self.v.length, False,
                   b"q" if self.v.kind == PGO_VEC_I64 else b"d", flags)

    def __releasebuffer__(self, Py_buffer* buf):
        self.v.exports -= 1

    def __repr__(self):
        return f"Vector({self.tolist()!r}, dtype={self._dtype.name!r})"


# -- IntMap ---------------------------------------------------------------------------

@cython.overflowcheck(False)
cdef inline size_t _hash(int64_t key) noexcept nogil:
    # splitmix64's finalizer: every key bit reaches the low bits the mask keeps.
    cdef uint64_t x = <uint64_t>key
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL
    return <size_t>(x ^ (x >> 31))


cdef Py_ssize_t _slot(pgo_intmap_t* m, int64_t key, bint* found) noexcept nogil:
    # The slot holding key, or the one to insert it in (the first deleted
    # slot on its probe path, else the empty slot that ends the path).
    cdef size_t i = _hash(key) & m.mask
    cdef Py_ssize_t tomb = -1
    cdef int64_t k
    while True:
        k = m.keys[i]
        if k == key:
            found[0] = True
            return <Py_ssize_t>i
        if k == EMPTY:
            found[0] = False
            return tomb if tomb >= 0 else <Py_ssize_t>i
        if k == TOMB and tomb < 0:
            tomb = <Py_ssize_t>i
        i = (i + 1) & m.mask


cdef int _intmap_rehash(pgo_intmap_t* m, size_t slots) except -1 nogil:
    cdef int64_t* keys = <int64_t*>pgo_sys_alloc(slots * sizeof(int64_t), 64)
    cdef int64_t* values = <int64_t*>pgo_sys_alloc(slots * sizeof(int64_t), 64)
    cdef int64_t* old_keys = m.keys
    cdef int64_t* old_values = m.values
    cdef size_t old_slots = m.mask + 1 if m.keys != NULL else 0, i
    cdef bint found
    cdef Py_ssize_t j
    if keys == NULL or values == NULL:
        pgo_sys_free(keys)
        pgo_sys_free(values)
        return _raise_nomem(2 * slots * sizeof(int64_t))
    for i in range(slots):
        keys[i] = EMPTY
    m.keys, m.values, m.mask = keys, values, slots - 1
    m.filled = m.used
    for i in range(old_slots):
        if old_keys[i] != EMPTY and old_keys[i] != TOMB:
            j = _slot(m, old_keys[i], &found)
            keys[j] = old_keys[i]
            values[j] = old_values[i]
    pgo_sys_free(old_keys)
    pgo_sys_free(old_values)
    return 0


cdef bint intmap_get(pgo_intmap_t* m, int64_t key, int64_t* out) noexcept nogil:
    cdef bint found
    cdef Py_ssize_t i
    if key == EMPTY or key == TOMB:
        if key == EMPTY and m.has_empty_key:
            out[0] = m.empty_value
            return True
        if key == TOMB and m.has_tomb_key:
            out[0] = m.tomb_value
            return True
        return False
    i = _slot(m, key, &found)
    if found:
        out[0] = m.values[i]
    return found


cdef int intmap_set(pgo_intmap_t* m, int64_t key, int64_t value) except -1 nogil:
    cdef bint found
    cdef Py_ssize_t i
    cdef size_t slots
    if key == EMPTY:
        m.empty_value = value
        m.has_empty_key = True
        return 0
    if key == TOMB:
        m.tomb_value = value
        m.has_tomb_key = True
        return 0
    i = _slot(m, key, &found)
    if found:
        m.values[i] = value
        return 0
    if (m.filled + 1) * 4 > (m.mask + 1) * 3:
        # Full of keys: double.  Mostly tombstones: rehash in place.
        slots = (m.mask + 1) * 2 if (m.used + 1) * 2 > (m.mask + 1) else m.mask + 1
        _intmap_rehash(m, slots)
        i = _slot(m, key, &found)
    if m.keys[i] == EMPTY:
        m.filled += 1
    m.keys[i] = key
    m.values[i] = value
    m.used += 1
    return 0


cdef int intmap_delete(pgo_intmap_t* m, int64_t key) noexcept nogil:
    cdef bint found
    cdef Py_ssize_t i
    if key == EMPTY or key == TOMB:
        if key == EMPTY and m.has_empty_key:
            m.has_empty_key = False
            return 1
        if key == TOMB and m.has_tomb_key:
            m.has_tomb_key = False
            return 1
        return 0
    i = _slot(m, key, &found)
    if not found:
        return 0
    m.keys[i] = TOMB
    m.used -= 1
    return 1


cdef size_t intmap_len(pgo_intmap_t* m) noexcept nogil:
    return m.used + m.has_empty_key + m.has_tomb_key


cdef object _as_key(object key):
    # An int64 key from any integer (numpy's included), or None when it
    # cannot be one (then it is not in any IntMap).
    try:
        k = operator.index(key)
    except TypeError:
        return None
    return k if -(1 << 63) <= k < (1 << 63) else None


cdef union _bits:
    int64_t i
    double d


@cython.no_gc
@cython.final
cdef class IntMap:
    """A dict from int64 keys to int64 (or float64) values, GC-free.

    Args:
        value: "int64" (default) or "float64".
        capacity: keys to make room for up front.

    Supports ``m[k]``, ``m[k] = v``, ``del m[k]``, ``k in m``, ``len``,
    ``get``, ``pop``, ``setdefault``, ``keys``, ``values``, ``items``,
    iteration over keys (RuntimeError if the map changes meanwhile, as for
    dict) and ``clear``.  Keys are any int in the int64 range; 16 bytes per
    slot, at most 3/4 of the slots used.
    """

    def __cinit__(self, value="int64", Py_ssize_t capacity=0):
        cdef size_t slots = 8
        if value not in ("int64", "float64"):
            raise TypeError(f"IntMap values are 'int64' or 'float64', not {value!r}")
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        if capacity > (1 << 56):
            raise MemoryError(f"IntMap capacity {capacity:,} is more than it can hold")
        while slots * 3 < <size_t>capacity * 4:
            slots *= 2
        self.m = <pgo_intmap_t*>pgo_sys_alloc(sizeof(pgo_intmap_t), 8)
        if self.m == NULL:
            raise MemoryError(f"cannot allocate {sizeof(pgo_intmap_t)} bytes")
        self.m.keys = NULL
        self.m.values = NULL
        self.m.used = self.m.filled = 0
        self.m.has_empty_key = self.m.has_tomb_key = False
        self.m.floats = value == "float64"
        self.floats = self.m.floats
        _intmap_rehash(self.m, slots)

    def __dealloc__(self):
        if self.m != NULL:
            pgo_sys_free(self.m.keys)
            pgo_sys_free(self.m.values)
            pgo_sys_free(self.m)

    cdef int64_t _store(self, object value) except? -1:
        cdef _bits b
        if self.floats:
            b.d = value
            return b.i
        return value

    cdef object _load(self, int64_t raw):
        cdef _bits b
        if self.floats:
            b.i = raw
            return b.d
        return raw

    def __len__(self):
        return intmap_len(self.m)

    def __contains__(self, key):
        cdef int64_t out
        key = _as_key(key)
        return key is not None and intmap_get(self.m, key, &out)

    def __getitem__(self, int64_t key):
        cdef int64_t out
        if not intmap_get(self.m, key, &out):
            raise KeyError(key)
        return self._load(out)

    def __setitem__(self, int64_t key, value):
        cdef int64_t raw = self._store(value)
        cdef size_t before = intmap_len(self.m)
        intmap_set(self.m, key, raw)
        if intmap_len(self.m) != before:
            self._version += 1

    def __delitem__(self, int64_t key):
        if not intmap_delete(self.m, key):
            raise KeyError(key)
        self._version += 1

    def get(self, key, default=None):
        cdef int64_t out
        k = _as_key(key)
        if k is not None and intmap_get(self.m, k, &out):
            return self._load(out)
        return default

    def pop(self, key, *default):
        cdef int64_t out
        k = _as_key(key)
        if k is not None and intmap_get(self.m, k, &out):
            intmap_delete(self.m, k)
            self._version += 1
            return self._load(out)
        if default:
            return default[0]
        raise KeyError(key)

    def setdefault(self, int64_t key, default=0):
        cdef int64_t out
        if not intmap_get(self.m, key, &out):
            self[key] = default
            intmap_get(self.m, key, &out)
        return self._load(out)          # as stored (a float map gives a float)

    def clear(self):
        """Remove every key (the table keeps its size)."""
        cdef size_t i
        for i in range(self.m.mask + 1):
            self.m.keys[i] = EMPTY
        self.m.used = self.m.filled = 0
        self.m.has_empty_key = self.m.has_tomb_key = False
        self._version += 1

    def _items(self, int what):
        # what: 0 keys, 1 values, 2 items
        cdef size_t i, version = self._version
        cdef int64_t k
        specials = []
        if self.m.has_empty_key:
            specials.append((EMPTY, self._load(self.m.empty_value)))
        if self.m.has_tomb_key:
            specials.append((TOMB, self._load(self.m.tomb_value)))
        for pair in specials:
            yield pair if what == 2 else pair[what]
        for i in range(self.m.mask + 1):
            if self._version != version:
                raise RuntimeError("IntMap changed size during iteration")
            k = self.m.keys[i]
            if k != EMPTY and k != TOMB:
                if what == 0:
                    yield k
                elif what == 1:
                    yield self._load(self.m.values[i])
                else:
                    yield (k, self._load(self.m.values[i]))
        if self._version != version:
            raise RuntimeError("IntMap changed size during iteration")

    def __iter__(self):
        return self._items(0)

    def keys(self):
        return self._items(0)

    def values(self):
        return self._items(1)

    def items(self):
        return self._items(2)

    @property
    def nbytes(self):
        """Bytes of the table (keys and values)."""
        return (self.m.mask + 1) * 16

    def __repr__(self):
        return f"IntMap({len(self)} keys, value={'float64' if self.floats else 'int64'!r})"


# -- StringBuilder ----------------------------------------------------------------------

cdef int sb_append(pgo_sb_t* b, const char* p, size_t n) except -1 nogil:
    cdef size_t need, cap
    cdef char* data
    if pgo_add_overflow(b.length, n, &need):
        return _raise_nomem(<size_t>-1)
    if need > b.capacity:
        if b.exports:
            return _raise_moving("StringBuilder")
        cap = b.capacity * 2 if b.capacity >= 256 else 256
        if cap < need:
            cap = need
        data = <char*>pgo_sys_realloc(b.data, cap, 1)
        if data == NULL:
            return _raise_nomem(cap)
        b.data = data
        b.capacity = cap
    if n:
        memcpy(b.data + b.length, p, n)
    b.length = need
    return 0


@cython.no_gc
@cython.final
cdef class StringBuilder:
    """Bytes and text appended into one growing buffer (io.BytesIO's job
    for output that is built once and read once), GC-free.

    ``append(x)`` / ``write(x)`` take bytes-like objects or str (encoded
    UTF-8).  ``getvalue()`` returns the bytes, ``text()`` the str;
    ``reset()`` empties it and keeps the memory for the next round.
    """

    def __cinit__(self, Py_ssize_t capacity=0):
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.b = <pgo_sb_t*>pgo_sys_alloc(sizeof(pgo_sb_t), 8)
        if self.b == NULL:
            raise MemoryError(f"cannot allocate {sizeof(pgo_sb_t)} bytes")
        self.b.data = NULL
        self.b.length = self.b.capacity = 0
        self.b.exports = 0
        if capacity:
            self.b.data = <char*>pgo_sys_realloc(NULL, <size_t>capacity, 1)
            if self.b.data == NULL:
                raise MemoryError(f"cannot allocate {capacity:,} bytes")
            self.b.capacity = <size_t>capacity

    def __dealloc__(self):
        if self.b != NULL:
            pgo_sys_free(self.b.data)
            pgo_sys_free(self.b)

    def append(self, x):
        """Append bytes-like ``x``, or str ``x`` as UTF-8; returns the byte count."""
        cdef Py_ssize_t n
        cdef const char* p
        cdef Py_buffer view
        if isinstance(x, str):
            p = PyUnicode_AsUTF8AndSize(x, &n)
            sb_append(self.b, p, <size_t>n)
            return n
        PyObject_GetBuffer(x, &view, 0)
        try:
            sb_append(self.b, <const char*>view.buf, <size_t>view.len)
            n = view.len
        finally:
            PyBuffer_Release(&view)
        return n

    write = append

    def getvalue(self):
        return PyBytes_FromStringAndSize(self.b.data, <Py_ssize_t>self.b.length)

    def text(self):
        """The contents decoded as UTF-8."""
        return PyUnicode_DecodeUTF8(self.b.data, <Py_ssize_t>self.b.length, NULL)

    def reset(self):
        """Empty it; the buffer is kept for the next round."""
        if self.b.exports:
            raise BufferError("StringBuilder: cannot reset while views of its data are open")
        self.b.length = 0

    def __len__(self):
        return self.b.length

    @property
    def capacity(self):
        return self.b.capacity

    def __getbuffer__(self, Py_buffer* buf, int flags):
        # NOTE: a read-only view of the contents; the builder cannot grow or
        # reset until every view is released.
        if flags & PyBUF_WRITABLE:
            raise BufferError("StringBuilder views are read-only")
        _export_1d(buf, self, &self.b.exports, self.b.data, &self.b.length, 1, NULL, True, b"B",
                   flags)

    def __releasebuffer__(self, Py_buffer* buf):
        self.b.exports -= 1

    def __repr__(self):
        return f"<StringBuilder {self.b.length:,} bytes>"
