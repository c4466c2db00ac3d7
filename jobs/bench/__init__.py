"""``oscar bench``: ``job.run(BenchConfig)`` runs the sections listed in ``job.SECTIONS`` (one
module each) and writes bench.json + bench.md (``report.py``)."""
