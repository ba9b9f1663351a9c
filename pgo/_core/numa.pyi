import os
from collections.abc import Iterable, Mapping

import numpy.typing as npt

from pgo._core._base import Allocator, Block

MAX_NODE_ID: int
MAX_POOLS: int

def numa_available() -> bool: ...

class Topology:
    cpus_of: dict[int, list[int]]
    memory_nodes: list[int]
    distance: dict[tuple[int, int], int]
    def __init__(
        self,
        cpus_of: Mapping[int, Iterable[int]],
        memory_nodes: Iterable[int],
        distance: Mapping[tuple[int, int], int] | None = None,
    ) -> None: ...
    @classmethod
    def read(cls, root: str | os.PathLike[str] = "/sys/devices/system/node") -> Topology: ...
    def node_of_cpu(self, cpu: int) -> int | None: ...
    def nearest(self, node: int, among: Iterable[int] | None = None) -> list[int]: ...
    def home(self, cpu: int) -> int: ...
    def cpu_count(self) -> int: ...

class NUMAAllocator(Allocator):
    def __init__(
        self,
        capacity: int = 0,
        *,
        node: int | None = None,
        huge_pages: bool = False,
        threadsafe: bool = True,
        topology: Topology | None = None,
    ) -> None: ...
    @property
    def nodes(self) -> tuple[int, ...]: ...
    @property
    def topology(self) -> Topology: ...
    @property
    def fallback(self) -> str: ...
    def home_node(self) -> int: ...
    def nodes_of(self, obj: Block | npt.ArrayLike) -> dict[int | None, int]: ...
