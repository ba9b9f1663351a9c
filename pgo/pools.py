"""Pools: reusable buffers (BufferPool) and reusable objects (ObjectPool).

Design: a pool trades memory for allocation work.  BufferPool keeps freed
buffers by size class (powers of two from 256 B to 16 MiB) up to a bound on
the bytes it holds, so a steady-state loop of "get a buffer, fill it, give
it back" allocates (and page-faults) nothing.  ObjectPool does the same for
objects that are costly to build (a parser, a connection, a scratch array)
and can be reset.

Safety is what makes a pool usable: a buffer given back twice, or one the
pool did not hand out, is an error; a buffer that still has views on it (a
memoryview, a numpy array over it) is never handed out again, because the
next user's writes would show through them; an object whose reset fails is
dropped, not reused.  Every operation takes the pool's lock, so a pool may
be shared between threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from pgo._errors import PoolError

__all__ = ["BufferPool", "ObjectPool", "PoolError"]

_MISSING = object()
MIN_CLASS = 256
MAX_CLASS = 16 << 20
T = TypeVar("T")


def _class_size(n: int) -> int:
    size = MIN_CLASS
    while size < n:
        size <<= 1
    return size


class BufferPool:
    """Writable buffers by size class, kept for reuse.

    Args:
        max_bytes: most bytes of free buffers the pool keeps (by default
            64 MiB); a buffer given back beyond that is dropped (an eviction).
        allocator: where buffers come from: None for ``bytearray``, or a pgo
            allocator (its Blocks, released when dropped).  If the pool is
            shared between threads, make it with ``threadsafe=True``.

    ``get_buffer(n)`` returns a memoryview of exactly ``n`` bytes over a
    buffer of the next size class (256 B ... 16 MiB; larger requests get a
    buffer of their own, never pooled).  Its contents are whatever the last
    user left.  ``put_buffer(view)`` gives it back; ``with
    pool.buffer(n) as view:`` does both.
    """

    def __init__(self, max_bytes: int = 64 << 20, *, allocator: Any = None) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an int >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._allocator = allocator
        self._lock = threading.Lock()
        self._free: dict[int, list[Any]] = {}
        self._out: dict[int, tuple[memoryview, Any, int]] = {}  # id(view) -> (view, backing, class)
        self._pooled_bytes = 0
        self._stats = {"hits": 0, "misses": 0, "evictions": 0, "unpooled": 0,
                       "still_exported": 0}

    # -- backing buffers ----------------------------------------------------
    def _new(self, size: int) -> Any:
        if self._allocator is None:
            # One spare byte, so that the export check's append (below)
            # never makes the bytearray reallocate (and copy) itself.
            backing = bytearray(size + 1)
            del backing[-1]
            return backing
        return self._allocator.alloc(size)

    @staticmethod
    def _exported(backing: Any) -> bool:
        # Any view left on it (ours has been released)?
        if isinstance(backing, bytearray):
            try:
                backing.append(0)       # resizing is refused while views exist
            except BufferError:
                return True
            del backing[-1]
            return False
        return bool(backing.exports != 0)

    # -- the API ------------------------------------------------------------
    def get_buffer(self, nbytes: int) -> memoryview:
        """A writable memoryview of ``nbytes`` bytes (contents undefined)."""
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
            raise ValueError(f"nbytes must be an int > 0, got {nbytes!r}")
        pooled = nbytes <= MAX_CLASS
        size = _class_size(nbytes) if pooled else nbytes
        with self._lock:
            free = self._free.get(size) if pooled else None
            if free:
                backing = free.pop()
                self._pooled_bytes -= size
                self._stats["hits"] += 1
                view = memoryview(backing)[:nbytes]
                self._out[id(view)] = (view, backing, size)
                return view
            self._stats["misses" if pooled else "unpooled"] += 1
        backing = self._new(size)           # outside the lock: it may take a while
        view = memoryview(backing)[:nbytes]
        with self._lock:
            self._out[id(view)] = (view, backing, size if pooled else 0)
        return view

    def put_buffer(self, view: memoryview) -> None:
        """Give back a buffer from get_buffer.

        Raises:
            PoolError: it was given back already, or did not come from this
                pool (the pool is unchanged).
        """
        with self._lock:
            entry = self._out.pop(id(view), None)
            if entry is None or entry[0] is not view:
                if entry is not None:       # another view that happens to share the id
                    self._out[id(view)] = entry
                raise PoolError(f"{self!r}: this buffer was not handed out by this pool, "
                                f"or was given back already")
            _, backing, size = entry
            try:
                view.release()
                exported = False
            except BufferError:             # something holds a view made from ours
                exported = True
            if size == 0:                   # over 16 MiB: never pooled
                return
            if exported or self._exported(backing):
                # Someone still looks at it: never hand it out again.
                self._stats["still_exported"] += 1
            elif self._pooled_bytes + size > self.max_bytes:
                self._stats["evictions"] += 1
            else:
                self._free.setdefault(size, []).append(backing)
                self._pooled_bytes += size

    @contextmanager
    def buffer(self, nbytes: int) -> Iterator[memoryview]:
        """``with pool.buffer(n) as view:`` -- given back on exit."""
        view = self.get_buffer(nbytes)
        try:
            yield view
        finally:
            self.put_buffer(view)

    def clear(self) -> int:
        """Drop every pooled (free) buffer; returns the bytes released."""
        with self._lock:
            free, self._free = self._free, {}
            released, self._pooled_bytes = self._pooled_bytes, 0
        # Dropped buffers (bytearrays, pgo Blocks) give their memory back
        # when the last reference goes, for any allocator.
        free.clear()
        return released

    def stats(self) -> dict[str, Any]:
        """``hits``, ``misses``, ``hit_rate``, ``bytes_pooled``,
        ``buffers_pooled``, ``in_use`` (buffers handed out), ``evictions``
        (given back past max_bytes), ``unpooled`` (over 16 MiB) and
        ``still_exported`` (given back with views left on them: not reused).
        """
        with self._lock:
            s: dict[str, Any] = dict(self._stats)
            s["bytes_pooled"] = self._pooled_bytes
            s["buffers_pooled"] = sum(len(v) for v in self._free.values())
            s["in_use"] = len(self._out)
        total = s["hits"] + s["misses"]
        s["hit_rate"] = s["hits"] / total if total else 0.0
        s["max_bytes"] = self.max_bytes
        return s

    def __repr__(self) -> str:
        return f"<BufferPool max_bytes={self.max_bytes} pooled={self._pooled_bytes}>"


class ObjectPool(Generic[T]):
    """Objects kept for reuse.

    Args:
        factory: makes a new object when the pool has none.
        reset: called on an object given back, to make it fit for the next
            user; an object whose reset raises is dropped (counted), not
            reused.
        max_size: most idle objects kept (by default 64); more are dropped.

    ``with pool.take() as obj:`` hands one out and gives it back on exit;
    ``get()`` / ``put(obj)`` do it by hand.
    """

    def __init__(self, factory: Callable[[], T], reset: Callable[[T], Any] | None = None,
                 max_size: int = 64) -> None:
        if not callable(factory):
            raise TypeError(f"factory must be callable, got {type(factory).__name__}")
        if reset is not None and not callable(reset):
            raise TypeError(f"reset must be callable or None, got {type(reset).__name__}")
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 0:
            raise ValueError(f"max_size must be an int >= 0, got {max_size!r}")
        self._factory = factory
        self._reset = reset
        self.max_size = max_size
        self._lock = threading.Lock()
        self._idle: list[T] = []
        self._out: dict[int, T] = {}
        self._stats = {"hits": 0, "misses": 0, "reset_failures": 0, "dropped": 0}

    def get(self) -> T:
        """An idle object, or a new one from the factory."""
        with self._lock:
            obj = self._idle.pop() if self._idle else None
            self._stats["hits" if obj is not None else "misses"] += 1
        if obj is None:
            obj = self._factory()
        with self._lock:
            self._out[id(obj)] = obj
        return obj

    def put(self, obj: T) -> None:
        """Give back an object from get().

        Raises:
            PoolError: given back already, or not from this pool.
        """
        with self._lock:
            if self._out.get(id(obj), _MISSING) is not obj:
                raise PoolError(f"{self!r}: this object was not handed out by this pool, "
                                f"or was given back already")
            del self._out[id(obj)]
        if self._reset is not None:
            try:
                self._reset(obj)
            except Exception:
                with self._lock:
                    self._stats["reset_failures"] += 1
                return
        with self._lock:
            if len(self._idle) < self.max_size:
                self._idle.append(obj)
            else:
                self._stats["dropped"] += 1

    @contextmanager
    def take(self) -> Iterator[T]:
        """``with pool.take() as obj:`` -- given back (and reset) on exit."""
        obj = self.get()
        try:
            yield obj
        finally:
            self.put(obj)

    def stats(self) -> dict[str, Any]:
        """``hits``, ``misses``, ``hit_rate``, ``idle``, ``in_use``,
        ``reset_failures`` and ``dropped`` (given back past max_size)."""
        with self._lock:
            s: dict[str, Any] = dict(self._stats)
            s["idle"] = len(self._idle)
            s["in_use"] = len(self._out)
        total = s["hits"] + s["misses"]
        s["hit_rate"] = s["hits"] / total if total else 0.0
        return s

    def __repr__(self) -> str:
        return f"<ObjectPool factory={getattr(self._factory, '__name__', self._factory)!r}>"
