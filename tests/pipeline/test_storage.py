"""Tests for pipeline.storage against local directories and a real S3 server (Ceph radosgw).

Most behaviours run twice through the ``root`` fixture (conftest.py): once under a tmp dir
and once under a fresh bucket, so both backends are held to one contract.  The s3 variants need the server
from ``infra/local_s3`` (see conftest.py); local-only selections never start it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tracemalloc
from pathlib import Path

import pytest

from pipeline import storage, storage_s3
from pipeline.storage_base import Location, StorageError, parse_url

MiB = 1 << 20


def _payload(n: int) -> bytes:
    # Non-repeating content so an offset or chunk-order bug changes the digest.
    return b"".join(hashlib.sha256(i.to_bytes(8, "little")).digest() for i in range(n // 32))


# ------------------------------------------------------------------------- parse_url


def test_parse_url() -> None:
    assert parse_url("s3://bkt/a/b.tar") == Location("s3", "bkt", "a/b.tar")
    assert parse_url("s3://bkt") == Location("s3", "bkt", "")
    assert parse_url("/data/x.tar") == Location("file", "", "/data/x.tar")
    assert parse_url("file:///data/x.tar").path == "/data/x.tar"
    assert parse_url("rel/x.tar").path == "rel/x.tar"
    assert parse_url("s3://bkt/k").url == "s3://bkt/k"


@pytest.mark.parametrize("url", ["gs://bkt/x", "http://host/x.tar", "s3:///nobucket"])
def test_parse_url_rejects(url: str) -> None:
    with pytest.raises(ValueError, match=re.escape(url)):
        parse_url(url)


# --------------------------------------------------------------------- expand_shards


def _make_shards(root: str, names: list[str]) -> None:
    for name in names:
        storage.put_bytes(f"{root}/{name}", name.encode())


def test_expand_brace(root: str) -> None:
    spec = f"{root}/in/{{000000..000009}}.tar"
    urls = storage.expand_shards(spec)
    assert urls == [f"{root}/in/{i:06d}.tar" for i in range(10)]
    # Overlapping ranges are de-duplicated and the result sorted.
    overlapping = f"{root}/in/{{{{3..4}},{{1..3}}}}.tar"  # -> {{3..4},{1..3}}
    assert storage.expand_shards(overlapping) == [f"{root}/in/{i}.tar" for i in (1, 2, 3, 4)]


def test_expand_glob(root: str) -> None:
    _make_shards(root, ["in/b.tar", "in/a.tar", "in/c.txt", "in/sub/d.tar", "other/e.tar"])
    # '*' matches within one path segment only, on both backends.
    assert storage.expand_shards(f"{root}/in/*.tar") == [f"{root}/in/a.tar", f"{root}/in/b.tar"]
    assert storage.expand_shards(f"{root}/in/*/*.tar") == [f"{root}/in/sub/d.tar"]
    assert storage.expand_shards(f"{root}/in/[ab].tar") == [f"{root}/in/a.tar", f"{root}/in/b.tar"]
    with pytest.raises(ValueError, match=r"in/\*\.zip"):
        storage.expand_shards(f"{root}/in/*.zip")


def test_expand_txt_list(root: str) -> None:
    _make_shards(root, ["in/a.tar", "in/b.tar", "in/c.tar"])
    listing = "\n".join(
        [
            "# shards for the test run",
            f"{root}/in/c.tar",
            "",
            f"   {root}/in/a.tar   ",
            f"{root}/in/c.tar",  # duplicate
            f"{root}/in/{{b,a}}.tar",  # patterns are allowed on a line, too
            "   # indented comment",
        ]
    )
    storage.put_bytes(f"{root}/list.txt", listing.encode())
    assert storage.expand_shards(f"{root}/list.txt") == [
        f"{root}/in/{n}.tar" for n in ("a", "b", "c")
    ]
    storage.put_bytes(f"{root}/empty.txt", b"# nothing\n\n")
    with pytest.raises(ValueError, match="empty.txt"):
        storage.expand_shards(f"{root}/empty.txt")


def test_expand_file_scheme(tmp_path: Path) -> None:
    (tmp_path / "x.tar").write_bytes(b"x")
    assert storage.expand_shards(f"file://{tmp_path}/*.tar") == [f"file://{tmp_path}/x.tar"]


# ------------------------------------------------------------------ streaming reads


def test_open_read_streams_20mb(root: str) -> None:
    data = _payload(20 * MiB)
    url = f"{root}/big/blob.bin"
    storage.put_bytes(url, data)
    expected = hashlib.sha256(data).hexdigest()
    del data
    digest = hashlib.sha256()
    chunks = 0
    # Streaming means memory stays at a few chunks, far below the 20 MB object.
    tracemalloc.start()
    try:
        with storage.open_read(url) as f:
            while chunk := f.read(MiB):
                assert len(chunk) <= MiB
                digest.update(chunk)
                chunks += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert chunks >= 20
    assert digest.hexdigest() == expected
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB while streaming"


def test_open_read_missing(root: str) -> None:
    with pytest.raises(StorageError, match="nope.bin") as ei:
        storage.open_read(f"{root}/nope.bin")
    assert ei.value.url == f"{root}/nope.bin"


# ------------------------------------------------------------------- atomic publish


def test_atomic_put(root: str) -> None:
    url = f"{root}/out/result.parquet"
    storage.atomic_put(url, b"v1")
    storage.atomic_put(url, b"version 2")  # replacing is atomic too
    assert storage.read_bytes(url) == b"version 2"
    # No temp objects / files left next to the result.
    assert storage.list_prefix(f"{root}/out/") == [url]
    if not url.startswith("s3://"):
        assert os.listdir(os.path.dirname(url)) == ["result.parquet"]


def _start_multipart(url: str) -> str:
    """What a writer SIGKILLed inside a multipart upload leaves: an upload with one part,
    never completed nor aborted. Returns its upload id."""
    bucket, _, key = url.removeprefix("s3://").partition("/")
    client = storage_s3.s3_client()
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"p" * MiB)
    return upload


def _open_uploads(root: str) -> list[str]:
    bucket = root.removeprefix("s3://")
    uploads = storage_s3.s3_client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return sorted(u["Key"] for u in uploads)


def test_remove_stale_temps(root: str) -> None:
    """A writer killed inside atomic_put leaves a temp (a local temp file; an unfinished S3
    multipart upload); the sweep removes exactly those of the given target (not the result,
    not another target's)."""
    url = f"{root}/out/a.parquet"
    storage.atomic_put(url, b"done")
    if url.startswith("s3://"):
        uploads = sorted(_start_multipart(url) for _ in range(2))
        _start_multipart(f"{root}/out/a.parquet2")  # another key sharing the prefix
        stale = [f"{url}#upload={u}" for u in uploads]
        assert storage.remove_stale_temps(url) == stale
        assert _open_uploads(root) == ["out/a.parquet2"]
    else:  # what LocalStorage's temp file leaves
        d = os.path.dirname(url)
        stale = [os.path.join(d, ".a.parquet.tmp-x1y2"), os.path.join(d, ".a.parquet.tmp-z3")]
        other = os.path.join(d, ".ab.parquet.tmp-q9")
        for u in (*stale, other):
            Path(u).write_bytes(b"partial")
        assert storage.remove_stale_temps(url) == sorted(stale)
        assert storage.exists(other)
    assert storage.read_bytes(url) == b"done"
    assert storage.remove_stale_temps(url) == []


def test_s3_publish_writes_the_final_key_only(s3_bucket: str, tmp_path: Path) -> None:
    """Issue 13 item 8: S3 replaces an object atomically on a PUT and on a completed
    multipart upload, so a publish writes the final key directly: no temp key, no
    server-side copy, no delete. Shown on the real server: the S3 calls each publish makes
    (botocore's own event hooks), and a reader during a multipart upload of a new version
    sees the old object whole, then the new one whole."""
    url = f"s3://{s3_bucket}/out/shard-000000.tar"
    calls: list[tuple[str, str]] = []

    def record(model, params, **_):  # noqa: ANN001, ANN003 - botocore's hook signature
        calls.append((model.name, params.get("Key", "")))

    client = storage_s3.s3_client()
    client.meta.events.register("before-parameter-build.s3", record)
    try:
        storage.atomic_put(url, b"v1")
        big = tmp_path / "v2.bin"
        big.write_bytes(_payload(20 * MiB))  # above boto3's 8 MiB multipart threshold
        storage.atomic_put_file(url, str(big))
    finally:
        client.meta.events.unregister("before-parameter-build.s3", record)
    ops = {op for op, _ in calls}
    assert {"PutObject", "CreateMultipartUpload", "CompleteMultipartUpload"} <= ops
    assert not ops & {"CopyObject", "UploadPartCopy", "DeleteObject"}
    assert {key for _, key in calls} == {"out/shard-000000.tar"}
    assert storage.read_bytes(url) == big.read_bytes()
    # Mid-upload, the key still holds the previous version, whole.
    bucket, key = s3_bucket, "out/shard-000000.tar"
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    part = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"v3")
    assert storage.read_bytes(url) == big.read_bytes()
    assert storage.list_prefix(f"s3://{bucket}/out/") == [url]
    parts = {"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]}
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload=parts)
    assert storage.read_bytes(url) == b"v3"


def test_atomic_put_file(root: str, tmp_path: Path) -> None:
    # 20 MB: above boto3's 8 MB multipart threshold, so the multipart path is exercised.
    data = _payload(20 * MiB)
    src = tmp_path / "local.bin"
    src.write_bytes(data)
    url = f"{root}/out/shard-000000.tar"
    storage.atomic_put_file(url, str(src))
    assert hashlib.sha256(storage.read_bytes(url)).digest() == hashlib.sha256(data).digest()
    assert storage.list_prefix(f"{root}/out/") == [url]


# ---------------------------------------------------------- exists / list / delete


def test_exists_list_delete(root: str) -> None:
    names = ["p/a.bin", "p/b.bin", "p/sub/c.bin", "q/d.bin"]
    _make_shards(root, names)
    assert storage.exists(f"{root}/p/a.bin")
    assert not storage.exists(f"{root}/p/zzz.bin")
    assert storage.list_prefix(f"{root}/p/") == [f"{root}/{n}" for n in names[:3]]
    assert storage.list_prefix(f"{root}/p/a") == [f"{root}/p/a.bin"]  # a string prefix
    assert storage.list_prefix(f"{root}/nothing-here/") == []
    storage.delete(f"{root}/p/a.bin")
    storage.delete(f"{root}/p/a.bin")  # idempotent, as on S3
    assert not storage.exists(f"{root}/p/a.bin")
    assert storage.list_prefix(f"{root}/p/") == [f"{root}/{n}" for n in names[1:3]]


def test_exists_missing_bucket(s3_env: dict[str, str]) -> None:
    assert not storage.exists("s3://no-such-bucket-oscar/x")


# ------------------------------------------------------------------ check_writable


def test_check_writable_ok(root: str) -> None:
    storage.check_writable(f"{root}/out/")
    storage.check_writable(f"{root}/out2")
    assert storage.list_prefix(f"{root}/") == []  # the probe was deleted


def test_check_writable_missing_bucket(s3_env: dict[str, str]) -> None:
    with pytest.raises(StorageError) as ei:
        storage.check_writable("s3://no-such-bucket-oscar/out/")
    msg = str(ei.value)
    assert "s3://no-such-bucket-oscar/out/" in msg and "bucket does not exist" in msg
    assert ei.value.code == "NoSuchBucket"


@pytest.mark.parametrize(
    ("var", "code"),
    [
        ("AWS_SECRET_ACCESS_KEY", "SignatureDoesNotMatch"),
        ("AWS_ACCESS_KEY_ID", "InvalidAccessKeyId"),
    ],
)
def test_check_writable_bad_credentials(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch, var: str, code: str
) -> None:
    monkeypatch.setenv(var, "wrong-value-1234")
    storage_s3.reset_s3_client()
    try:
        with pytest.raises(StorageError) as ei:
            storage.check_writable(f"s3://{s3_bucket}/out/")
    finally:
        monkeypatch.undo()
        storage_s3.reset_s3_client()
    msg = str(ei.value)
    assert f"s3://{s3_bucket}/out/" in msg and "bad credentials" in msg
    assert ei.value.code == code
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in msg  # never leak the secret


def test_check_writable_unreachable_endpoint(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("OSCAR_S3_MAX_ATTEMPTS", "1")
    storage_s3.reset_s3_client()
    try:
        with pytest.raises(StorageError, match=r"s3://b/out/.*(connect|Connect)"):
            storage.check_writable("s3://b/out/")
    finally:
        monkeypatch.undo()
        storage_s3.reset_s3_client()


def test_check_writable_local_not_a_dir(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    target = str(tmp_path / "file" / "out")
    with pytest.raises(StorageError, match="write check failed") as ei:
        storage.check_writable(target)
    assert ei.value.url == target


def test_storage_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(StorageError("s3://b/k", "boom", "X")))
    assert (err.url, err.reason, err.code, str(err)) == ("s3://b/k", "boom", "X", "s3://b/k: boom")
