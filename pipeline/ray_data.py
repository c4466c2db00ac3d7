"""OSCAR as Ray Data stages, for users who already compose Ray Data pipelines.

Decode an archive (the ``bitstream`` column of ``encode-shards`` Parquet) into images::

    ds = ray.data.read_parquet("s3://bucket/archive/", filesystem=arrow_filesystem())
    images = ds.map_batches(DecodeBatch, fn_constructor_kwargs={"model": MODEL},
                            batch_format="pyarrow", concurrency=4, num_gpus=1)

Encode images into the same Parquet schema (readable by ``decode-shards`` and
``pipeline.dataset.ArchiveDataset``)::

    ds = ray.data.read_images("s3://bucket/photos/", include_paths=True, mode="RGB")
    ds.map_batches(EncodeBatch, fn_constructor_kwargs={"model": MODEL, "rate": 3},
                   batch_format="numpy", concurrency=4, num_gpus=1)
      .write_parquet("s3://bucket/archive/")

Both are callable classes (one codec per Ray actor, loaded once). Failures come back as
data, like the job runner's: a row that cannot be coded gets ``status`` "error" and an
``error_message``; nothing is dropped. Which to use: ``oscar encode-shards`` gives
per-shard exactly-once output, resume after a crash and the job report; Ray Data gives
composition with other stages (filtering, captioning, training ingest) in one program.
"""

from __future__ import annotations

import io
import json
import os
import time
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from oscar_core import CODEC_VERSION

from .archive import decode_rows, load_codec
from .parquet import SCHEMA

# What DecodeBatch returns per row: the image as PNG-free raw pixels (H*W*3 bytes) with its
# shape, so a batch of images of different sizes stays one Arrow table.
DECODED_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("status", pa.string()),  # "ok" or "error"
        pa.field("error_message", pa.string()),
        pa.field("height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("pixels", pa.binary()),  # (H,W,3) uint8, C order; null on error
        pa.field("metadata", pa.string()),  # the archive row's carried fields (JSON)
    ]
)


def image_from_pixels(row: dict[str, Any]) -> np.ndarray:
    """A ``DECODED_SCHEMA`` row's pixels as an (H,W,3) uint8 array."""
    return np.frombuffer(row["pixels"], np.uint8).reshape(row["height"], row["width"], 3)


class DecodeBatch:
    """``map_batches`` callable: archive rows (pyarrow batch with ``key``, ``status``,
    ``bitstream``) -> ``DECODED_SCHEMA`` rows, same order, one per input row."""

    def __init__(
        self, model: str | None = None, device: str | None = None, codec_batch: int = 4
    ) -> None:
        self.codec = load_codec(model, device, codec_batch)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for o in decode_rows(self.codec, batch.to_pylist()):
            row = {"key": o.row["key"], "metadata": o.row.get("metadata")}
            if o.image is None:
                out.append({**row, "status": "error", "error_message": o.error})
            else:
                h, w = o.image.shape[:2]
                out.append(
                    {**row, "status": "ok", "height": h, "width": w, "pixels": o.image.tobytes()}
                )
        return pa.Table.from_pylist(out, schema=DECODED_SCHEMA)


def _as_image(value: Any) -> np.ndarray:
    """An (H,W,3) uint8 array from what Ray readers give: an array, or encoded bytes."""
    if isinstance(value, bytes | bytearray):
        with Image.open(io.BytesIO(value)) as im:
            return np.asarray(im.convert("RGB"))
    return np.asarray(value)


class EncodeBatch:
    """``map_batches`` callable (``batch_format="numpy"``): images -> rows of the archive's
    Parquet schema (``pipeline.parquet.SCHEMA``), same order, one per input row.

    ``image_column``: arrays (``read_images``) or encoded bytes (``read_webdataset`` with
    ``decoder=None``, ``read_binary_files``); ``key_column``: the row's key (``path`` from
    ``read_images(include_paths=True)``, ``__key__`` from ``read_webdataset``)."""

    def __init__(
        self,
        rate: int | float | str,
        model: str | None = None,
        device: str | None = None,
        codec_batch: int = 4,
        image_column: str = "image",
        key_column: str = "path",
        source: str = "ray-data",
    ) -> None:
        self.codec = load_codec(model, device, codec_batch)
        self.rate = self.codec.ladder.resolve(rate)  # ValueError now, not per batch
        self.image_column, self.key_column, self.source = image_column, key_column, source
        self.model_id = self.codec.model_id.hex()

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        keys = [str(k) for k in batch[self.key_column]]
        rows = []
        for i, (key, value) in enumerate(zip(keys, batch[self.image_column], strict=True)):
            t0 = time.perf_counter()
            row: dict[str, Any] = {
                "key": key,
                "shard": self.source,
                "index_in_shard": i,
                "model_id": self.model_id,
                "codec_version": CODEC_VERSION,
                "metadata": json.dumps({"source": os.path.basename(key)}),
            }
            try:
                image = _as_image(value)
                (stream,) = self.codec.compress([image], self.rate)
            except (ValueError, OSError, MemoryError) as exc:  # one bad image, one error row
                rows.append(
                    {**row, "status": "error", "error_message": f"{type(exc).__name__}: {exc}"}
                )
                continue
            h, w = image.shape[:2]
            rows.append(
                {
                    **row,
                    "status": "ok",
                    "rate_index": self.rate.index,
                    "nominal_bpp": self.rate.nominal_bpp,
                    "measured_bpp": 8 * len(stream) / (w * h),
                    "pseudo_timestep": self.rate.t,
                    "width": w,
                    "height": h,
                    "bitstream": stream,
                    "bitstream_bytes": len(stream),
                    "encode_ms": 1000 * (time.perf_counter() - t0),
                }
            )
        return pa.Table.from_pylist(rows, schema=SCHEMA)


def arrow_filesystem() -> Any:
    """A ``pyarrow.fs.S3FileSystem`` configured like our boto3 client (``AWS_ENDPOINT_URL``,
    region and credentials from the environment), for ``ray.data.read_parquet(...,
    filesystem=...)`` against a non-AWS store such as the local one."""
    from pyarrow import fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict[str, Any] = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "http")
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        kwargs.update(
            access_key=os.environ["AWS_ACCESS_KEY_ID"],
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
        )
    return fs.S3FileSystem(**kwargs)
