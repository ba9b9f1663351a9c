"""Expand ``benchmarks/c_level.pyx.tp``, compile it at run time, import it.

``c_level.pyx.tp`` is a Tempita template (``Cython.Tempita``, as
scikit-learn's ``.pyx.tp`` files): one kernel per pattern, expanded per
allocator.  The expanded ``c_level.pyx`` cimports pgo's ``.pxd`` files, so
the hot paths of the allocators are inlined into its loops exactly as they
would be in a user's Cython code.  It is written to
``benchmarks/build/<key>/`` (ignored by git) and built there with Cython +
setuptools, ``-O2`` and numpy's include directory.  ``<key>`` hashes
everything the result depends on: the template, pgo's ``.pxd`` files and
the C headers they include, the Cython (and so Tempita), Python and numpy
versions and the flags.  An unchanged tree reuses the last build.

Usage from code::

    from build import load_c_level
    c_level = load_c_level()          # imports pgo._core.* as a side effect

or ``python3 benchmarks/build.py`` to build (and report where) only; the
expanded ``c_level.pyx`` is beside the ``.so`` it prints.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TEMPLATE = HERE / "c_level.pyx.tp"
BUILD_ROOT = HERE / "build"
MODULE = "c_level"

EXTRA_COMPILE_ARGS = ["-O2"]
# Extra C flags for experiments (e.g. "-O3" or "--param max-inline-insns-single=400"
# to see what inlining changes); appended after -O2.  Empty by default.
ENV_CFLAGS = "PGO_BENCH_CFLAGS"


def compile_args() -> list[str]:
    return EXTRA_COMPILE_ARGS + os.environ.get(ENV_CFLAGS, "").split()


DEFINE_MACROS = [("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")]
DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
}


def _ensure_root_on_path() -> None:
    # c_level imports pgo._core.{stack,linear,arena,slab} at import time
    # (their types and the non-inline C functions it calls).
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def build_key() -> str:
    import Cython
    import numpy

    h = hashlib.sha256()
    h.update(TEMPLATE.read_bytes())
    core = ROOT / "pgo" / "_core"
    # Every .pxd the template cimports, and the C headers their extern
    # blocks include (pgo/_core/_c/*.h): an edit to any gives a fresh build.
    for dep in sorted([*core.rglob("*.pxd"), *core.rglob("*.h")]):
        h.update(dep.relative_to(core).as_posix().encode())
        h.update(dep.read_bytes())
    h.update(repr((Cython.__version__, numpy.__version__, sys.version, compile_args(),
                   DEFINE_MACROS, sorted(DIRECTIVES.items()),
                   sysconfig.get_config_var("EXT_SUFFIX"))).encode())
    return h.hexdigest()[:16]


def _find_built(out: Path) -> Path | None:
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    path = out / f"{MODULE}{suffix}"
    return path if path.exists() else None


def generate(out: Path) -> Path:
    """Expand the template into ``out/c_level.pyx`` and return its path."""
    from Cython import Tempita

    template = Tempita.Template(TEMPLATE.read_text(), name=TEMPLATE.name)
    pyx = out / f"{MODULE}.pyx"
    pyx.write_text(template.substitute())
    return pyx


def build(force: bool = False, verbose: bool = False) -> Path:
    """Build c_level (unless an up-to-date build exists) and return the .so path."""
    import numpy
    from Cython.Build import cythonize
    from setuptools import Distribution, Extension

    out = BUILD_ROOT / build_key()
    built = None if force else _find_built(out)
    if built is not None:
        return built
    out.mkdir(parents=True, exist_ok=True)
    source = generate(out)
    tmp = out / "tmp"
    ext = Extension(
        MODULE,
        [str(source)],
        include_dirs=[numpy.get_include()],
        define_macros=DEFINE_MACROS,
        extra_compile_args=compile_args(),
    )
    # The generated .c goes under the build too.
    exts = cythonize(
        [ext],
        include_path=[str(ROOT)],
        compiler_directives=DIRECTIVES,
        build_dir=str(out / "c"),
        quiet=not verbose,
        force=True,
    )
    dist = Distribution({"ext_modules": exts, "script_name": "build.py"})
    cmd = dist.get_command_obj("build_ext")
    cmd.build_lib = str(out)
    cmd.build_temp = str(tmp)
    cmd.inplace = False
    cmd.force = True
    cmd.ensure_finalized()
    if not verbose:
        # setuptools/distutils log through `distutils.log` or logging; quiet both.
        os.environ.setdefault("DISTUTILS_DEBUG", "")
    cmd.run()
    built = _find_built(out)
    if built is None:
        raise RuntimeError(f"build of {source} finished but no {MODULE} extension in {out}")
    return built


def load_c_level(force: bool = False, verbose: bool = False):
    """Build if needed and import the c_level extension module."""
    _ensure_root_on_path()
    path = build(force=force, verbose=verbose)
    spec = importlib.util.spec_from_file_location(MODULE, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def generated_c_path() -> Path | None:
    """Where the generated C of the current build lives (to inspect inlining)."""
    found = sorted((BUILD_ROOT / build_key() / "c").rglob(f"{MODULE}.c"))
    return found[0] if found else None


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    _ensure_root_on_path()
    print(build(force=args.force, verbose=args.verbose))
