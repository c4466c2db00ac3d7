"""The real local S3 server's fixtures for the training-data tests (no second server).

``s3_env`` (session) and ``s3_bucket`` are the pipeline tests' own fixtures, imported so a
run of both suites shares one radosgw: pytest may set ``s3_env`` up once per directory, but
the second time ``infra/local_s3 start`` finds the server running and only prints its env.
"""

from tests.pipeline.conftest import s3_bucket, s3_env  # noqa: F401
