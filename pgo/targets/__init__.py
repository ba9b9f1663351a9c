"""Example targets with known allocation patterns, shipped with pgo so that
`pgo demo` (and anyone) can run them: `python -m pgo.targets.pipeline`.

- pipeline: large numpy temporaries (48 MB) through a pipeline
- small_arrays: many short-lived small arrays
- scoped_temps: temporaries that die when a function returns
- records: an object-heavy record-building job that makes the GC work
"""

NAMES = ("pipeline", "scoped_temps", "records", "small_arrays")
