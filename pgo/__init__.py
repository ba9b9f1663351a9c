"""pgo: profile-guided memory and GC optimization for Python.

The allocators (stack, linear, arena, slab, cache, mapped, numa,
hierarchical, compacting, adaptive) are Cython over memory from the system; they hand out Blocks
(buffer objects) and numpy arrays, and serve numpy's own allocations as its
data-memory handler (use, install, Router).

Names are imported on first use: ``import pgo`` alone loads neither numpy
nor the Cython core, so that ``pgo profile`` / ``pgo run`` start a target
without adding numpy's objects to a program that never imports it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pgo._errors import (
    AllocatorError,
    ConfigError,
    PgoError,
    PoolError,
    ProfileFormatError,
    ProfilerError,
)
from pgo._version import __version__

if TYPE_CHECKING:
    from pgo._core._base import DEBUG_BUILD, Allocator, Block
    from pgo._core.adaptive import AdaptiveAllocator
    from pgo._core.arena import ArenaAllocator
    from pgo._core.cache import CacheAllocator
    from pgo._core.compact import CompactingAllocator
    from pgo._core.containers import IntMap, StringBuilder, Vector
    from pgo._core.hier import HierarchicalAllocator
    from pgo._core.linear import LinearAllocator
    from pgo._core.mapped import MappedPool
    from pgo._core.numa import NUMAAllocator
    from pgo._core.numpy_bridge import (
        Router,
        SizeClass,
        current_handler,
        handler_name,
        install,
        installed,
        owner,
        uninstall,
        use,
    )
    from pgo._core.slab import SlabAllocator
    from pgo._core.stack import StackAllocator, StackFrame
    from pgo.analysis.optimizer import ProfileGuidedOptimizer
    from pgo.pools import BufferPool, ObjectPool

_LAZY = {
    "pgo._core._base": ("DEBUG_BUILD", "Allocator", "Block"),
    "pgo._core.adaptive": ("AdaptiveAllocator",),
    "pgo._core.arena": ("ArenaAllocator",),
    "pgo._core.cache": ("CacheAllocator",),
    "pgo._core.compact": ("CompactingAllocator",),
    "pgo._core.containers": ("IntMap", "StringBuilder", "Vector"),
    "pgo._core.hier": ("HierarchicalAllocator",),
    "pgo._core.linear": ("LinearAllocator",),
    "pgo._core.mapped": ("MappedPool",),
    "pgo._core.numa": ("NUMAAllocator",),
    "pgo._core.numpy_bridge": ("SizeClass", "current_handler", "handler_name", "install",
                               "installed", "owner", "uninstall", "use"),
    "pgo._core.slab": ("SlabAllocator",),
    "pgo._core.stack": ("StackAllocator", "StackFrame"),
    "pgo.analysis.optimizer": ("ProfileGuidedOptimizer",),
    "pgo.pools": ("BufferPool", "ObjectPool"),
    # The C class; importing it from here gives Router.from_config the
    # config reader (_core does not know the format).
    "pgo.runtime.allocators": ("Router",),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

# A literal list: type checkers read it to know what pgo exports.
__all__ = [
    "AdaptiveAllocator", "Allocator", "AllocatorError", "ArenaAllocator", "Block", "BufferPool",
    "CacheAllocator", "CompactingAllocator", "ConfigError", "DEBUG_BUILD", "HierarchicalAllocator",
    "IntMap", "LinearAllocator", "MappedPool", "NUMAAllocator", "ObjectPool", "PgoError",
    "PoolError", "ProfileFormatError", "ProfileGuidedOptimizer", "ProfilerError", "Router",
    "SizeClass", "SlabAllocator", "StackAllocator", "StackFrame", "StringBuilder", "Vector",
    "__version__", "current_handler", "handler_name", "install", "installed", "owner", "uninstall",
    "use",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'pgo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
