"""Analysis of profile bundles: pure functions from bundles to summaries
(and, with ``pgo analyze``, to configs).  No process launching, no handler
installing, no printing."""
