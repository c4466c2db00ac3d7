"""Quality-targeted shard jobs (``encode-shards --target`` / per shard in a rates file) on
the local Ray and S3 with the shipped model: every targeted row is at the lowest rate that
meets the target (brute force over the ladder), says what it reached and in how many trials,
the report sums it up against one rate for all, and decode needs nothing new."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import duckdb
import numpy as np
import pytest
from PIL import Image

from jobs.cli.main import main as cli_main
from oscar_core.codec import DEFAULT_MODEL_DIR, Codec
from oscar_core.images import center_crop
from oscar_core.metrics import psnr
from pipeline import storage
from tests.pipeline.shards import tar_bytes

SAMPLES = Path(__file__).parents[2] / "jobs" / "samples"


@pytest.fixture(scope="module")
def every(photos) -> list[list[float]]:
    """PSNR of each photo at each rate: ``every[rate][photo]`` (the brute-force truth)."""
    codec = Codec.from_pretrained()
    return [
        [
            psnr(p, d)
            for p, d in zip(photos, codec.decompress(codec.compress(photos, r)), strict=True)
        ]
        for r in codec.ladder
    ]


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [
        center_crop(np.asarray(Image.open(p).convert("RGB")), 96, 128)
        for p in sorted(SAMPLES.glob("*.png"))
    ]


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_targeted_shards_end_to_end(photos, every, s3_bucket, ray_cluster, tmp_path, capsys):
    target = round(float(np.median(every[3])), 2)  # different rates for different photos
    entries = []
    for i, photo in enumerate(photos):
        entries += [(f"p{i}.png", png(photo)), (f"p{i}.txt", f"caption {i}".encode())]
    entries += [("bad.png", b"not an image")]
    for s in range(2):
        storage.atomic_put(f"s3://{s3_bucket}/in/shard-{s:06d}.tar", tar_bytes(entries))
    rates = tmp_path / "rates.txt"
    rates.write_text(f"shard-000000.tar = psnr>={target:g}\n")
    out = f"s3://{s3_bucket}/enc"
    argv = ["encode-shards", f"s3://{s3_bucket}/in/shard-{{000000..000001}}.tar", "--out", out]
    argv += ["--rates-file", str(rates), "--rate", "2", "--model", str(DEFAULT_MODEL_DIR)]
    argv += ["--workers", "1", "--gpus-per-worker", "0", "--cpus-per-worker", "1"]
    assert cli_main([*argv, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"target psnr>={target:g}: " in printed

    local = tmp_path / "enc"
    local.mkdir()
    for name in ("shard-000000.parquet", "shard-000001.parquet"):
        (local / name).write_bytes(storage.read_bytes(f"{out}/{name}"))
    rows = duckdb.sql(
        "SELECT shard, key, status, rate_index, target, target_value, target_trials, "
        f"target_met, target_tried FROM read_parquet('{local}/*.parquet') "
        "ORDER BY shard, index_in_shard"
    ).fetchall()
    targeted = [r for r in rows if r[0].endswith("shard-000000.tar")]
    fixed = [r for r in rows if r[0].endswith("shard-000001.tar")]
    assert [r[2] for r in targeted] == ["ok"] * len(photos) + ["error"]
    assert all(r[4] is None and r[3] in (2, None) for r in fixed)  # a fixed-rate shard

    chosen = []
    for i, row in enumerate(targeted[: len(photos)]):
        _, key, _, rate, asked, value, trials, met, tried = row
        assert key == f"p{i}" and asked == f"psnr>={target:g}"
        column = [every[r][i] for r in range(len(every))]
        lowest = next((r for r, q in enumerate(column) if q >= target), None)
        if lowest is None:
            assert (rate, met) == (len(every) - 1, False)
        else:
            assert met and value >= target and abs(value - column[rate]) < 0.05
            if all(a <= b + 1e-9 for a, b in zip(column[:-1], column[1:], strict=True)):
                assert rate == lowest  # quality monotone in the rate: never higher than needed
            else:
                assert rate >= lowest
        assert trials == len(tried) <= 4
        assert {t["rate_index"] for t in tried} >= {rate}
        chosen.append(rate)
    assert len(set(chosen)) > 1  # the target picks different rates for different photos

    report = json.loads(storage.read_bytes(f"{out}/job_report.json"))
    (summary,) = report["targets"]
    assert summary["target"] == f"psnr>={target:g}" and summary["images"] == len(photos)
    assert summary["met"] == sum(1 for r in targeted[: len(photos)] if r[7])
    assert summary["rates"] == {str(r): chosen.count(r) for r in sorted(set(chosen))}
    assert summary["single_rate"]["rate_index"] == max(
        r[3] for r in targeted[: len(photos)] if r[7]
    )
    assert "## Quality targets" in storage.read_bytes(f"{out}/job_report.md").decode()
    config = json.loads(storage.read_bytes(f"{out}/job_config.json"))
    assert config["shards"][0]["target"] == f"psnr>={target:g}"
    assert config["shards"][1]["rate_index"] == 2

    # decode needs nothing new: the rate is in each stream
    argv = ["decode-shards", f"{out}/shard-000000.parquet", "--out", f"s3://{s3_bucket}/dec"]
    argv += ["--model", str(DEFAULT_MODEL_DIR), "--workers", "1", "--gpus-per-worker", "0"]
    argv += ["--cpus-per-worker", "1", "--no-progress"]
    assert cli_main(argv) == 0
    data = storage.read_bytes(f"s3://{s3_bucket}/dec/shard-000000.tar")
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        images = {
            m.name.split(".")[0]: np.asarray(Image.open(tf.extractfile(m)))
            for m in tf.getmembers()
            if m.name.endswith(".png")
        }
    for i, rate in enumerate(chosen):
        assert abs(psnr(photos[i], images[f"p{i}"]) - every[rate][i]) < 0.05
