from typing import Any, Literal

from pgo._core._base import Allocator

_Backend = Literal["system", "slab", "arena", "cache"]

BACKENDS: tuple[_Backend, ...]
THRESHOLDS: dict[str, float | int]
MIN_WINDOW: int
MAX_ALIGN: int
SLAB_MAX_BYTES: int
ARENA_MAX_BYTES: int
CACHE_MAX_BYTES: int
SEGMENT_BYTES: int
PHASES: tuple[_Backend, ...]

class AdaptiveAllocator(Allocator):
    def __init__(
        self,
        window: int = 4096,
        *,
        max_bytes: int = 0,
        fixed: _Backend | None = None,
        threadsafe: bool = False,
    ) -> None: ...
    @property
    def backend(self) -> _Backend: ...
    @property
    def window(self) -> int: ...
    @property
    def align(self) -> int: ...
    @property
    def fixed(self) -> _Backend | None: ...
    @property
    def max_bytes(self) -> int: ...
    def _free_address(self, address: int) -> None: ...
    def _c_alloc_address(self, nbytes: int) -> int: ...
    def _c_calloc_address(self, count: int, size: int) -> int: ...

def _run_phases(
    a: AdaptiveAllocator | None, ops: int = 100000, seed: int = 1, phases: tuple[str, ...] = ...
) -> dict[str, Any]: ...
