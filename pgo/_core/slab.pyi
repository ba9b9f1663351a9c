from pgo._core._base import Allocator

class SlabAllocator(Allocator):
    def __init__(
        self,
        block_size: int = 64,
        *,
        align: int | None = None,
        slots_per_slab: int = 0,
        max_bytes: int = 0,
        threadsafe: bool = False,
    ) -> None: ...
    @property
    def block_size(self) -> int: ...
    @property
    def align(self) -> int: ...
