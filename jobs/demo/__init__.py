"""``oscar demo``: ``job.run(DemoConfig)``, the shard pipeline end to end on the bundled
samples with its own local S3 and Ray (``end_to_end.py``, ``inputs.py``, ``servers.py``)."""
