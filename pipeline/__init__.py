"""The shard pipeline: storage, Ray dispatch, shard workers, Parquet, jobs.

Importing the package sets ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` unless the user set it.
Ray reads that variable when Ray itself is imported: with it, a local Ray binds every server
to 127.0.0.1; without it, to the machine's external address. Every module here imports Ray
lazily (``connect_ray``, and ``ShardWorker`` asking Ray for its GPUs and node, which also
runs in-process outside any actor), so setting it once, here, covers every path.
"""

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
