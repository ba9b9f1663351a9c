"""The allocators a config names, made from its already-checked rules.

``pgo.config`` checks every key, type and size when it reads a config (or
``Router.from_config``'s tables); what can still fail here is the machine:
an allocator that cannot be made (a capacity it cannot map, ranges the
Router refuses).  That is a ``ConfigError`` naming the rule too.

Importing this module gives ``Router.from_config`` its reader (``_core``
does not know the config format); ``pgo.Router`` comes from here for that.
"""

from __future__ import annotations

from typing import Any

from pgo._core.numpy_bridge import Router, SizeClass, set_config_reader
from pgo._errors import ConfigError
from pgo.config import SiteRule, SizeClassRule, size_classes

# config key -> the allocator class's argument, where they differ
_ARGUMENT = {"limit_bytes": "max_bytes"}


def make(rule: SizeClassRule | SiteRule, where: str) -> Any:
    """The allocator of one rule; ``where`` names the rule in an error."""
    kwargs = {_ARGUMENT.get(k, k): v for k, v in rule.settings}
    kind = rule.allocator
    # Each kind's module only when a config uses it: `pgo run` pays its
    # imports before the program starts.
    try:
        if kind == "cache":
            from pgo._core.cache import CacheAllocator
            return CacheAllocator(**kwargs)
        if kind == "slab":
            from pgo._core.slab import SlabAllocator
            # The config reader made sure one of the two is there.
            block = kwargs.pop("block_size", None)
            if block is None:
                assert isinstance(rule, SizeClassRule) and rule.max_bytes is not None
                block = rule.max_bytes
            return SlabAllocator(block, align=16 if block < 16 else None, threadsafe=True,
                                 **kwargs)
        if kind == "arena":
            from pgo._core.arena import ArenaAllocator
            return ArenaAllocator(threadsafe=True, **kwargs)
        if kind == "mapped":
            from pgo._core.mapped import MappedPool
            return MappedPool(threadsafe=True, **kwargs)
        if kind == "hierarchical":
            from pgo._core.hier import HierarchicalAllocator
            return HierarchicalAllocator(**kwargs)
        if kind == "compacting":
            from pgo._core.compact import CompactingAllocator
            return _compact_when_fragmented(CompactingAllocator(threadsafe=True, **kwargs))
        if kind == "adaptive":
            from pgo._core.adaptive import AdaptiveAllocator
            return AdaptiveAllocator(threadsafe=True, **kwargs)
        if kind == "numa":
            from pgo._core.numa import NUMAAllocator
            return NUMAAllocator(threadsafe=True, **kwargs)
        if kind == "linear":
            from pgo._core.linear import LinearAllocator
            return LinearAllocator(threadsafe=True, **kwargs)
        from pgo._core.stack import StackAllocator
        return StackAllocator(threadsafe=True, **kwargs)
    except (ValueError, MemoryError, OverflowError) as e:
        raise ConfigError(f"{where}: cannot make the {kind} allocator: {e}") from None


# The least time between two compactions `pgo run` starts by itself.
COMPACT_INTERVAL_S = 1.0


def single_threaded() -> bool:
    """Whether the program runs one Python thread (then, with the GIL held,
    nothing else writes into its arrays)."""
    import threading
    return threading.active_count() == 1


def _compact_when_fragmented(allocator: Any) -> Any:
    """``allocator``, compacted after a garbage collection when its resident
    bytes exceed its ``fragmentation_percent`` of the live ones, at most once
    a second, and only while the program has one thread: compaction copies
    live blocks, so no other thread may be writing into them (a collection
    is where the program is in no allocator call).  The callback holds the
    allocator weakly."""
    import gc
    import time
    import weakref

    ref = weakref.ref(allocator)
    last = [-COMPACT_INTERVAL_S]          # the first collection may compact at once

    def on_gc(phase: str, info: dict[str, int]) -> None:
        a = ref()
        if a is None:
            gc.callbacks.remove(on_gc)
            return
        now = time.monotonic()
        if phase == "stop" and now - last[0] >= COMPACT_INTERVAL_S and single_threaded():
            last[0] = now
            a.maybe_compact()

    gc.callbacks.append(on_gc)
    return allocator


def router(rules: tuple[SizeClassRule, ...], *, source: str = "<config>", name: str = "pgo",
           cls: type[Router] = Router) -> Router:
    """A Router of ``rules`` (``[[numpy.size_class]]``), one allocator each."""
    classes = [SizeClass(r.min_bytes, r.max_bytes, make(r, f"{source}: numpy.size_class[{i}]"))
               for i, r in enumerate(rules)]
    try:
        return cls(classes, name=name)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{source}: numpy.size_class: {e}") from None


def _from_config(cls: type[Router], entries: Any, *, source: str, name: str) -> Router:
    return router(size_classes(entries, source), source=source, name=name, cls=cls)


set_config_reader(_from_config)
