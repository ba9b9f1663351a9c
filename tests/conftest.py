"""Fixtures shared by the whole suite.

- ``kind`` / ``make``: one allocator of each family, built the same way in
  every test so that sizes which fit one fit all.
- ``cext``: tests/_cython/stress.pyx compiled against the .pxd files of the
  pgo being tested (the installed one, or the in-place build), the way a
  third-party Cython package would build against pgo.
- Every test ends with out-of-memory injection disarmed, so a test that
  fails half way cannot make a later one fail.
"""

import importlib
import os
import shlex
import shutil
import sys
import sysconfig
from pathlib import Path

import pytest

import pgo
from pgo._core import _memory

KINDS = ("stack", "linear", "arena", "slab", "mapped", "numa", "hierarchical", "compacting",
         "adaptive")

# Large enough for every generic test; the slab serves blocks of up to
# SLAB_BLOCK bytes.
CAPACITY = 1 << 16
SLAB_BLOCK = 1024


def new_allocator(kind, *, threadsafe=False):
    if kind == "stack":
        return pgo.StackAllocator(CAPACITY, threadsafe=threadsafe)
    if kind == "linear":
        return pgo.LinearAllocator(CAPACITY, threadsafe=threadsafe)
    if kind == "arena":
        return pgo.ArenaAllocator(CAPACITY // 4, threadsafe=threadsafe)
    if kind == "slab":
        return pgo.SlabAllocator(SLAB_BLOCK, slots_per_slab=16, threadsafe=threadsafe)
    if kind == "mapped":
        return pgo.MappedPool(CAPACITY, threadsafe=threadsafe)
    if kind == "numa":
        return pgo.NUMAAllocator(CAPACITY, threadsafe=threadsafe)
    if kind == "hierarchical":
        return pgo.HierarchicalAllocator(threadsafe=threadsafe)
    if kind == "compacting":
        return pgo.CompactingAllocator(threadsafe=threadsafe)
    if kind == "adaptive":
        return pgo.AdaptiveAllocator(64, threadsafe=threadsafe)
    raise AssertionError(kind)


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


@pytest.fixture
def make(kind):
    """A factory of fresh allocators of the parametrized kind."""
    def factory(**kwargs):
        return new_allocator(kind, **kwargs)
    return factory


@pytest.fixture(autouse=True)
def _disarm_oom():
    yield
    _memory._inject_oom(-1)


# -- the test extension -----------------------------------------------------

EXT_NAME = "_pgo_test_stress"
EXT_SOURCE = Path(__file__).parent / "_cython" / "stress.pyx"


def _compiler():
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    words = shlex.split(cc)
    return words[0] if words else "cc"


@pytest.fixture(scope="session")
def cext(tmp_path_factory):
    """The compiled test extension (a module), importable for the session.

    Skipped when there is no C compiler; any other build failure -- a .pxd
    that no longer compiles from outside pgo -- is an error, not a skip.
    """
    cc = _compiler()
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc!r} not found): cannot build {EXT_SOURCE.name}")
    cython_build = pytest.importorskip("Cython.Build", reason="Cython is needed to build the test extension")
    setuptools = pytest.importorskip("setuptools", reason="setuptools is needed to build the test extension")
    import numpy

    out = tmp_path_factory.mktemp("cext")
    source = out / f"{EXT_NAME}.pyx"
    shutil.copyfile(EXT_SOURCE, source)
    # The .pxd files next to the pgo that is imported, so the extension is
    # built against exactly the binary under test.
    pgo_root = Path(pgo.__file__).resolve().parent.parent
    ext = setuptools.Extension(
        EXT_NAME,
        [str(source)],
        include_dirs=[numpy.get_include()],
        # The .pxd hot paths are inlined here, so they must fill memory the
        # way the pgo build they run against does.
        define_macros=[("PGO_DEBUG_FILL", "1" if pgo.DEBUG_BUILD else "0")],
        extra_compile_args=["-O1"],
    )
    [ext] = cython_build.cythonize(
        [ext],
        include_path=[str(pgo_root)],
        compiler_directives={"language_level": 3},
        quiet=True,
        force=True,
    )
    dist = setuptools.Distribution({"name": EXT_NAME, "ext_modules": [ext]})
    cmd = dist.get_command_obj("build_ext")
    cmd.build_lib = str(out)
    cmd.build_temp = str(out / "tmp")
    cmd.ensure_finalized()
    cmd.run()

    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module(EXT_NAME)
    finally:
        sys.path.remove(str(out))


@pytest.fixture
def restore_gc():
    """Puts back what the GC policy and the runtime change: the thresholds,
    the frozen generation, an installed numpy handler."""
    import gc

    import pgo
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()
    pgo.uninstall()
