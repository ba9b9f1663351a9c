"""A bundle from a ``tracemalloc.Snapshot.dump()`` file.

The dump is a pickle, and unpickling runs whatever code the file names, so
it is refused unless the user says ``--trust-pickle``.  The unpickled data
is checked to be a Snapshot before anything is taken from it, and the
bundle holds only JSON (one snapshot: sites and their live bytes).
"""

from __future__ import annotations

import os
import pickle
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

from pgo import bundle as fmt
from pgo._errors import ProfileFormatError, ProfilerError
from pgo._version import __version__

NUMPY_DOMAIN = 389047


def bundle_from_dump(dump: os.PathLike | str, directory: os.PathLike | str, *,
                     trust_pickle: bool) -> Path:
    dump = Path(dump)
    directory = Path(directory)
    if not trust_pickle:
        raise ProfilerError(f"{dump}: a tracemalloc dump is a pickle, and unpickling can run "
                            f"code from the file; pass --trust-pickle only for a file you made")
    if not dump.is_file():
        raise ProfilerError(f"{dump}: no such file")
    if directory.exists() and any(directory.iterdir()):
        raise ProfilerError(f"{directory}: already exists and is not empty")
    try:
        snap = tracemalloc.Snapshot.load(os.fspath(dump))
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
        raise ProfileFormatError(f"{dump}: not a tracemalloc snapshot ({type(e).__name__}: {e})") from None
    if not isinstance(snap, tracemalloc.Snapshot):
        raise ProfileFormatError(f"{dump}: holds a {type(snap).__name__}, not a tracemalloc Snapshot")
    groups: dict[tuple, list[int]] = {}
    for tr in snap.traces:
        if tr.domain not in (0, NUMPY_DOMAIN):
            continue
        frames = tuple((f.filename, int(f.lineno)) for f in reversed(tr.traceback))
        g = groups.setdefault((tr.domain, frames), [0, 0])
        g[0] += int(tr.size)
        g[1] += 1
    sites = []
    live = []
    total = 0
    for sid, ((domain, frames), (b, n)) in enumerate(sorted(groups.items(), key=lambda kv: -kv[1][0]), 1):
        sites.append({"id": sid, "domain": "numpy" if domain == NUMPY_DOMAIN else "objects",
                      "frames": [[f, line] for f, line in frames], "peak_bytes": b,
                      "peak_count": n, "snapshots_seen": 1, "final_bytes": b, "final_count": n})
        live.append([sid, b, n])
        total += b
    directory.mkdir(parents=True, exist_ok=True)
    fmt.write_json(directory / fmt.ALLOCATIONS, fmt.allocations_document(
        nframes=snap.traceback_limit, sites=sites,
        snapshots=[{"t_s": 0.0, "traced_bytes": total, "live": live}],
        traced_peak_bytes=total, snapshot_count=1))
    now = time.time()
    fmt.write_json(directory / fmt.MANIFEST, fmt.manifest_document(
        complete=True, command=[], cwd=os.getcwd(), python="unknown", pid=0,
        started_at=datetime.fromtimestamp(now, timezone.utc).isoformat(), duration_s=None,
        collectors={"tracemalloc": {"status": "imported", "source": os.fspath(dump)},
                    "events": {"status": "off"}, "gc": {"status": "off"},
                    "cpu": {"status": "off"}},
        warnings=["made from a single tracemalloc snapshot: no lifetimes, events, GC or CPU "
                  "data"],
        target={"kind": "tracemalloc-dump", "name": os.fspath(dump)}, numpy="unknown",
        pgo=__version__, start_unix=now, exit={"code": None, "signal": None}, overhead={}))
    return directory
