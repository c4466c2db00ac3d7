"""OSCAR as Ray Data stages: read_images -> EncodeBatch -> write_parquet, then the archive
read back by ArchiveDataset and by read_parquet -> DecodeBatch; a bad image is an error row."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from oscar_core.codec import Codec
from pipeline.dataset import ArchiveDataset
from pipeline.parquet import check_schema
from pipeline.ray_data import DecodeBatch, EncodeBatch, image_from_pixels


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    images = {}
    for i, size in enumerate([(32, 48), (32, 48), (48, 40)]):
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / f"p{i}.png")
        images[f"p{i}.png"] = image
    return root, images


def test_encode_then_decode_with_ray_data(ray_cluster, photos, tiny_model_dir, tmp_path):
    import ray

    root, images = photos
    out = tmp_path / "archive"
    ds = ray.data.read_images(str(root), include_paths=True, mode="RGB")
    ds = ds.map_batches(
        EncodeBatch,
        fn_constructor_kwargs={"model": tiny_model_dir, "rate": 2},
        batch_format="numpy",
        batch_size=2,
        concurrency=1,
    )
    ds.write_parquet(str(out))
    files = sorted(out.glob("*.parquet"))
    table = pq.read_table(files)  # an independent reader
    check_schema(table.schema, str(out))  # the archive schema: decode-shards reads it
    assert sorted(table.column("status").to_pylist()) == ["ok"] * 3

    codec = Codec.from_pretrained(tiny_model_dir)
    keys = [k.rsplit("/", 1)[-1] for k in table.column("key").to_pylist()]
    for name, stream in zip(keys, table.column("bitstream").to_pylist(), strict=True):
        assert codec.parse(stream).rate.index == 2
        assert codec.parse(stream).header.width == images[name].shape[1]

    # the archive read back through the PyTorch dataset ...
    via_dataset = {
        k.rsplit("/", 1)[-1]: img.permute(1, 2, 0).numpy()
        for k, img, _ in ArchiveDataset([str(f) for f in files], model=tiny_model_dir)
    }
    # ... and through Ray Data: read_parquet -> DecodeBatch
    decoded = (
        ray.data.read_parquet(str(out))
        .map_batches(
            DecodeBatch,
            fn_constructor_kwargs={"model": tiny_model_dir},
            batch_format="pyarrow",
            concurrency=1,
        )
        .take_all()
    )
    assert len(decoded) == 3 and {r["status"] for r in decoded} == {"ok"}
    for row in decoded:
        name = row["key"].rsplit("/", 1)[-1]
        image = image_from_pixels(row)
        assert image.shape == images[name].shape
        assert np.abs(image.astype(int) - via_dataset[name]).max() <= 1  # batch order


def test_bad_image_and_bad_stream_are_error_rows(tiny_model_dir):
    import pyarrow as pa

    encode = EncodeBatch(rate=1, model=tiny_model_dir, image_column="jpg", key_column="__key__")
    good = np.zeros((16, 16, 3), np.uint8)
    table = encode(
        {"__key__": np.array(["a", "b"]), "jpg": np.array([good, b"not an image"], object)}
    )
    assert table.column("status").to_pylist() == ["ok", "error"]
    assert "UnidentifiedImageError" in table.column("error_message")[1].as_py()

    stream = table.column("bitstream")[0].as_py()
    rows = pa.Table.from_pylist(
        [
            {"key": "a", "status": "ok", "bitstream": stream, "error_message": None},
            {"key": "b", "status": "ok", "bitstream": stream[:5], "error_message": None},
            {"key": "c", "status": "error", "bitstream": None, "error_message": "unreadable"},
        ]
    )
    out = DecodeBatch(model=tiny_model_dir)(rows).to_pylist()
    assert [r["status"] for r in out] == ["ok", "error", "error"]
    assert image_from_pixels(out[0]).shape == (16, 16, 3)
    assert "BitstreamError" in out[1]["error_message"] and out[2]["error_message"] == "unreadable"
