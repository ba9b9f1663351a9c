from pgo._core._base import Allocator

class ArenaAllocator(Allocator):
    def __init__(self, chunk_size: int = 1048576, max_bytes: int = 0, *, threadsafe: bool = False) -> None: ...
