"""Per-site routing: while a named function runs, numpy's allocations go to
the allocator the config gives it (``[[site]] function = "mod:qualname"``),
with no change to the program's code.

How: the function's definition gets a decorator added when its module is
compiled (an AST transform, so line numbers and tracebacks stay the
program's own).  ``__main__`` (the script ``pgo run`` runs) is compiled by
the runner itself; other modules through an import hook that wraps the
source loader of the modules named in the config, and nothing else.  The
decorator sets numpy's handler to the allocator's around each call (as
``pgo.use(allocator)``): the cost is paid only by the routed functions'
calls, never by code that is not routed.

Generators and coroutines run after their call returns, so they cannot be
routed this way: they are left alone, and ``report()`` lists them.
"""

from __future__ import annotations

import ast
import functools
import importlib.abc
import importlib.machinery
import inspect
import sys
from types import CodeType
from typing import Any, Callable

from pgo._sizes import SMALL_BLOCK_BYTES

DECORATOR = "__pgo_route__"


class SiteRouter:
    """The ``[[site]]`` rules of one config: function -> allocator."""

    def __init__(self, rules: list[tuple[str, Any]], installed: Any = None) -> None:
        # "module:qualname" -> the allocator to enter while it runs
        self.rules: dict[str, Any] = dict(rules)
        # The process-wide Router (``[[numpy.size_class]]``), if any: a site
        # cache leaves it the sizes it serves.
        self.installed = installed
        self.by_module: dict[str, set[str]] = {}
        for fn in self.rules:
            module, _, qualname = fn.partition(":")
            self.by_module.setdefault(module, set()).add(qualname)
        self.routed: dict[str, int] = {fn: 0 for fn in self.rules}   # calls
        self.wrapped: set[str] = set()
        self.skipped: dict[str, str] = {}
        self._uses: dict[str, Any] = {}

    # -- the decorator the transformed code calls ------------------------------------

    def decorator(self, module: str, qualname: str) -> Callable[[Any], Any]:
        key = f"{module}:{qualname}"

        def decorate(fn: Any) -> Any:
            if inspect.isgeneratorfunction(fn) or inspect.iscoroutinefunction(fn) \
                    or inspect.isasyncgenfunction(fn):
                self.skipped[key] = "a generator or coroutine: it runs after the call returns"
                return fn
            capsule = self._capsule(key)
            counts = self.routed
            from pgo._core.numpy_bridge import swap_handler as swap

            # What pgo.use() does, without its stack of saved handlers: the
            # handler before the call stays in this frame (0.3 µs a call
            # against 0.85 µs for `with use`).
            @functools.wraps(fn)
            def routed(*args: Any, **kwargs: Any) -> Any:
                counts[key] += 1
                previous = swap(capsule)
                try:
                    return fn(*args, **kwargs)
                finally:
                    swap(previous)

            self.wrapped.add(key)
            return routed
        return decorate

    def _capsule(self, key: str) -> Any:
        u = self._uses.get(key)
        if u is None:
            from pgo._core.numpy_bridge import use
            target = self.rules[key]
            cache = sys.modules.get("pgo._core.cache")     # loaded if a rule made one
            if cache is not None and isinstance(target, cache.CacheAllocator):
                target = self._site_cache_router(target)
            u = self._uses[key] = use(target)
        return u.capsule

    def _site_cache_router(self, cache: Any) -> Any:
        """While the function runs, the sizes the process-wide router has
        classes for stay with them (a 48 MiB block keeps the big cache that
        was sized for it); the site's cache takes the range from 4 KiB (its
        smallest class is a page) up to the first of them.  Smaller requests
        keep the handler's per-thread small-block cache, as outside."""
        from pgo._core.numpy_bridge import Router, SizeClass
        classes = list(self.installed.size_classes) if self.installed is not None else []
        lo: int | None = SMALL_BLOCK_BYTES
        for sc in sorted(classes, key=lambda sc: sc.min_bytes):
            if lo is not None and sc.min_bytes <= lo and (sc.max_bytes is None
                                                          or sc.max_bytes >= lo):
                lo = None if sc.max_bytes is None else sc.max_bytes + 1
        if lo is not None:
            above = [sc.min_bytes for sc in classes if sc.min_bytes > lo]
            classes.append(SizeClass(lo, min(above) - 1 if above else None, cache))
        return Router(classes, name="pgo:site-cache")

    # -- compiling ---------------------------------------------------------------------

    def compile(self, source: str | bytes, filename: str, module: str) -> CodeType:
        """Compile a module's source with the routed functions decorated."""
        tree = ast.parse(source, filename)
        targets = self.by_module.get(module, set())
        if targets:
            _Decorate(module, targets).visit(tree)
            ast.fix_missing_locations(tree)
        return compile(tree, filename, "exec", dont_inherit=True)

    def install_import_hook(self) -> None:
        names = set(self.by_module) - {"__main__"}
        if names:
            sys.meta_path.insert(0, _Finder(self, names))

    def report(self) -> dict[str, Any]:
        return {"rules": sorted(self.rules), "wrapped": sorted(self.wrapped),
                "calls": dict(sorted(self.routed.items())),
                "not_found": sorted(set(self.rules) - self.wrapped - set(self.skipped)),
                "skipped": dict(sorted(self.skipped.items()))}


class _Decorate(ast.NodeTransformer):
    """Adds ``@__pgo_route__(module, qualname)`` to the targets, innermost
    (next to the function), so that staticmethod, classmethod, property
    and other decorators wrap the routed function as they wrapped it."""

    def __init__(self, module: str, targets: set[str]) -> None:
        self.module = module
        self.targets = targets
        self.scope: list[str] = []

    def _visit_def(self, node: Any) -> Any:
        qualname = ".".join(self.scope + [node.name])
        if qualname in self.targets:
            call = ast.Call(func=ast.Name(id=DECORATOR, ctx=ast.Load()),
                            args=[ast.Constant(self.module), ast.Constant(qualname)],
                            keywords=[])
            ast.copy_location(call, node)
            node.decorator_list.append(call)
        self.scope += [node.name, "<locals>"] if not isinstance(node, ast.ClassDef) \
            else [node.name]
        self.generic_visit(node)
        del self.scope[-(1 if isinstance(node, ast.ClassDef) else 2):]
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _visit_def


class _Loader(importlib.abc.Loader):
    def __init__(self, router: SiteRouter, inner: Any, name: str) -> None:
        self.router = router
        self.inner = inner
        self.name = name

    def create_module(self, spec: Any) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        source = self.inner.get_source(module.__name__)
        if source is None:              # no source (a .pyc-only or C module): as it is
            self.inner.exec_module(module)
            return
        module.__dict__[DECORATOR] = self.router.decorator
        code = self.router.compile(source, self.inner.get_filename(module.__name__), self.name)
        exec(code, module.__dict__)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, router: SiteRouter, names: set[str]) -> None:
        self.router = router
        self.names = names

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in self.names:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = getattr(finder, "find_spec", lambda *a: None)(fullname, path, target)
            if spec is not None:
                if isinstance(spec.loader, importlib.machinery.SourceFileLoader):
                    spec.loader = _Loader(self.router, spec.loader, fullname)
                return spec
        return None
