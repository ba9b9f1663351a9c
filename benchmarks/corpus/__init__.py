"""The generality corpus: programs nobody tuned pgo for.

Each program is a plain script (numpy and the standard library only) that
takes ``--scale S`` (a float multiplying its input size; default 1.0),
prints one result line, is deterministic (seeded) and runs in about 1-3 s
at scale 1 on the 2-core dev machine.  Its module docstring says what
shape it has and why it is realistic.

``CORPUS`` is the index ``benchmarks/bench_generality.py`` reads: per
program its name, file (beside this one), kind, the targets of issue 19
that apply to that kind, the scale it is profiled at (the bench then runs
it at 1x and 3x that scale: the config made on a small run, applied to the
real one) and one line on what it does.

Kinds and their targets (every cell also gets "not slower than its
baseline beyond noise" and "peak RSS <= +10% unless the config says so"):

* ``gc-bound``: object builders whose run time goes to the cyclic GC;
  target ``gc``: the config within 10% of GC-off at <= +10% peak RSS.
* ``alloc-bound``: numpy code whose run time goes to allocating (page
  faults, mmap/munmap); target ``alloc``: within 2% of the best LD_PRELOAD
  peer (jemalloc, mimalloc, tcmalloc) or not significantly slower.
* ``mixed``: both (an object heap and numpy temporaries): both targets.
* ``threaded``, ``churn``, ``generators``: no target of their own; they
  check that the config does no harm where it has little to win.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent

TARGETS_BY_KIND = {
    "gc-bound": ("gc",),
    "alloc-bound": ("alloc",),
    "mixed": ("gc", "alloc"),
    "threaded": (),
    "churn": (),
    "generators": (),
}


@dataclass(frozen=True)
class Program:
    name: str
    file: str                     # beside this file
    kind: str                     # a key of TARGETS_BY_KIND
    what: str                     # one line: what it does
    profile_scale: float = 1 / 3  # profiled at this --scale; benched at 1x and 3x of it

    @property
    def path(self) -> Path:
        return HERE / self.file

    @property
    def targets(self) -> tuple[str, ...]:
        return TARGETS_BY_KIND[self.kind]


CORPUS: tuple[Program, ...] = (
    Program("event_sourcing", "event_sourcing.py", "gc-bound",
            "800k event objects kept in a dict and per-order lists, a fill dict on every fifth"),
    Program("graph_build", "graph_build.py", "gc-bound",
            "120k package nodes with deps/rdeps lists (cycles), topological order, closures"),
    Program("json_ingest", "json_ingest.py", "gc-bound",
            "80k nested JSON documents parsed with json.loads, normalised and all kept"),
    Program("lru_service", "lru_service.py", "gc-bound",
            "a 120k-entry OrderedDict LRU of profile dicts under Zipf-like requests (long-lived cache)"),
    Program("orm_records", "orm_records.py", "gc-bound",
            "cursor rows into identity-mapped models, __slots__ and not, two-way relations"),
    Program("inverted_index", "inverted_index.py", "gc-bound",
            "12k documents into Counters and a term -> [doc, tf] postings index, BM25 queries"),
    Program("raster_pipeline", "raster_pipeline.py", "alloc-bound",
            "36 MiB bands through calibrate/normalize/smooth/ndvi/classify (temporaries > 32 MiB)"),
    Program("tile_filters", "tile_filters.py", "alloc-bound",
            "blur + Sobel edges on 2 and 8 MiB float64 tiles (medium temporaries)"),
    Program("bond_pricing", "bond_pricing.py", "alloc-bound",
            "80k bonds priced one by one with 4-120 element arrays (many small arrays)"),
    Program("columnar_groupby", "columnar_groupby.py", "alloc-bound",
            "1.5M-row columns: argsort/reduceat group-by, unique, quantile (4-24 MiB temporaries)"),
    Program("path_simulation", "path_simulation.py", "alloc-bound",
            "Monte Carlo paths x 252 steps per option; the arrays grow with the input (11 -> 32 MiB)"),
    Program("feature_store", "feature_store.py", "mixed",
            "20k user objects with float32 embeddings, batched matmul + argpartition top-k"),
    Program("threaded_etl", "threaded_etl.py", "threaded",
            "ThreadPoolExecutor(4): numpy cleaning of 2 MB chunks + per-sensor summary dicts"),
    Program("tokenizer", "tokenizer.py", "churn",
            "regex lexer yielding a namedtuple per token into Counters (short-lived tuples/strings)"),
    Program("log_pipeline", "log_pipeline.py", "generators",
            "access-log lines through six chained generators, groupby per minute"),
)

BY_NAME = {p.name: p for p in CORPUS}
