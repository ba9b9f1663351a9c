from typing import Any, Iterable

HEADER_SIZE: int
RECORD_SIZE: int
BLOCK_RECORDS: int
MAX_LEVEL: int
KINDS: dict[int, str]

def start(
    numpy_path: str | None = None,
    *,
    objects_path: str | None = None,
    max_events: int = 1000000,
    objects_max_events: int = 1000000,
    sample_bytes: int = 32768,
    exclude: Iterable[str] = (),
    seed: int = 0x5EED,
) -> None: ...
def flush() -> None: ...
def sites() -> list[tuple[int, str | None, str, str, int]]: ...
def stats() -> dict[str, Any]: ...
def running() -> bool: ...
def stop() -> dict[str, Any]: ...
def abandon_after_fork() -> None: ...
