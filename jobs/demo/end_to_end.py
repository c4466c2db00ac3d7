"""The pipeline demo (``make demo`` / ``oscar demo``): the shard pipeline end to end.

    1. start the local S3 server (``infra/local_s3 start``: Ceph radosgw on 127.0.0.1:7480,
       state in ``.local_s3``; a fresh temp state dir and port if that one will not start)
       unless one already answers, and a local Ray bound to 127.0.0.1
    2. pack the bundled samples (``jobs/samples/*.png``) into 2 WebDataset shards in the
       bucket ``oscar-demo`` (``inputs.py``): each sample is ``<key>.png`` + ``<key>.json``
       (the file name) + ``<key>.txt`` (a caption)
    3. encode-shards with a rates file (shard 0 -> rate 2, shard 1 -> rate 7)
    4. decode-shards back: as shards to S3 and as files to ``<out>/decoded/``
    5. print the job report, a per-rate table (measured bpp, PSNR of the decoded files vs
       the originals) and images/s: model only (the same images through ``Codec.compress``
       in this process, 1 thread) vs the end-to-end job (Ray + S3 + Parquet)
    6. stop what it started (Ray; the S3 server if this run started it)

Outputs under ``<out>`` (default ``out/demo/``): ``parquet/`` (the shard Parquets,
downloaded), ``decoded/`` (PNGs + carried fields), ``job_report.{json,md}``,
``decoded/decode_report.{json,md}``, ``demo.json`` (every number printed).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jobs.demo.inputs import load_image, pack_shards, sample_paths
from jobs.demo.servers import clear_prefix, ensure_bucket, local_ray, local_s3, say
from oscar_core.metrics import psnr

if TYPE_CHECKING:  # pipeline is imported when the demo runs
    from pipeline.report import DecodeReport, EncodeReport

BUCKET = "oscar-demo"
PREFIX = "demo"  # s3://oscar-demo/demo/{in,enc,dec}/ (redone on every run)
SHARD_RATES = {"shard-000000.tar": 2, "shard-000001.tar": 7}


# ------------------------------------------------------------------------ report


def _model_only(codec: Any, images_by_rate: dict[int, list[np.ndarray]]) -> dict[str, Any]:
    """images/s of ``Codec.compress`` alone on the same images and rates (warm, 1 thread)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = next(iter(images_by_rate.items()))
        codec.compress(first[1][:1], first[0])  # warm-up (allocations, first-call costs)
        t0 = time.perf_counter()
        for rate, images in images_by_rate.items():
            codec.compress(images, rate)
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    n = sum(len(v) for v in images_by_rate.values())
    return {"images": n, "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 2)}


def _rate_table(
    codec: Any, originals: dict[str, np.ndarray], rows: list[dict], decoded_dir: Path
) -> list[dict[str, Any]]:
    """Per rate: measured bpp (from the Parquet rows) and PSNR of the decoded PNG files."""
    by_rate: dict[int, list[dict]] = {}
    for row in rows:
        if row["status"] == "ok":
            by_rate.setdefault(row["rate_index"], []).append(row)
    table = []
    for rate, rs in sorted(by_rate.items()):
        values = []
        for r in rs:
            shard = r["shard"].rsplit("/", 1)[1].removesuffix(".tar")
            decoded = load_image(decoded_dir / shard / f"{r['key']}.png")
            values.append(psnr(originals[r["key"]], decoded))
        pixels = sum(r["width"] * r["height"] for r in rs)
        table.append(
            {
                "rate": rate,
                "nominal_bpp": round(codec.ladder[rate].nominal_bpp, 5),
                "images": len(rs),
                "measured_bpp": round(8 * sum(r["bitstream_bytes"] for r in rs) / pixels, 5),
                "psnr_db": round(float(np.mean(values)), 2),
            }
        )
    return table


def _print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [headers, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        print("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


# -------------------------------------------------------------------------- demo


def _run_jobs(
    paths: list[Path], base: str, model_dir: str, out_dir: Path, res: Any, endpoint: str
) -> tuple[list[dict], list[str], EncodeReport, DecodeReport, DecodeReport]:
    """Steps 1-4 (servers up): shards in, encode, decode twice, outputs home."""
    from pipeline import storage
    from pipeline.contract import DecodeJob, EncodeJob
    from pipeline.parquet import read_table
    from pipeline.runner import run_decode, run_encode

    # 1. Shards + rates file in the bucket
    ensure_bucket(BUCKET)
    clear_prefix(base + "/")
    shards = pack_shards(paths, len(SHARD_RATES))
    for name, blob in shards.items():
        storage.put_bytes(f"{base}/in/{name}", blob)
    storage.put_bytes(f"{base}/rates.json", json.dumps(SHARD_RATES).encode())
    say(
        f"packed {len(paths)} images into {len(shards)} shards at {base}/in/ "
        f"(S3 endpoint {endpoint}); rates {SHARD_RATES}"
    )
    # 2. Encode
    say("encode-shards: starting actors, coding, writing Parquet to S3")
    encode = run_encode(
        EncodeJob(
            src=f"{base}/in/shard-{{000000..{len(shards) - 1:06d}}}.tar",
            out=f"{base}/enc",
            model_dir=model_dir,
            rates_file=f"{base}/rates.json",
            resources=res,
            progress=False,
        )
    )
    # 3. Decode: as shards to S3, and as files to the local output directory
    say(f"encode-shards done in {encode.summary.wall_seconds} s; decode-shards x2")
    parquets = [f"{base}/enc/*.parquet"]
    dec_s3 = run_decode(
        DecodeJob(parquets, f"{base}/dec", model_dir, resources=res, progress=False)
    )
    dec_files = run_decode(
        DecodeJob(
            parquets,
            str(out_dir / "decoded"),
            model_dir,
            as_files=True,
            resources=res,
            progress=False,
        )
    )
    # 4. Bring the Parquets and reports home
    (out_dir / "parquet").mkdir(exist_ok=True)
    parquet_urls = [u for u in storage.list_prefix(f"{base}/enc/") if u.endswith(".parquet")]
    for url in parquet_urls:
        (out_dir / "parquet" / url.rsplit("/", 1)[1]).write_bytes(storage.read_bytes(url))
    for name in ("job_report.json", "job_report.md"):
        (out_dir / name).write_bytes(storage.read_bytes(f"{base}/enc/{name}"))
    rows = [r for u in parquet_urls for r in read_table(u).drop(["bitstream"]).to_pylist()]
    dec_tars = [u for u in storage.list_prefix(f"{base}/dec/") if u.endswith(".tar")]
    return rows, dec_tars, encode, dec_s3, dec_files


def run_pipeline_demo(model: str | None, out: str, workers: int | None = None) -> int:
    from oscar_core import DEFAULT_MODEL_DIR, Codec
    from pipeline.contract import Resources

    t_start = time.perf_counter()
    model_dir = str(Path(model or DEFAULT_MODEL_DIR).resolve())
    out_dir = Path(out).resolve()
    for sub in ("parquet", "decoded"):  # outputs of this run only
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = sample_paths()
    originals = {p.stem: load_image(p) for p in paths}
    res = Resources(workers=workers, gpus_per_worker=0, cpus_per_worker=1)
    base = f"s3://{BUCKET}/{PREFIX}"

    t0 = time.perf_counter()
    with local_s3() as s3:
        s3_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        with local_ray(workers):
            ray_seconds = time.perf_counter() - t0
            rows, dec_tars, encode, dec_s3, dec_files = _run_jobs(
                paths, base, model_dir, out_dir, res, s3["AWS_ENDPOINT_URL"]
            )
    startup = {"s3_seconds": round(s3_seconds, 1), "ray_seconds": round(ray_seconds, 1)}
    # 5. Numbers (servers are down: nothing below needs them)
    codec = Codec.from_pretrained(model_dir)
    rate_rows = _rate_table(codec, originals, rows, out_dir / "decoded")
    by_rate: dict[int, list[np.ndarray]] = {}
    for r in rows:
        if r["status"] == "ok":
            by_rate.setdefault(r["rate_index"], []).append(originals[r["key"]])
    model_only = _model_only(codec, by_rate)
    s = encode.summary
    image_size = "{1}x{0}".format(*originals[paths[0].stem].shape)
    steady = [p.images_per_s for p in encode.per_shard if p.images_per_s]
    summary = {
        "model": {"dir": model_dir, "name": codec.model.config.name, "id": codec.model_id.hex()},
        "images": len(paths),
        "image_size": image_size,
        "encode": {
            k: getattr(s, k)
            for k in (
                "images",
                "images_error",
                "source_bytes",
                "bitstream_bytes",
                "ratio",
                "mean_bpp",
                "wall_seconds",
                "images_per_s",
                "nodes",
            )
        },
        "decode_to_s3": {"tars": len(dec_tars), **asdict(dec_s3.summary)},
        "decode_to_files": asdict(dec_files.summary),
        "per_rate": rate_rows,
        "images_per_s": {
            "model_only": model_only,
            "end_to_end_encode_shards": s.images_per_s,
            "per_shard_in_actor": steady,
        },
        "startup": startup,
        "outputs": str(out_dir),
        "demo_seconds": round(time.perf_counter() - t_start, 1),
    }
    (out_dir / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")

    # 6. Print
    print()
    print(
        f"model {codec.model.config.name} ({codec.model_id.hex()}), "
        f"{len(paths)} images {image_size}"
    )
    print(
        f"started the local S3 in {startup['s3_seconds']} s and Ray in {startup['ray_seconds']} s "
        "(not counted in any images/s below)"
    )
    print(
        f"encode-shards: {s.images} images ({s.images_error} errors), "
        f"{s.source_bytes} -> {s.bitstream_bytes} bytes (ratio {s.ratio}), "
        f"mean {s.mean_bpp} bpp, {s.wall_seconds} s, {s.images_per_s} images/s"
    )
    print(
        f"decode-shards: {dec_s3.summary.images_decoded} images to {len(dec_tars)} shards "
        f"at {base}/dec/, {dec_files.summary.images_decoded} to files in {out_dir / 'decoded'}"
    )
    for p in encode.per_shard:
        print(
            f"  {p.shard}: rate {p.rate}, {p.images} images, {p.errors} errors, "
            f"{p.seconds} s in the actor ({p.images_per_s} images/s), {p.worker}"
        )
    print("per rate (measured bpp from the Parquet rows, PSNR of the decoded PNGs vs originals):")
    _print_table(
        ["rate", "nominal bpp", "images", "measured bpp", "PSNR dB"],
        [
            [r["rate"], r["nominal_bpp"], r["images"], r["measured_bpp"], r["psnr_db"]]
            for r in rate_rows
        ],
    )
    print("images/s (encode):")
    _print_table(
        ["what", "images/s"],
        [
            ["model only: Codec.compress in-process, 1 thread", model_only["images_per_s"]],
            ["end to end: encode-shards job (actor start, S3, Parquet)", s.images_per_s],
            [
                "per shard inside an actor (read, decode PNG, code, write)",
                ", ".join(map(str, steady)),
            ],
        ],
    )
    print(
        f"outputs in {out_dir}: parquet/, decoded/ (+ decode_report.md), job_report.md, demo.json"
    )
    if codec.model.config.name == "oscar-tiny":
        print("(oscar-tiny is small and briefly trained: see docs/model-card.md for its quality)")
    return 0 if not encode.failed and not dec_s3.failed and not dec_files.failed else 1
