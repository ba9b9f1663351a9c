"""Exceptions raised by pgo.  Every one derives from PgoError."""

__all__ = ["PgoError", "AllocatorError", "CommandError", "ConfigError", "PoolError",
           "ProfileFormatError", "ProfilerError"]


class PgoError(Exception):
    """Base of every error pgo raises on purpose."""


class AllocatorError(PgoError):
    """An allocator was misused: double free, a foreign block, a free out of
    order, a reset while memory is still in use.  The allocator is unchanged
    and still usable after it is raised."""


class ConfigError(PgoError):
    """A configuration file is invalid."""


class ProfileFormatError(PgoError):
    """A profile file is corrupt, truncated or of an unknown format."""


class PoolError(PgoError):
    """A pool was misused: a buffer or object given back twice, or one the
    pool did not hand out.  The pool is unchanged."""


class ProfilerError(PgoError):
    """The profiler cannot start: another one is running in this process,
    or the target to profile cannot be found."""


class CommandError(PgoError):
    """A ``pgo`` command failed in a way the user can fix; carries the exit
    code ``pgo`` returns (only ``pgo.commands.main`` prints it)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
