"""Files of the repository itself that jobs use: the bundled samples and the local S3 script."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SAMPLES_DIR = REPO / "jobs" / "samples"  # four Kodak images (jobs/samples/README.md)
LOCAL_S3 = REPO / "infra" / "local_s3"  # start / stop / status / env of the local radosgw
