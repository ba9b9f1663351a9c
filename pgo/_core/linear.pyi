from pgo._core._base import Allocator

class LinearAllocator(Allocator):
    def __init__(self, capacity: int = 1048576, *, threadsafe: bool = False) -> None: ...
