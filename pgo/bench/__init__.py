"""``pgo bench``: the target run without and with a config (and peers),
interleaved, measured per run, compared with statistics (``stats``),
reported as a table, JSON and an HTML page (``report``)."""
