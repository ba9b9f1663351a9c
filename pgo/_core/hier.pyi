from pgo._core._base import Allocator

BATCH: dict[int, int]
CLASS_SIZES: tuple[int, ...]

class HierarchicalAllocator(Allocator):
    def __init__(self, max_bytes: int = 0, *, threadsafe: bool = True) -> None: ...
    def flush_thread(self) -> None: ...
    @staticmethod
    def class_size(nbytes: int, align: int = 16) -> int: ...
