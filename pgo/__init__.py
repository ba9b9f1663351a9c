"""pgo: profile-guided memory and GC optimization for Python.

The allocators (stack, linear, arena, slab, cache) are Cython over malloc'd
blocks; they hand out Blocks (buffer objects) and numpy arrays, and serve
numpy's own allocations as its data-memory handler (use, install, Router).
"""

from pgo._core._base import DEBUG_BUILD, Allocator, Block
from pgo._core.arena import ArenaAllocator
from pgo._core.cache import CacheAllocator
from pgo._core.containers import IntMap, StringBuilder, Vector
from pgo._core.linear import LinearAllocator
from pgo._core.numpy_bridge import (
    Router, SizeClass, current_handler, handler_name, install, installed, owner, uninstall,
    use,
)
from pgo._core.slab import SlabAllocator
from pgo._core.stack import StackAllocator, StackFrame
from pgo._errors import (
    AllocatorError, ConfigError, PgoError, PoolError, ProfileFormatError, ProfilerError,
)
from pgo._version import __version__
from pgo.pools import BufferPool, ObjectPool

__all__ = [
    "Allocator",
    "ArenaAllocator",
    "AllocatorError",
    "Block",
    "BufferPool",
    "CacheAllocator",
    "ConfigError",
    "IntMap",
    "DEBUG_BUILD",
    "LinearAllocator",
    "ObjectPool",
    "PgoError",
    "PoolError",
    "ProfileFormatError",
    "ProfilerError",
    "Router",
    "SizeClass",
    "SlabAllocator",
    "StackAllocator",
    "StackFrame",
    "StringBuilder",
    "Vector",
    "__version__",
    "current_handler",
    "handler_name",
    "install",
    "installed",
    "owner",
    "uninstall",
    "use",
    "ProfileGuidedOptimizer",
]


def __getattr__(name: str) -> type:
    # The analysis imports scipy: only when it is asked for.
    if name == "ProfileGuidedOptimizer":
        from pgo.analysis.optimizer import ProfileGuidedOptimizer
        return ProfileGuidedOptimizer
    raise AttributeError(f"module 'pgo' has no attribute {name!r}")
