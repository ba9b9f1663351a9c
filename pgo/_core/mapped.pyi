import os

import numpy as np
import numpy.typing as npt

from pgo._core._base import Allocator, Block

MAX_CAPACITY: int

class MappedPool(Allocator):
    def __init__(
        self,
        capacity: int = 0,
        *,
        shared: bool = False,
        path: str | os.PathLike[str] | None = None,
        populate: bool = False,
        huge_pages: bool = False,
        threadsafe: bool = False,
        attach: str | None = None,
    ) -> None: ...
    @staticmethod
    def attach(
        name: str | os.PathLike[str], *, populate: bool = False, threadsafe: bool = False
    ) -> MappedPool: ...
    @property
    def name(self) -> str: ...
    @property
    def mode(self) -> str: ...
    @property
    def attached(self) -> bool: ...
    def offset(self, obj: Block | npt.ArrayLike) -> int: ...
    def view(
        self, offset: int, shape: int | tuple[int, ...], dtype: npt.DTypeLike = ...,
        order: str = "C",
    ) -> np.ndarray: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def unlink(self) -> None: ...
    def trim(self) -> int: ...
