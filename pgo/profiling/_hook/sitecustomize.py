"""pgo profile --follow-children: put on PYTHONPATH of the profiled
program, so that every Python process it starts profiles itself into the
bundle's children/ folder.  Then hands over to any other sitecustomize."""

import os
import sys


def _pgo_follow() -> None:
    spec = os.environ.get("PGO_PROFILE_FOLLOW")
    if not spec or os.environ.pop("PGO_PROFILE_FOLLOW_SKIP", None):
        return
    try:
        from pgo.profiling.child import start_child
        start_child(spec)
    except Exception as e:  # never stop the child from running
        sys.stderr.write(f"pgo profile: not profiling child process {os.getpid()}: {e}\n")


def _chain() -> None:
    import importlib.machinery
    import importlib.util
    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        sys.modules["sitecustomize"] = module
        spec.loader.exec_module(module)


_pgo_follow()
_chain()
