"""Applying a pgo config inside the running process: the GC plan, numpy's
router (``[[numpy.size_class]]``), per-site routing (``[[site]]``).

``pgo run`` applies it in the target's process before the target's code
runs; ``pgo.runtime.apply("pgo.toml")`` does the same from inside a
program (one line at the top of ``main``).  The runtime only reads configs
and installs things: it never imports the profiler or the analysis.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import TYPE_CHECKING, Any

from pgo import config as cfgmod
from pgo.config import Config
from pgo.runtime.gc_policy import GCPolicy

if TYPE_CHECKING:
    from pgo.runtime.sites import SiteRouter

# `pgo run` pays for every import here before the program starts (and a
# bench's config arm does, in its measured time): what only some configs
# need (the site router, inspect) is imported by those.

__all__ = ["Runtime", "apply", "active"]

_active: Runtime | None = None


def active() -> Runtime | None:
    """The config applied in this process, if any."""
    return _active


class Runtime:
    """One applied config: ``start()`` puts it in place, ``stats()`` says
    what it did, ``stop()`` takes it back (GC settings, the router, the
    import hook's future imports)."""

    def __init__(self, cfg: Config, source: str = "<config>") -> None:
        self.config = cfg
        self.source = source
        self.gc: GCPolicy | None = GCPolicy(cfg.gc, source) if cfg.gc is not None else None
        self.router: Any = None
        self.sites: SiteRouter | None = None
        self.warnings: list[str] = []

    def start(self, mismatched: list[str] | None = None) -> Runtime:
        cfg = self.config
        for msg in mismatched or []:
            self.warnings.append(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
        if cfg.size_classes or cfg.sites:
            # Only for a config that routes: it loads the compiled core.
            from pgo.runtime import allocators
        if cfg.size_classes:
            from pgo._core.numpy_bridge import install
            self.router = allocators.router(cfg.size_classes, source=self.source, name="pgo-run")
            install(self.router)
        if cfg.sites:
            from pgo.runtime.sites import SiteRouter
            self.sites = SiteRouter([(s.function, allocators.make(s, f"{self.source}: site[{i}]"))
                                     for i, s in enumerate(cfg.sites)], self.router)
            self.sites.install_import_hook()
            self._wrap_loaded()
        if self.gc is not None:
            self.gc.start()
        return self

    def _wrap_loaded(self) -> None:
        # Modules already imported (pgo.apply() called from a running
        # program): their functions are replaced in place.
        import inspect
        assert self.sites is not None
        for module, qualnames in self.sites.by_module.items():
            mod = sys.modules.get(module)
            if mod is None:
                continue
            for qualname in sorted(qualnames):
                parts = qualname.split(".")
                if "<locals>" in parts:
                    continue
                owner: Any = mod
                for p in parts[:-1]:
                    owner = getattr(owner, p, None)
                if owner is None:
                    continue
                raw = inspect.getattr_static(owner, parts[-1], None)
                kind = type(raw) if isinstance(raw, (staticmethod, classmethod)) else None
                fn = raw.__func__ if kind is not None else raw
                if callable(fn):
                    wrapped = self.sites.decorator(module, qualname)(fn)
                    setattr(owner, parts[-1], kind(wrapped) if kind is not None else wrapped)

    def unmatched_sites(self) -> list[str]:
        """The ``[[site]]`` rules that routed nothing, each with why: its
        module was never imported, it has no such function, or the function
        cannot be routed (a generator)."""
        if self.sites is None:
            return []
        report = self.sites.report()
        out = []
        for rule in report["not_found"]:
            module, _, qualname = rule.partition(":")
            why = (f"module {module} has no function {qualname} (or its def never ran)"
                   if module in sys.modules else f"module {module} was never imported")
            out.append(f"{self.source}: [[site]] {rule} routed nothing: {why}")
        for rule, why in report["skipped"].items():
            out.append(f"{self.source}: [[site]] {rule} routed nothing: {why}")
        return out

    def compiler(self) -> Any:
        """For the runner: compiles ``__main__`` with its routed functions
        decorated (None when no rule names ``__main__``)."""
        if self.sites is None or "__main__" not in self.sites.by_module:
            return None
        sites = self.sites
        return lambda source, filename: sites.compile(source, filename, "__main__")

    def init_globals(self) -> dict[str, Any]:
        if self.sites is None:
            return {}
        from pgo.runtime.sites import DECORATOR
        return {DECORATOR: self.sites.decorator}

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"config": self.source, "python": _python_version(),
                               "warnings": list(self.warnings)}
        if self.gc is not None:
            out["gc"] = self.gc.stats()
        if self.router is not None:
            st = self.router.stats()
            st["allocators"] = [sc.allocator.stats() for sc in self.router.size_classes]
            out["numpy"] = st
        if self.sites is not None:
            out["sites"] = self.sites.report()
            out["sites"]["allocators"] = {
                fn: a.stats() for fn, a in sorted(self.sites.rules.items())}
        return out

    def stop(self) -> None:
        global _active
        if self.gc is not None:
            self.gc.stop()
        if self.router is not None:
            from pgo._core.numpy_bridge import installed, uninstall
            if installed() is self.router:
                uninstall()
        if _active is self:
            _active = None


def apply(config: Config | str | os.PathLike[str], *, stats: str | None = None,
          program: dict[str, str] | None = None, strict: bool = False) -> Runtime:
    """Apply a config (a path or a ``pgo.config.Config``) to this process
    now: GC, numpy's router, per-site routing (functions of modules already
    imported are replaced in place; modules imported later are compiled
    with their routed functions decorated).  ``stats``: a JSON file to
    write the runtime's statistics to at exit.

    A config made for another program (``program``: ``Target.identity()``
    of what runs; by default ``__main__``'s file), another version of it,
    another Python or numpy is a RuntimeWarning, or with ``strict`` a
    ConfigError before anything is applied.

    Raises:
        pgo.ConfigError: the config is invalid (nothing has been applied).
    """
    global _active
    if isinstance(config, Config):
        cfg, source = config, "<config>"
    else:
        cfg, source = cfgmod.load(config), os.fspath(config)
    mismatched = mismatches(cfg, source, program if program is not None else _main_identity())
    if strict and mismatched:
        raise cfgmod.ConfigError("; ".join(mismatched) + " (strict: nothing applied)")
    # Made (and so checked) before the active one is taken back: a config
    # refused here leaves the process as it was.
    runtime = Runtime(cfg, source)
    if _active is not None:
        _active.stop()
    runtime.start(mismatched)
    _active = runtime
    if stats:
        import atexit
        atexit.register(write_stats, runtime, stats)
    return runtime


def mismatches(cfg: Config, source: str, program: dict[str, str] | None) -> list[str]:
    """Why ``cfg`` may not fit what runs here: another program (or its
    source changed since the profile), another Python, another numpy.  A
    config that does not say (written by hand, or from an older pgo) is
    not compared."""
    out = []
    if program and cfg.program:
        if program.get("program") != cfg.program:
            out.append(f"{source} was made for {cfg.program}, not {program.get('program')}: its "
                       f"rules describe another program's allocations")
        elif cfg.program_sha256 and program.get("program_sha256") and \
                program["program_sha256"] != cfg.program_sha256:
            out.append(f"{cfg.program} has changed since it was profiled for {source}: profile "
                       f"it again if its allocations changed")
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if cfg.python and ".".join(cfg.python.split(".")[:2]) != here:
        out.append(f"{source}: the GC plan was made for Python {cfg.python}, this is "
                   f"{_python_version()}: its thresholds may not fit")
    if cfg.numpy and (cfg.size_classes or cfg.sites):
        import numpy                    # the router needs it anyway
        if cfg.numpy.split(".")[:2] != numpy.__version__.split(".")[:2]:
            out.append(f"{source}: the numpy rules were made with numpy {cfg.numpy}, this is "
                       f"{numpy.__version__}")
    return out


def _main_identity() -> dict[str, str] | None:
    # pgo.runtime.apply() called from a program's own code: __main__ is it
    # (a script, or the module `python -m` ran).
    from pgo._target import Target
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return Target("module", spec.name.removesuffix(".__main__"), [], []).identity()
    path = getattr(main, "__file__", None)
    if not path or not os.path.isfile(path):
        return None
    return Target("script", path, [], []).identity()


def write_stats(runtime: Runtime, path: str) -> None:
    import json
    data = runtime.stats()
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(data, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def _python_version() -> str:
    # platform.python_version() without importing platform (1.3 ms).
    v = sys.version_info
    return f"{v.major}.{v.minor}.{v.micro}" + ("" if v.releaselevel == "final" else
                                              f"{v.releaselevel[0]}{v.serial}")
