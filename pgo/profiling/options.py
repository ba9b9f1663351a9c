"""What ``pgo profile`` collects (no numpy here: the launcher's process
imports this without loading what the profiled process will)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# --follow-children: the environment that tells a Python child process to
# profile itself (read by profiling/_hook/sitecustomize.py), and the one
# that tells the first child (which profiles itself already) not to.
FOLLOW_ENV = "PGO_PROFILE_FOLLOW"
SKIP_ENV = "PGO_PROFILE_FOLLOW_SKIP"


@dataclass
class Options:
    """What to collect; the CLI's flags map onto these."""

    tracemalloc: bool = False
    nframes: int = 1                  # frames per tracemalloc traceback
    snapshot_interval: float = 0.25   # seconds between snapshots, at least
    snapshot_budget: float = 0.05     # share of wall time snapshots may take
    events: bool = True
    max_events: int = 1_000_000
    objects: bool = True
    sample_bytes: int = 32768         # mean bytes allocated between object samples
    objects_max_events: int = 1_000_000
    gc: bool = True
    follow_children: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Options:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
