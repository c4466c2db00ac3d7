"""Issue 13, "nothing lost on real datasets": odd names, huge images, carried fields, re-runs.

On the session's real S3 server and Ray (``conftest.py``). One shard, encoded and decoded by
``oscar encode-shards`` / ``oscar decode-shards``, feeds the tests of items 1 and 3:

* item 1: member names that are not UTF-8 (``caf\\xe9.jpg``, as scraped tars hold) survive
  byte for byte: ``key`` text + exact ``key_bytes`` in the Parquet, the same bytes in the
  decoded tar, no failed shard;
* item 3: a carried ``x.png`` mask beside the ``x.jpg`` image, decoded ``--format png``,
  keeps its name and bytes; the image takes ``x.oscar.png`` and the listing says so;
* item 5 (last: it re-encodes that output): a re-run asking another rate, pixel limit or
  precision stops with exit 2 and one line naming the difference, before any work; with
  ``--overwrite`` it redoes the shard;
* item 2 (a worker on the same S3, no second Ray job): ``--format webp`` on a 16400 px wide
  image falls back to PNG and says so, a corrupt bitstream is an error entry, the rest of
  the shard is written;

and the property: random mixes of good samples and every bad kind (``mixed_shards.py``)
through encode and decode, every record once in the output or in the listing, every carried
field byte for byte, no shard failed. ``OSCAR_NOTHING_LOST_EXAMPLES`` (default 2, plus two
explicit examples holding every kind) sets how many random mixes; ``make soak`` runs 200.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from jobs.cli.main import main as cli_main
from oscar_core import get_config
from pipeline import parquet, storage, storage_s3
from pipeline.contract import DecodeTask, EncodeTask, WorkerConfig
from pipeline.report import read_notes, read_stats
from pipeline.worker import ShardWorker
from tests.pipeline.mixed_shards import (
    FAULTS,
    FORMATS,
    KINDS,
    MAX_PIXELS,
    build_shard,
    check,
    read_tar,
)
from tests.pipeline.shards import image_bytes, tar_bytes
from tests.s3_server import empty_and_delete_bucket

CPU = ["--workers", "1", "--gpus-per-worker", "0", "--cpus-per-worker", "1", "--no-progress"]
EXAMPLES = int(os.environ.get("OSCAR_NOTHING_LOST_EXAMPLES", "2"))
RATE = 5  # pads to 16 px: the 16400x2 image stays cheap to code


@dataclass
class Jobs:
    bucket: str
    src: str
    out: str
    dec: str
    model: str
    mask: bytes
    caption: bytes
    encode_rc: int
    decode_rc: int

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


@pytest.fixture(scope="module")
def jobs(s3_env, ray_cluster, tiny_model_dir) -> Iterator[Jobs]:
    bucket = f"test-lost-{uuid.uuid4().hex[:10]}"
    storage_s3.s3_client().create_bucket(Bucket=bucket)
    mask = image_bytes(48, 64, seed=7, mode="L")
    caption = "un caf\u00e9, s'il vous pla\u00eet".encode()
    entries = [
        (b"caf\xe9.jpg", image_bytes(48, 64, seed=1, fmt="JPEG")),
        (b"caf\xe9.txt", caption),
        (b"\xff\xfe/odd.png", image_bytes(32, 48, seed=2)),
        ("x.jpg", image_bytes(48, 64, seed=3, fmt="JPEG")),
        ("x.png", mask),  # a mask, carried beside the image
        ("x.txt", b"a caption"),
        ("plain.png", image_bytes(32, 32, seed=4)),
    ]
    src = f"s3://{bucket}/in/shard-000000.tar"
    storage.put_bytes(src, tar_bytes(entries, format=tarfile.GNU_FORMAT))  # raw name bytes
    out, dec = f"s3://{bucket}/enc", f"s3://{bucket}/dec"
    model = ["--model", tiny_model_dir]
    try:
        encode_rc = cli_main(["encode-shards", src, "--out", out, "--rate", "1", *model, *CPU])
        decode_rc = cli_main(["decode-shards", f"{out}/*.parquet", "--out", dec, *model, *CPU])
        yield Jobs(bucket, src, out, dec, tiny_model_dir, mask, caption, encode_rc, decode_rc)
    finally:
        storage_s3.reset_s3_client()
        empty_and_delete_bucket(bucket)


def rows_of(url: str) -> list[dict]:
    return parquet.read_table(url).to_pylist()


def test_non_utf8_member_names_round_trip(jobs):
    """Item 1: before, ``pa.Table.from_pylist`` raised UnicodeEncodeError on such a key, the
    shard was retried until it failed, and every row of it was lost."""
    assert (jobs.encode_rc, jobs.decode_rc) == (0, 0)
    rows = {r["key_bytes"]: r for r in rows_of(f"{jobs.out}/shard-000000.parquet")}
    assert list(rows) == [b"caf\xe9", b"\xff\xfe/odd", b"x", b"plain"]
    assert all(r["status"] == "ok" for r in rows.values())
    assert rows[b"caf\xe9"]["key"] == "caf\\xe9"  # the documented text form
    assert rows[b"\xff\xfe/odd"]["key"] == "\\xff\\xfe/odd"
    assert json.loads(rows[b"caf\xe9"]["metadata"]) == {"txt": jobs.caption.decode()}
    output = dict(read_tar(storage.read_bytes(f"{jobs.dec}/shard-000000.tar")))
    assert {b"caf\xe9.png", b"caf\xe9.txt", b"\xff\xfe/odd.png"} <= set(output)
    assert output[b"caf\xe9.txt"] == jobs.caption
    assert Image.open(io.BytesIO(output[b"caf\xe9.png"])).size == (64, 48)
    report = json.loads(storage.read_bytes(f"{jobs.out}/job_report.json"))
    assert report["failed"] == [] and report["summary"]["images_error"] == 0


def test_carried_field_with_the_format_s_name_is_kept(jobs):
    """Item 3: before, a field whose extension equals --format was skipped: the mask was
    lost. Now the image's source field is a column, the mask keeps ``x.png`` byte for
    byte, the decoded image is ``x.oscar.png``, and the listing and report say so."""
    (row,) = [r for r in rows_of(f"{jobs.out}/shard-000000.parquet") if r["key"] == "x"]
    assert row["image_field"] == "jpg"
    output = dict(read_tar(storage.read_bytes(f"{jobs.dec}/shard-000000.tar")))
    assert output[b"x.png"] == jobs.mask
    assert output[b"x.txt"] == b"a caption"
    decoded = Image.open(io.BytesIO(output[b"x.oscar.png"]))
    assert (decoded.format, decoded.size, decoded.mode) == ("PNG", (64, 48), "RGB")
    (note,) = read_notes(f"{jobs.dec}/shard-000000.errors")
    assert (note.index_in_shard, note.key, note.kind) == (2, "x", "renamed")
    assert "'png' kept" in note.reason and "'oscar.png'" in note.reason
    report = json.loads(storage.read_bytes(f"{jobs.dec}/decode_report.json"))
    assert report["summary"]["renamed"] == 1 and report["failed"] == []
    assert report["row_notes"] == [["shard-000000", "x", "renamed", note.reason]]


def test_decode_fallback_and_per_sample_errors(s3_bucket, worker):
    """Item 2: before, Pillow's ValueError for a WebP over 16383 px failed the whole shard.
    Now it is written as PNG and noted; a row whose bitstream is corrupt is an error entry;
    every other row is written."""
    base = f"s3://{s3_bucket}"
    entries = [
        ("a.png", image_bytes(32, 48, seed=1)),
        ("wide.png", image_bytes(2, 16400, seed=2, compress_level=1)),
        ("wide.txt", b"16400 px wide"),
        ("bad.png", image_bytes(32, 48, seed=3)),
        ("b.png", image_bytes(32, 48, seed=4)),
    ]
    storage.put_bytes(f"{base}/in/s.tar", tar_bytes(entries))
    encoded = f"{base}/enc/s.parquet"
    ladder = get_config("oscar-tiny").rate_ladder()
    worker.encode_shard(
        EncodeTask(f"{base}/in/s.tar", "s", encoded, f"{base}/enc/s.stats.json", ladder[RATE])
    )
    rows = rows_of(encoded)
    bad = rows[2]["bitstream"]
    rows[2]["bitstream"] = bad[:-1] + bytes([bad[-1] ^ 0xFF])  # the CRC no longer matches
    hostile = Path(os.environ.get("TMPDIR", "/tmp")) / f"hostile-{uuid.uuid4().hex}.parquet"
    with parquet.ShardParquetWriter(str(hostile)) as w:
        for r in rows:
            w.write(r)
    storage.atomic_put_file(f"{base}/enc/h.parquet", str(hostile))
    hostile.unlink()
    task = DecodeTask(
        f"{base}/enc/h.parquet", "h", f"{base}/dec/h.tar", "webp", errors_url=f"{base}/dec/h.errors"
    )
    result = worker.decode_shard(task)  # returns: no shard failure

    assert (result.rows, result.decoded) == (4, 3)
    output = dict(read_tar(storage.read_bytes(task.output)))
    assert sorted(output) == [b"a.webp", b"b.webp", b"wide.png", b"wide.txt"]
    assert Image.open(io.BytesIO(output[b"wide.png"])).size == (16400, 2)
    assert output[b"wide.txt"] == b"16400 px wide"
    notes = read_notes(task.errors_url)
    assert [(n.index_in_shard, n.key, n.kind) for n in notes] == [
        (1, "wide", "fallback"),
        (2, "bad", "error"),
    ]
    assert notes[0].reason.startswith("webp cannot hold this 16400x2 image (ValueError: ")
    assert notes[0].reason.endswith("written as png")
    assert notes[1].reason.startswith("BitstreamError: ") and "CRC" in notes[1].reason
    assert result.failures == [("bad", notes[1].reason)]


def test_rerun_with_another_definition_stops_unless_overwrite(jobs, capsys):
    """Item 5: before, a done shard was skipped whatever the new job asked, and its old rows
    were reported as done. Now its stats JSON records the definition; another one stops the
    job before any work (exit 2, one line naming the difference), ``--overwrite`` redoes."""
    stats_url = f"{jobs.out}/shard-000000.stats.json"
    recorded = read_stats(stats_url).definition
    assert recorded["rate_index"] == 1 and recorded["max_pixels"] == 64_000_000
    assert recorded["precision"] == "fp32" and len(recorded["model_sha256"]) == 64
    assert {"codec_version", "bitstream_version", "schema_version"} <= set(recorded)
    before = {u: storage.read_bytes(u) for u in (stats_url, f"{jobs.out}/job_config.json")}
    argv = ["encode-shards", jobs.src, "--out", jobs.out, "--model", jobs.model, *CPU]
    capsys.readouterr()
    for extra, difference in [
        (["--rate", "3"], "rate_index 1 -> 3; nominal_bpp 0.009765625 -> 0.04296875"),
        (["--rate", "1", "--max-pixels", "1000000"], "max_pixels 64000000 -> 1000000"),
    ]:
        assert cli_main([*argv, *extra]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line == (
            f"oscar: error: encode-shards: {stats_url}: shard shard-000000 was done with "
            f"another definition: {difference}; pass --overwrite to redo, or write to another --out"
        )
    assert {u: storage.read_bytes(u) for u in before} == before  # nothing written
    assert cli_main([*argv, "--rate", "1"]) == 0  # the same definition: skipped
    assert "0 shards done now, 1 before" in capsys.readouterr().out
    assert cli_main([*argv, "--rate", "3", "--overwrite"]) == 0
    assert read_stats(stats_url).definition["rate_index"] == 3
    assert {r["rate_index"] for r in rows_of(f"{jobs.out}/shard-000000.parquet")} == {3}


# ------------------------------------------------------------------------ the property


@pytest.fixture(scope="module")
def worker(tiny_model_dir: str) -> ShardWorker:
    config = WorkerConfig(tiny_model_dir, batch_size=4, max_pixels=MAX_PIXELS, chunk_batches=1)
    return ShardWorker(config)


def encode_and_decode(worker: ShardWorker, base: str, tar: bytes, fmt: str) -> tuple:
    """The shard through ``encode_shard`` and ``decode_shard`` on S3: (Parquet rows,
    decoded tar members, listing as dicts)."""
    storage.put_bytes(f"{base}/in/s.tar", tar)
    ladder = get_config("oscar-tiny").rate_ladder()
    enc = EncodeTask(
        f"{base}/in/s.tar", "s", f"{base}/enc/s.parquet", f"{base}/enc/s.stats.json", ladder[RATE]
    )
    worker.encode_shard(enc)
    dec = DecodeTask(
        enc.parquet_url, "s", f"{base}/dec/s.tar", fmt, errors_url=f"{base}/dec/s.errors"
    )
    worker.decode_shard(dec)  # a shard failure would raise here
    columns = ["index_in_shard", "key", "key_bytes", "status"]
    rows = parquet.read_table(enc.parquet_url, columns=columns).to_pylist()
    notes = [vars(n) for n in read_notes(dec.errors_url)]
    return rows, read_tar(storage.read_bytes(dec.output)), notes


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written into the repo
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=8),
    fault=st.sampled_from(FAULTS),
    fmt=st.sampled_from(FORMATS),
    seed=st.integers(0, 2**31 - 1),
)
@example(kinds=list(KINDS), fault="truncated_last", fmt="webp", seed=0)
@example(kinds=[k for k in KINDS if k != "wide"], fault="no_eoa", fmt="png", seed=1)
def test_every_sample_and_field_survives_random_mixes(worker, s3_bucket, kinds, fault, fmt, seed):
    shard = build_shard(kinds, seed, fault)
    base = f"s3://{s3_bucket}/{uuid.uuid4().hex[:8]}"
    rows, output, notes = encode_and_decode(worker, base, shard.tar, fmt)
    problems = check(shard.records, rows, output, notes, fmt)
    assert problems == [], "\n".join([f"kinds={kinds} fault={fault} fmt={fmt}", *problems])


def test_the_oracle_catches_what_it_must(worker, s3_bucket):
    """``check`` is not vacuous: a lost row, a changed carried field, a field missing from
    the output and an unlisted error are each reported."""
    shard = build_shard(["good", "clash", "zero"], seed=3)
    rows, output, notes = encode_and_decode(worker, f"s3://{s3_bucket}/o", shard.tar, "png")
    assert check(shard.records, rows, output, notes, "png") == []
    assert "index_in_shard" in check(shard.records, rows[:2], output, notes, "png")[0]
    changed = [(n, d + b"!" if n == b"k001.png" else d) for n, d in output]
    assert check(shard.records, rows, changed, notes, "png") == [
        "row 1 (clash, key b'k001'): carried field b'png' changed"
    ]
    dropped = [(n, d) for n, d in output if n != b"k000.txt"]
    assert "output fields" in check(shard.records, rows, dropped, notes, "png")[0]
    unlisted = [n for n in notes if n["kind"] != "encode_error"]
    assert "an error row, listed as []" in check(shard.records, rows, output, unlisted, "png")[0]
