"""Build a Router from the ``[[numpy.size_class]]`` tables of a pgo config.

Kept apart from the Cython bridge because it is plain validation: every key
is checked against the allocator it configures, and every mistake is a
ConfigError that names the source, the entry and the valid choices.
"""

from __future__ import annotations

from typing import Any

from pgo._errors import ConfigError

MiB = 1 << 20

# A [[site]] cache serves requests from here up (its smallest class is a
# 4 KiB page); smaller ones made while the function runs keep the handler's
# per-thread small-block cache.  `pgo analyze` makes no site cache for
# blocks all smaller than this: such a rule would route nothing.
SITE_CACHE_MIN_BYTES = 4096

# allocator name -> {setting: (type, default)}; the class is looked up lazily.
CONFIG_KEYS: dict[str, dict[str, tuple[type, Any]]] = {
    "cache": {"max_cached_bytes": (int, 512 * MiB), "hugepages": (bool, True),
              "prefault": (bool, False)},
    "slab": {"block_size": (int, None), "slots_per_slab": (int, 0), "limit_bytes": (int, 0)},
    "arena": {"chunk_size": (int, 4 * MiB), "limit_bytes": (int, 0)},
    "linear": {"capacity": (int, 64 * MiB)},
    "stack": {"capacity": (int, 64 * MiB)},
}
COMMON_KEYS = ("min_bytes", "max_bytes", "allocator")


def _fail(source: str, index: int, message: str) -> ConfigError:
    return ConfigError(f"{source}: numpy.size_class[{index}]: {message}")


MAX_SIZE = (1 << 63) - 1


def _int(source: str, index: int, key: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(source, index, f"{key} must be an integer (bytes), got "
                                   f"{type(value).__name__} {value!r}")
    if value < minimum:
        raise _fail(source, index, f"{key} must be >= {minimum}, got {value}")
    if value > MAX_SIZE:
        raise _fail(source, index, f"{key} must be at most 2**63 - 1, got {value}")
    return value


def _make_allocator(kind: str, settings: dict[str, Any], max_bytes: int | None,
                    source: str, index: int) -> Any:
    # Each kind's module only when a config uses it: `pgo run` pays its
    # imports before the program starts.
    try:
        if kind == "cache":
            from pgo._core.cache import CacheAllocator
            return CacheAllocator(settings["max_cached_bytes"], hugepages=settings["hugepages"],
                                  prefault=settings["prefault"])
        if kind == "slab":
            block = settings["block_size"] if settings["block_size"] is not None else max_bytes
            if block is None:
                raise _fail(source, index, "a slab needs max_bytes or block_size")
            if max_bytes is not None and block < max_bytes:
                raise _fail(source, index, f"block_size {block} is smaller than max_bytes "
                                           f"{max_bytes}")
            from pgo._core.slab import SlabAllocator
            return SlabAllocator(block, align=16 if block < 16 else None,
                                 slots_per_slab=settings["slots_per_slab"],
                                 max_bytes=settings["limit_bytes"], threadsafe=True)
        if kind == "arena":
            from pgo._core.arena import ArenaAllocator
            return ArenaAllocator(settings["chunk_size"], settings["limit_bytes"], threadsafe=True)
        if kind == "linear":
            from pgo._core.linear import LinearAllocator
            return LinearAllocator(settings["capacity"], threadsafe=True)
        from pgo._core.stack import StackAllocator
        return StackAllocator(settings["capacity"], threadsafe=True)
    except (ValueError, MemoryError) as e:
        raise _fail(source, index, f"cannot make the {kind} allocator: {e}") from None


def router_from_config(router_cls: type, entries: Any, *, source: str = "<config>",
                       name: str = "pgo") -> Any:
    from pgo._core.numpy_bridge import SizeClass

    if not isinstance(entries, (list, tuple)):
        raise ConfigError(f"{source}: numpy.size_class must be an array of tables "
                          f"([[numpy.size_class]]), got {type(entries).__name__}")
    classes = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _fail(source, index, f"must be a table, got {type(entry).__name__}")
        kind = entry.get("allocator")
        if kind not in CONFIG_KEYS:
            raise _fail(source, index, f"unknown allocator {kind!r}; valid: "
                                       f"{', '.join(sorted(CONFIG_KEYS))}")
        valid = CONFIG_KEYS[kind]
        for key in entry:
            if key not in COMMON_KEYS and key not in valid:
                raise _fail(source, index, f"unknown key {key!r} for allocator {kind!r}; "
                                           f"valid: {', '.join(list(COMMON_KEYS) + sorted(valid))}")
        if "min_bytes" not in entry:
            raise _fail(source, index, "min_bytes is required")
        lo = _int(source, index, "min_bytes", entry["min_bytes"])
        hi = entry.get("max_bytes")
        if hi is not None:
            hi = _int(source, index, "max_bytes", hi, minimum=lo)
        settings = {}
        for key, (typ, default) in valid.items():
            value = entry.get(key, default)
            if typ is bool and not isinstance(value, bool):
                raise _fail(source, index, f"{key} must be true or false, got {value!r}")
            if typ is int and value is not None:
                value = _int(source, index, key, value, minimum=1 if key in (
                    "block_size", "chunk_size", "capacity") else 0)
            settings[key] = value
        allocator = _make_allocator(kind, settings, hi, source, index)
        classes.append(SizeClass(lo, hi, allocator))
    try:
        return router_cls(classes, name=name)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{source}: numpy.size_class: {e}") from None
