"""The job reports (pipeline/report.py): typed in Python, and the JSON and markdown documents
they write keep their keys, order and values (tools read job_report.json by key)."""

from __future__ import annotations

import json

from pipeline import report
from pipeline.contract import NOTE_ERROR, NOTE_RENAMED, DecodeNote, DecodeResult, ShardResult


class _Task:  # what JobReport.finish reads of a failed task
    name, attempt = "gone", 3


def shard_result(name: str, samples: int, errors: int) -> ShardResult:
    worker = {"pid": 7, "device": "cpu", "node_id": "n1"}
    result = ShardResult(f"s3://b/{name}.tar", name, f"s3://o/{name}.parquet", 2, 0.1)
    result.samples, result.ok, result.errors = samples, samples - errors, errors
    result.source_bytes, result.bitstream_bytes, result.pixels = 4000, 100, 800
    result.seconds, result.model_seconds, result.worker = 2.0, 1.0, worker
    result.error_kinds = {"bad image": errors}
    return result


def test_encode_report_writes_the_job_report_keys(tmp_path):
    results = [shard_result("a", 5, 1), shard_result("b", 3, 0)]
    encode = report.EncodeReport.finish(
        str(tmp_path),
        "2026-12-01T00:00:00+0000",
        [(_Task(), "no such object")],
        [{"pid": 7}],
        shards=report.EncodeShards(total=4, done_before=0, processed=2, failed=1, not_run=1),
        summary=report.encode_summary(results, 4.0),
        per_shard=[report.EncodeShardLine.of(r) for r in results],
    )
    report.write_job_report(str(tmp_path), encode)
    doc = json.loads((tmp_path / "job_report.json").read_text())
    assert list(doc) == sorted(
        ["command", "out", "started_at", "finished_at", "shards", "summary", "failed"]
        + ["per_shard", "workers"]
    )
    assert doc["command"] == "encode-shards" and doc["failed"] == [["gone", 3, "no such object"]]
    assert doc["shards"] == {
        "total": 4,
        "done_before": 0,
        "processed": 2,
        "failed": 1,
        "not_run": 1,
    }
    assert doc["summary"] == {
        "shards": 2,
        "images": 8,
        "images_ok": 7,
        "images_error": 1,
        "source_bytes": 8000,
        "bitstream_bytes": 200,
        "ratio": 40.0,
        "mean_bpp": 1.0,
        "wall_seconds": 4.0,
        "images_per_s": 2.0,
        "model_images_per_s_per_worker": 4.0,
        "nodes": 1,
        "error_kinds": {"bad image": 1},
    }
    assert doc["per_shard"][0] == {
        "shard": "a",
        "rate": 2,
        "images": 5,
        "errors": 1,
        "seconds": 2.0,
        "images_per_s": 2.5,
        "attempt": 1,
        "worker": "pid 7 cpu",
    }
    md = (tmp_path / "job_report.md").read_text()
    assert "- shards: total 4, done before 0, processed 2, failed 1, not run 1\n" in md
    assert "| shard | rate | images | errors | seconds | images_per_s | attempt | worker |" in md
    assert "| gone | 3 | no such object |" in md and "| bad image | 1 |" in md


def test_decode_report_writes_the_decode_report_keys(tmp_path):
    result = DecodeResult("s3://o/a.parquet", "a", "s3://d/a.tar", rows=3, decoded=1, seconds=0.5)
    result.notes = [DecodeNote(0, "x", NOTE_ERROR, "bad"), DecodeNote(2, "y", NOTE_RENAMED, "r")]
    decode = report.DecodeReport.finish(
        str(tmp_path),
        "2026-12-01T00:00:00+0000",
        [],
        [],
        shards=report.DecodeShards(total=1, processed=1, failed=0),
        summary=report.decode_summary([result], 2.0),
        per_shard=[report.DecodeShardLine.of(result)],
        row_failures=[["a", k, why] for k, why in result.failures],
        row_notes=[["a", "y", NOTE_RENAMED, "r"]],
    )
    report.write_job_report(str(tmp_path), decode, stem="decode_report")
    doc = json.loads((tmp_path / "decode_report.json").read_text())
    assert doc["command"] == "decode-shards"
    assert doc["shards"] == {"total": 1, "processed": 1, "failed": 0}
    assert list(doc["summary"]) == sorted(
        ["parquets", "rows", "images_decoded", "rows_skipped_error", "failures", "fallbacks"]
        + ["renamed", "bytes_out", "wall_seconds", "images_per_s"]
    )
    assert (doc["summary"]["failures"], doc["summary"]["renamed"]) == (1, 1)
    assert doc["per_shard"] == [
        {
            "parquet": "a",
            "rows": 3,
            "decoded": 1,
            "failures": 1,
            "fallbacks": 0,
            "renamed": 1,
            "seconds": 0.5,
        }
    ]
    assert doc["row_failures"] == [["a", "x", "bad"]]
    assert doc["row_notes"] == [["a", "y", "renamed", "r"]]
    assert (doc["failed"], doc["workers"]) == ([], [])
