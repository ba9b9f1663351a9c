from pgo._core._base import Allocator

BURST_SCAN_BLOCKS: int
BORROW_CLASSES_UP: int
COLOUR_STEP_BYTES: int
COLOURS: int

class CacheAllocator(Allocator):
    def __init__(
        self,
        max_cached_bytes: int = 536870912,
        *,
        hugepages: bool = True,
        prefault: bool = False,
        headroom_percent: int | None = None,
        reuse_window: int = 0,
    ) -> None: ...
    def trim(self) -> int: ...
    @staticmethod
    def class_size(nbytes: int) -> int: ...
    @property
    def max_cached_bytes(self) -> int: ...
    @property
    def headroom_percent(self) -> int | None: ...
    @property
    def reuse_window(self) -> int: ...
