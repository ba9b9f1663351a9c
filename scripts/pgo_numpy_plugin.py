"""pytest plugin: run a test session with a pgo Router as numpy's global
data-memory handler.

Load it with ``-p pgo_numpy_plugin`` (its directory on PYTHONPATH); used by
``scripts/numpy_suite.py`` to run numpy's own test suite on pgo memory.

At ``pytest_configure`` it installs (``pgo.install``: this thread and every
thread started later) a Router with three size classes, so that all three
routed allocators serve numpy's arrays:

    1 B .. 1 KiB        SlabAllocator(1024, align=16, threadsafe=True)
    1 KiB+1 .. 1 MiB    ArenaAllocator(1 MiB chunks, threadsafe=True)
    > 1 MiB             CacheAllocator()

At ``pytest_unconfigure`` it writes one line to stdout::

    PGO_NUMPY_STATS {"router": {...}, "allocators": {...}, ...}

(JSON: ``router.stats()``, each allocator's ``stats()``, the handler numpy
reports at the end and the numpy/pgo versions), and the same JSON to the
file named by ``$PGO_NUMPY_STATS`` when that is set.
"""

import json
import os
import sys

STATS_PREFIX = "PGO_NUMPY_STATS "
ROUTER_NAME = "pgo-numpy-suite"

SLAB_MAX = 1024
ARENA_MAX = 1 << 20
ARENA_CHUNK = 1 << 20

_state = {}


def make_router():
    """The Router the plugin installs, and its allocators by route name."""
    import pgo

    slab = pgo.SlabAllocator(SLAB_MAX, align=16, threadsafe=True)
    arena = pgo.ArenaAllocator(ARENA_CHUNK, threadsafe=True)
    cache = pgo.CacheAllocator()
    router = pgo.Router(
        [
            pgo.SizeClass(1, SLAB_MAX, slab),
            pgo.SizeClass(SLAB_MAX + 1, ARENA_MAX, arena),
            pgo.SizeClass(ARENA_MAX + 1, None, cache),
        ],
        name=ROUTER_NAME,
    )
    return router, {"slab": slab, "arena": arena, "cache": cache}


def collect_stats():
    """The JSON-able stats of the installed router (None if not installed)."""
    if "router" not in _state:
        return None
    import numpy as np

    import pgo

    router = _state["router"]
    return {
        "router": router.stats(),
        "allocators": {name: a.stats() for name, a in _state["allocators"].items()},
        "installed_at_end": pgo.installed() is router,
        "handler_at_end": np._core.multiarray.get_handler_name(),
        "pgo_version": pgo.__version__,
        "pgo_file": pgo.__file__,
        "pgo_debug_build": bool(pgo.DEBUG_BUILD),
        "numpy_version": np.__version__,
    }


def pytest_configure(config):
    if "router" in _state:          # configured twice (pytester): keep the first
        return
    import pgo

    router, allocators = make_router()
    pgo.install(router)
    _state["router"] = router
    _state["allocators"] = allocators


def pytest_report_header(config):
    router = _state.get("router")
    if router is None:
        return None
    return f"pgo: {router!r} installed as numpy's data-memory handler"


def pytest_unconfigure(config):
    stats = collect_stats()
    if stats is None:
        return
    line = json.dumps(stats, sort_keys=True, default=str)
    path = os.environ.get("PGO_NUMPY_STATS")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            f.write(line + "\n")
    sys.stdout.write(STATS_PREFIX + line + "\n")
    sys.stdout.flush()
