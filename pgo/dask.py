"""pgo on every Dask worker (dask.distributed), with Dask's own plugin
machinery:

    from pgo.dask import PgoPlugin
    client.register_plugin(PgoPlugin(profile="profiles/fleet"))   # 1. profile the fleet
    # ... run the job; then, on the client's machine:
    #   pgo merge profiles/fleet/* -o profiles/merged && pgo analyze profiles/merged -o pgo.toml
    client.register_plugin(PgoPlugin(config="pgo.toml"))          # 2. apply it everywhere

With ``config``, every worker (those running now, those added later, and
restarted ones: the scheduler keeps the plugin) applies the config before
it runs tasks: the GC plan, numpy's router, per-site rules.  The config is
read here and sent as text, so the workers need not share a filesystem
with the client.  With ``profile``, every worker records a bundle into
``DIR/HOST-WORKER-PID`` (DIR must be reachable from the workers: a local
path for a LocalCluster, a shared one otherwise); the traces are streamed,
so a worker killed mid-run leaves a bundle that loads up to its last
block.  ``client.unregister_worker_plugin("pgo")`` (or closing the
client's cluster) tears it down: the worker's GC settings and numpy's
handler are put back, and a profile is written.

What pgo changes, and how it coexists with distributed's own memory care:
the GC plan sets thresholds and runs its own full collections on heap
growth; distributed's ``ThrottledGC`` may still call ``gc.collect()`` when
a worker's memory is high, and its ``GCDiagnosis`` callback still logs
long full collections (both are plain ``gc`` calls and callbacks, which
pgo's plan leaves alone).  ``MALLOC_TRIM_THRESHOLD_``, which the nanny
sets before spawning a worker, applies to glibc's heap: pgo's caches map
their own blocks and keep them within their headroom, so the two do not
overlap.  ``import pgo`` never imports dask (``pip install
"pgo-memory[dask]"``).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from distributed import WorkerPlugin

from pgo import config as cfgmod
from pgo._core._handler_hook import adopt_thread_handler


class PgoPlugin(WorkerPlugin):
    """Apply a pgo config on every worker, or profile every worker.

    Args:
        config: a config file (``pgo analyze``'s) or a ``pgo.config.Config``.
        profile: a directory to write one bundle per worker into.

    Exactly one of the two.  Registered under the name ``"pgo"``: a second
    registration replaces the first on every worker (its teardown runs).
    """

    name = "pgo"
    idempotent = False

    def __init__(self, config: str | os.PathLike[str] | cfgmod.Config | None = None,
                 profile: str | os.PathLike[str] | None = None) -> None:
        if (config is None) == (profile is None):
            raise ValueError("PgoPlugin takes config= (apply a config) or profile= (record "
                             "a bundle per worker), exactly one of them")
        self.config_text: str | None = None
        self.source = "PgoPlugin"
        if isinstance(config, cfgmod.Config):
            self.config_text, self.source = cfgmod.dumps(config), "PgoPlugin(<config>)"
        elif config is not None:
            # Read and checked here, on the client; sent as text.
            self.config_text = cfgmod.dumps(cfgmod.load(config))
            self.source = f"PgoPlugin({os.fspath(config)})"
        self.profile_dir = os.path.abspath(os.fspath(profile)) if profile is not None else None
        self._runtime: Any = None
        self._profiler: Any = None

    # NOTE: Dask pickles the plugin to each worker; what setup() makes (the
    # runtime, the profiler) lives in that worker's copy only.

    def setup(self, worker: Any) -> None:
        if self.config_text is not None:
            from pgo import runtime
            self._runtime = runtime.apply(cfgmod.loads(self.config_text, source=self.source))
        if self.profile_dir is not None:
            from pgo.profiling.session import Profiler, register_exit
            host = socket.gethostname()
            label = str(worker.name).replace(os.sep, "_")
            directory = os.path.join(self.profile_dir, f"{host}-{label}-{os.getpid()}")
            os.makedirs(directory, exist_ok=True)
            self._profiler = Profiler(
                directory, command=["dask-worker", str(worker.address)],
                target={"kind": "dask-worker", "name": "dask-worker", "args": [], "python": [],
                        "worker": label, "host": host, "address": str(worker.address)})
            self._profiler.start()
            # A worker that exits without teardown (the cluster closing)
            # still writes its bundle.
            register_exit(self._profiler)

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        # A task's code runs in a copy of the context of the worker code
        # that starts it, made before setup() set numpy's handler (a
        # ContextVar) in its own: set it there, where the copies come from.
        if finish == "executing":
            adopt_thread_handler()

    def teardown(self, worker: Any) -> None:
        if self._profiler is not None:
            self._profiler.stop(exit_code=0)
            self._profiler = None
        if self._runtime is not None:
            self._runtime.stop()
            self._runtime = None

    def stats(self) -> dict[str, Any]:
        """This worker's runtime statistics (``client.run(lambda
        dask_worker: dask_worker.plugins["pgo"].stats())``)."""
        return self._runtime.stats() if self._runtime is not None else {}
