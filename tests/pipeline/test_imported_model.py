"""An imported reference model (``oscar import-reference``) served from S3 by the shard jobs.

The model directory is self-contained: uploaded to the local S3 and used as ``--model
s3://...`` by ``encode-shards`` and ``decode-shards`` on the local Ray, with no SD-2.1
directory anywhere (it is deleted before the jobs run). The decoded pixels equal those of
the same directory loaded locally (to one level: the worker runs
one torch thread).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from jobs.cli.main import main as cli_main
from oscar_core import Codec
from pipeline import storage_s3
from tests.pipeline.shards import image_bytes, tar_bytes
from tests.reference_fixtures import ReferenceOscar, make_sd21_dir

pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config`:UserWarning")
CPU = ["--workers", "1", "--gpus-per-worker", "0", "--cpus-per-worker", "1", "--no-progress"]


def test_imported_model_from_s3_in_the_shard_jobs(s3_bucket, ray_cluster, tmp_path):
    sd21 = make_sd21_dir(tmp_path / "sd21")
    torch.save(ReferenceOscar(sd21).checkpoint(), tmp_path / "oscar.pkl")
    model = tmp_path / "model"
    argv = ["import-reference", "--sd21", str(sd21), "--checkpoint", str(tmp_path / "oscar.pkl")]
    assert cli_main([*argv, "--allow-pickle", "--out", str(model)]) == 0
    shutil.rmtree(sd21)  # the model directory must not need it

    s3 = storage_s3.s3_client()
    for f in model.iterdir():
        s3.put_object(Bucket=s3_bucket, Key=f"models/imported/{f.name}", Body=f.read_bytes())
    entries = [(f"k{i}.png", image_bytes(64, 128, seed=i)) for i in range(3)]
    s3.put_object(Bucket=s3_bucket, Key="in/shard-000000.tar", Body=tar_bytes(entries))
    url = f"s3://{s3_bucket}"
    enc = ["encode-shards", f"{url}/in/shard-000000.tar", "--out", f"{url}/enc", "--rate", "5"]
    assert cli_main([*enc, "--model", f"{url}/models/imported", *CPU]) == 0
    dec = ["decode-shards", f"{url}/enc/*.parquet", "--out", f"{url}/dec", "--as-files"]
    assert cli_main([*dec, "--model", f"{url}/models/imported", *CPU]) == 0

    local = Codec.from_pretrained(model)
    body = s3.get_object(Bucket=s3_bucket, Key="enc/shard-000000.parquet")["Body"].read()
    table = pq.read_table(io.BytesIO(body))
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert set(table.column("model_id").to_pylist()) == {local.model_id.hex()}
    listed = s3.list_objects_v2(Bucket=s3_bucket, Prefix="dec/")["Contents"]
    pngs = {Path(o["Key"]).name: o["Key"] for o in listed if o["Key"].endswith(".png")}
    for row in table.to_pylist():
        expected = local.decompress([row["bitstream"]])[0]
        data = s3.get_object(Bucket=s3_bucket, Key=pngs[f"{row['key']}.png"])["Body"].read()
        decoded = np.asarray(Image.open(io.BytesIO(data))).astype(int)
        # another thread count (the worker's 1): at most one level (oscar_core/codec.py)
        assert np.abs(decoded - expected.astype(int)).max() <= 1
    assert json.loads((model / "config.json").read_text())["autoencoder"]["pretrained"] is True
