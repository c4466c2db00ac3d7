"""The pixel budget (``pipeline/budget.py``) and large images in the shard jobs: chunks and
decode groups bounded in pixels, ``--tile`` and ``--pixel-budget`` through encode-shards and
decode-shards on the real S3 server and Ray."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
from PIL import Image

from jobs.cli import common as cli_common
from jobs.cli.main import main as cli_main
from oscar_core import Codec
from oscar_core.tiling import DEFAULT_TILE
from pipeline import contract, parquet, storage
from pipeline.budget import chunk_pixels, pixel_chunks
from pipeline.contract import DecodeTask, ShardDefinition, WorkerConfig
from pipeline.worker import ShardWorker
from tests.pipeline.shards import image_bytes, tar_bytes

CPU = ["--workers", "1", "--gpus-per-worker", "0", "--cpus-per-worker", "1", "--no-progress"]


def test_pixel_chunks_close_before_the_budget_and_keep_order():
    sizes = [10, 30, 0, 50, 200, 5, 5, 5, 5, 60]  # pixels; 0: an error sample
    chunks = list(pixel_chunks(list(enumerate(sizes)), lambda item: item[1], 3, 60))
    assert [[i for i, _ in c] for c in chunks] == [[0, 1, 2], [3], [4], [5, 6, 7], [8], [9]]
    assert [i for c in chunks for i, _ in c] == list(range(len(sizes)))  # all, in order
    for chunk in chunks:  # within the budget, or one image alone over it
        assert sum(n for _, n in chunk) <= 60 or len(chunk) == 1
    assert list(pixel_chunks([], len, 3, 60)) == []


def test_chunk_share_counts_the_chunks_in_flight():
    # queued (prefetch_chunks) + being coded + being filled
    assert chunk_pixels(256_000_000, 2) == 64_000_000
    assert chunk_pixels(3, 2) == 1  # never 0: every chunk holds at least one image


def test_cli_defaults_are_the_libraries():
    assert cli_common.DEFAULT_TILE == DEFAULT_TILE
    assert cli_common.DEFAULT_PIXEL_BUDGET == contract.DEFAULT_PIXEL_BUDGET
    assert WorkerConfig("m").pixel_budget == contract.DEFAULT_PIXEL_BUDGET


def test_tile_is_part_of_a_shard_definition():
    asked = ShardDefinition("sha", "0.1.0", 4, "3", 1, 0.01, 100, "fp32", tile=512)
    assert asked.differences({**asked.to_dict(), "tile": 1024}) == ["tile 1024 -> 512"]


def test_encode_chunks_hold_at_most_their_share_of_the_budget(tiny_model_dir, tmp_path):
    sizes = [(64, 96), (64, 96), (128, 192), (64, 64), (256, 256), (64, 96), (32, 32)]
    entries = [(f"k{i}.png", image_bytes(h, w, seed=i)) for i, (h, w) in enumerate(sizes)]
    shard = tmp_path / "s.tar"
    shard.write_bytes(tar_bytes(entries + [("k7.png", b"broken")]))
    # share = 60_000 // (2 + 2) = 15_000 pixels: two 64x96 images (12_288) fill one
    worker = ShardWorker(WorkerConfig(tiny_model_dir, pixel_budget=60_000, threads=1))
    chunks = list(worker._chunks(str(shard)))
    assert [[s.key for s in c] for c in chunks] == [
        ["k0", "k1"], ["k2"], ["k3"], ["k4"], ["k5", "k6", "k7"]
    ]  # fmt: skip
    for chunk in chunks:
        assert sum(s.pixels for s in chunk) <= 15_000 or len(chunk) == 1
    assert chunks[-1][-1].pixels == 0 and chunks[-1][-1].error  # the broken one counts 0


def test_decode_writes_a_row_batch_in_groups_within_the_budget(tiny_model_dir, tmp_path):
    worker = ShardWorker(WorkerConfig(tiny_model_dir, pixel_budget=20_000, threads=1))
    images = [np.asarray(Image.open(io.BytesIO(image_bytes(64, 96, seed=i)))) for i in range(5)]
    src = str(tmp_path / "s.parquet")
    with parquet.ShardParquetWriter(src) as writer:
        for i, stream in enumerate(worker.codec.compress(images, 3)):
            row = {"key": f"k{i}", "shard": "s", "index_in_shard": i, "status": "ok"}
            writer.write({**row, "bitstream": stream, "metadata": "{}"})
    groups: list[int] = []  # pixels per model call, recorded on the way through
    decode_parsed = worker.codec.decode_parsed

    def recording(parsed):
        groups.append(sum(p.header.height * p.header.width for p in parsed))
        return decode_parsed(parsed)

    worker.codec.decode_parsed = recording
    result = worker.decode_shard(DecodeTask(src, "s", str(tmp_path / "out.tar")))
    assert result.decoded == 5 and not result.notes
    assert groups == [18_432, 12_288]  # 6_144 pixels each: 3 fit in 20_000, 4 do not
    with tarfile.open(tmp_path / "out.tar") as tar:
        assert sorted(m.name for m in tar.getmembers()) == [f"k{i}.png" for i in range(5)]


def test_a_large_image_through_the_shard_jobs_in_tiles(
    s3_bucket, ray_cluster, tiny_model_dir, tmp_path, capsys
):
    """The huge-image case scaled down: with --tile 128 a 256x384 image is over a tile's
    pixels, so encode-shards and decode-shards code it in tiles; every row is ok, the
    settings are recorded, and the decoded image is the tiled codec's."""
    large = image_bytes(256, 384, seed=7)
    entries = [("a.png", image_bytes(64, 96)), ("large.png", large), ("b.png", image_bytes(32, 48))]
    src = f"s3://{s3_bucket}/in/shard-000000.tar"
    storage.put_bytes(src, tar_bytes(entries))
    out, decoded = f"s3://{s3_bucket}/out", f"s3://{s3_bucket}/decoded"
    small = ["--tile", "128", "--pixel-budget", "200000", "--model", tiny_model_dir, *CPU]
    argv = ["encode-shards", src, "--out", out, "--rate", "7", *small]
    assert cli_main(argv) == 0, capsys.readouterr().err
    assert "images 3 (0 errors)" in capsys.readouterr().out
    settings = json.loads(storage.read_bytes(f"{out}/job_config.json"))["settings"]
    assert (settings["tile"], settings["pixel_budget"]) == (128, 200_000)
    rows = parquet.read_table(f"{out}/shard-000000.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok"] * 3
    codec = Codec.from_pretrained(tiny_model_dir, tile=128)
    image = np.asarray(Image.open(io.BytesIO(large)))
    assert rows[1]["bitstream"] == codec.compress([image], 7)[0]  # the tiled encoder's

    argv = ["decode-shards", f"{out}/shard-000000.parquet", "--out", decoded, *small]
    assert cli_main(argv) == 0, capsys.readouterr().err
    with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(f"{decoded}/shard-000000.tar"))) as tar:
        png = tar.extractfile("large.png").read()
    expected = codec.decompress([rows[1]["bitstream"]])[0]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), expected)

    # a tile that is not 0 or a multiple of 64 >= 128, or no budget: exit 2 before any work
    for bad, message in (("--tile", 'Invalid tile "100"'), ("--pixel-budget", "pixel_budget")):
        value = "100" if bad == "--tile" else "0"
        argv = ["encode-shards", src, "--out", f"{out}2", "--rate", "7", *CPU, bad, value]
        assert cli_main([*argv, "--model", tiny_model_dir]) == 2
        assert message in capsys.readouterr().err
