"""Build the Cython core.

Set ``PGO_TEST_BUILD=1`` to build the test flavour: Cython bounds, wraparound
and overflow checks on, ``NDEBUG`` undefined (C asserts live) and every block
filled with 0xA5 when handed out and 0x5A when freed, so that a read of freed
memory shows up as a pattern rather than as plausible data.

Set ``PGO_ONLY_MODULES=compact,adaptive`` (names from ``MODULES``) to build
just those while working on them: the others keep the .so files they have.
"""

import glob
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MODULES = ["_memory", "_base", "stack", "linear", "arena", "slab", "cache", "mapped", "numa",
           "hier", "compact", "adaptive", "_handler_hook", "numpy_bridge", "containers", "recorder"]

# pgo's hand-written C: the headers (each declared for Cython by the .pxd of
# the same name) and the .c sources linked into the modules that need them.
# A .c with state of its own is linked into one module only.
C_DIR = "pgo/_core/_c"
C_SOURCES = {
    "_base": ["pgo_fork.c"],
    "numpy_bridge": ["pgo_sys_path.c"],
    "recorder": ["pgo_hash.c", "pgo_trace.c", "pgo_sites.c", "pgo_rec_handler.c",
                 "pgo_objsampler.c"],
}
HEADERS = sorted(glob.glob(f"{C_DIR}/*.h"))

TEST_BUILD = os.environ.get("PGO_TEST_BUILD", "") not in ("", "0")

COMPILER_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "embedsignature": True,
}
DEFINE_MACROS = [("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")]
UNDEF_MACROS = []
EXTRA_COMPILE_ARGS = ["-O2"]

if TEST_BUILD:
    COMPILER_DIRECTIVES.update(boundscheck=True, wraparound=True, overflowcheck=True)
    DEFINE_MACROS.append(("PGO_DEBUG_FILL", "1"))
    UNDEF_MACROS.append("NDEBUG")
    EXTRA_COMPILE_ARGS = ["-O1", "-g"]

extensions = [
    Extension(
        f"pgo._core.{name}",
        [f"pgo/_core/{name}.pyx"] + [f"{C_DIR}/{c}" for c in C_SOURCES.get(name, [])],
        include_dirs=[numpy.get_include(), C_DIR],
        depends=HEADERS,
        define_macros=DEFINE_MACROS,
        undef_macros=UNDEF_MACROS,
        extra_compile_args=EXTRA_COMPILE_ARGS,
    )
    for name in MODULES
    if not os.environ.get("PGO_ONLY_MODULES")
    or name in os.environ["PGO_ONLY_MODULES"].split(",")
]



class ParallelBuildExt(build_ext):
    """build_ext compiling the modules on every core unless -j says
    otherwise: pip's build runs it without -j, and the modules are
    independent C files (a serial build is minutes of CI time)."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1


setup(
    cmdclass={"build_ext": ParallelBuildExt},
    ext_modules=cythonize(
        extensions,
        compiler_directives=COMPILER_DIRECTIVES,
        # Each flavour keeps its generated C apart, so switching between them
        # can never reuse C (or objects) generated with the other's settings.
        build_dir="build/cython-test" if TEST_BUILD else "build/cython",
        nthreads=os.cpu_count() or 1,
    ),
)
