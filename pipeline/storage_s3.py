"""The S3 backend of ``Storage`` (``s3://bucket/key``), on boto3.

One process-wide boto3 client (``s3_client``; rebuilt after fork, thread-safe). Endpoint
(``AWS_ENDPOINT_URL``), region and credentials come from boto3's default chain and are never
logged. Botocore's adaptive retry mode retries throttling (503 SlowDown), 5xx and dropped
connections with exponential backoff, up to ``OSCAR_S3_MAX_ATTEMPTS`` (default 5) attempts.
Errors become ``StorageError(url, reason, code)``: the S3 error code, with a hint for the
codes a user can fix (missing bucket, denied access, bad credentials).

Writing streams to the final key directly (``open_write``, hence ``atomic_put*``): up to
``PART_BYTES`` is one PUT, more is a multipart upload of ``PART_BYTES`` parts sent as they
fill, so a writer holds one part in memory whatever the object's size. S3 replaces an object
atomically on a PUT and on a completed multipart upload: nothing appears at the key before
``publish``, and a failed writer aborts its upload.

Why boto3 and not ``pyarrow.fs.S3FileSystem`` (measured with ``oscar bench --sections 8``,
see docs/pipeline.md): pyarrow's input stream issues one ranged GET per ``read()`` unless
buffered, and buffered it read at 0.4-0.7x of this backend; its errors are message strings,
with no error code to map to our hints.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import logging
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .storage_base import ObjectWriter, Storage, StorageError, parse_url

log = logging.getLogger(__name__)

# Friendly explanations for the S3 error codes a user can fix themselves.
_DENIED = "access denied (check the bucket policy / user permissions)"
_HINTS = {
    "NoSuchBucket": "the bucket does not exist",
    **dict.fromkeys(["NoSuchKey", "404"], "no such object"),
    **dict.fromkeys(["AccessDenied", "403"], _DENIED),
    "InvalidAccessKeyId": "bad credentials: the server does not know this access key",
    "SignatureDoesNotMatch": "bad credentials: the secret key does not match",
}
_MISSING = ("404", "NoSuchKey", "NoSuchBucket")
_GLOB_CHARS = re.compile(r"[*?\[]")
_READ_BUFFER = 1 << 20
# A multipart part (all but the last must be >= 5 MiB in S3); boto3's own default chunk.
PART_BYTES = 8 << 20

# --------------------------------------------------------------------------- S3 client

_client_lock = threading.Lock()
_client: tuple[int, Any] | None = None  # (pid, client): a forked child must build its own


def s3_client() -> Any:
    """The process-wide boto3 S3 client (thread-safe; rebuilt after fork).

    Adaptive retries absorb throttling (503 SlowDown) from the store when many workers hit
    it at once.
    """
    global _client
    with _client_lock:
        if _client is None or _client[0] != os.getpid():
            attempts = int(os.environ.get("OSCAR_S3_MAX_ATTEMPTS", "5"))
            config = Config(
                retries={"max_attempts": attempts, "mode": "adaptive"},
                connect_timeout=10,
                read_timeout=120,
                max_pool_connections=32,
            )
            # A fresh Session per client: the default session is not thread-safe.
            _client = (os.getpid(), boto3.session.Session().client("s3", config=config))
        return _client[1]


def reset_s3_client() -> None:
    """Forget the cached client (e.g. after the credentials in the environment changed)."""
    global _client
    with _client_lock:
        _client = None


@contextlib.contextmanager
def _errors(url: str, action: str) -> Iterator[None]:
    """Translate botocore errors into StorageError naming the URL."""
    try:
        yield
    except ClientError as e:
        err = e.response.get("Error", {})
        code = str(err.get("Code", "Unknown"))
        detail = _HINTS.get(code) or err.get("Message") or code
        raise StorageError(url, f"{action} failed: {detail} [{code}]", code) from e
    except BotoCoreError as e:
        # EndpointConnectionError, NoCredentialsError, timeouts: str(e) holds no secrets.
        raise StorageError(url, f"{action} failed: {e}", type(e).__name__) from e


def _split(url: str) -> tuple[str, str]:
    loc = parse_url(url)
    try:
        loc.key.encode("utf-8")
    except UnicodeEncodeError:  # a name from a tar that is not UTF-8 (samples.name_bytes)
        raise ValueError(f"{url!r}: an S3 object name must be UTF-8") from None
    return loc.bucket, loc.key


def _listing(bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    """The ``list_objects_v2`` entry of every object under ``prefix`` (all pages)."""
    with _errors(f"s3://{bucket}/{prefix}", "list"):
        pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            yield from page.get("Contents", [])


class _Body(io.RawIOBase):
    """The ``get_object()["Body"]`` stream as a standard raw file.

    Why not return the StreamingBody itself: its ``__enter__`` hands out the bare urllib3
    response, so ``with open_read(u) as f`` would skip botocore's content-length check;
    and read errors should become StorageError naming the URL.
    """

    def __init__(self, url: str, body: Any) -> None:
        self._url = url
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        with _errors(self._url, "read"):
            return self._body.readinto(b)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class _Ranged(io.RawIOBase):
    """A seekable raw file over one S3 object: each ``readinto`` is one ranged GET of
    exactly the bytes asked for (wrapped in a BufferedReader, that is at least the buffer
    size). The object's size comes from one HEAD at open."""

    def __init__(self, url: str, size: int) -> None:
        self._url = url
        self._bucket, self._key = _split(url)
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"{self._url}: negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, b: Any) -> int:
        n = min(len(b), self._size - self._pos)
        if n <= 0:
            return 0
        rng = f"bytes={self._pos}-{self._pos + n - 1}"
        with _errors(self._url, "read"):
            obj = s3_client().get_object(Bucket=self._bucket, Key=self._key, Range=rng)
            data = obj["Body"].read()
        if len(data) != n:
            raise StorageError(self._url, f"read failed: asked {rng}, got {len(data)} bytes")
        b[:n] = data
        self._pos += n
        return n


class _Upload(ObjectWriter):
    """One PUT when the object fits in a part, else a multipart upload: a part is sent as
    soon as ``PART_BYTES`` are buffered (the buffer itself, no copy), ``publish`` sends the
    rest and completes (the key appears then), ``discard`` aborts. A writer that is dropped or killed leaves an
    unfinished upload, invisible at the key (``remove_stale_temps`` aborts it)."""

    def __init__(self, url: str) -> None:
        bucket, key = _split(url)
        self.url, self._where = url, {"Bucket": bucket, "Key": key}
        self._buffer, self._parts, self._open, self._published = bytearray(), [], True, False
        self._upload_id: str | None = None

    def write(self, data: bytes) -> int:
        if self._published:
            raise ValueError(f"{self.url}: write after publish")
        if self._open:  # after discard, dropped
            self._buffer += data
            if len(self._buffer) >= PART_BYTES:
                self._send_part()
        return len(data)

    def _send_part(self) -> None:
        with _errors(self.url, "multipart upload"):
            if self._upload_id is None:
                self._upload_id = s3_client().create_multipart_upload(**self._where)["UploadId"]
            number, body, self._buffer = len(self._parts) + 1, self._buffer, bytearray()
            etag = s3_client().upload_part(
                **self._where, UploadId=self._upload_id, PartNumber=number, Body=body
            )["ETag"]
        self._parts.append({"PartNumber": number, "ETag": etag})

    def publish(self) -> None:
        if not self._open:
            raise ValueError(f"{self.url}: publish after publish or discard")
        try:
            if self._upload_id is None:
                with _errors(self.url, "put"):
                    s3_client().put_object(**self._where, Body=self._buffer)
            else:
                if self._buffer:
                    self._send_part()
                with _errors(self.url, "complete multipart upload"):
                    s3_client().complete_multipart_upload(
                        **self._where,
                        UploadId=self._upload_id,
                        MultipartUpload={"Parts": self._parts},
                    )
                self._upload_id = None
            self._published = True
        finally:
            self.discard()

    def discard(self) -> None:
        upload, self._upload_id = self._upload_id, None
        self._open, self._buffer = False, bytearray()
        if upload is not None:
            try:
                with _errors(self.url, "abort multipart upload"):
                    s3_client().abort_multipart_upload(**self._where, UploadId=upload)
            except StorageError as exc:  # the job's remove_stale_temps sweep retries it
                log.warning("%s", exc)


class S3Storage(Storage):
    """Objects in an S3-compatible store."""

    def open_read(self, url: str) -> BinaryIO:
        """The HTTP body is read as consumed through a 1 MiB buffer."""
        bucket, key = _split(url)
        with _errors(url, "open"):
            body = s3_client().get_object(Bucket=bucket, Key=key)["Body"]
        return cast(BinaryIO, io.BufferedReader(_Body(url, body), buffer_size=_READ_BUFFER))

    def open_seekable(self, url: str) -> BinaryIO:
        """Ranged GETs through a 1 MiB buffer: a Parquet reader fetches the footer, then
        only the row groups and columns it reads."""
        return cast(BinaryIO, io.BufferedReader(_Ranged(url, self.size(url)), _READ_BUFFER))

    def exists(self, url: str) -> bool:
        bucket, key = _split(url)
        try:
            with _errors(url, "head"):
                s3_client().head_object(Bucket=bucket, Key=key)
        except StorageError as e:
            if e.code in _MISSING:
                return False
            raise
        return True

    def size(self, url: str) -> int:
        bucket, key = _split(url)
        with _errors(url, "head"):
            return int(s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"])

    def list_prefix(self, url: str) -> list[str]:
        bucket, prefix = _split(url)
        return sorted(f"s3://{bucket}/{o['Key']}" for o in _listing(bucket, prefix))

    def glob(self, pattern: str) -> list[str]:
        """Match keys like the shell: ``*`` and ``?`` never cross a ``/``."""
        bucket, key = _split(pattern)
        first_glob = _GLOB_CHARS.search(key)
        prefix = key[: first_glob.start()] if first_glob else key  # list as little as we can
        parts = key.split("/")
        out = []
        for obj in _listing(bucket, prefix):
            kparts = obj["Key"].split("/")
            if len(kparts) == len(parts) and all(map(fnmatch.fnmatchcase, kparts, parts)):
                out.append(f"s3://{bucket}/{obj['Key']}")
        return out

    # Why no temp key: a PUT, and a multipart upload once completed, replace the object
    # atomically in S3 (a reader sees the old object or the whole new one, never a part), so
    # the final key is written directly: one upload, no server-side copy, no temp to delete.
    def open_write(self, url: str) -> ObjectWriter:
        return _Upload(url)

    def delete(self, url: str) -> None:
        bucket, key = _split(url)
        with _errors(url, "delete"):
            s3_client().delete_object(Bucket=bucket, Key=key)

    def remove_stale_temps(self, url: str) -> list[str]:
        """Abort the unfinished multipart uploads to exactly this key: a writer killed in a
        multipart upload leaves its parts stored (and billed) but invisible to GET and LIST
        until aborted. Returns ``<url>#upload=<id>`` for each one aborted."""
        bucket, key = _split(url)
        client, aborted = s3_client(), []
        with _errors(url, "list multipart uploads"):
            pages = client.get_paginator("list_multipart_uploads").paginate(
                Bucket=bucket, Prefix=key
            )
            uploads = [u for page in pages for u in page.get("Uploads", []) if u["Key"] == key]
        for upload in uploads:
            with _errors(url, "abort multipart upload"):
                client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
            aborted.append(f"{url}#upload={upload['UploadId']}")
        return aborted

    def check_writable(self, url: str) -> None:
        """Write and delete a probe object: catches a missing bucket, denied access, bad
        credentials and an unreachable endpoint alike."""
        bucket, key = _split(url)
        probe = f".oscar-write-probe-{uuid.uuid4().hex}"
        key = key + probe if not key or key.endswith("/") else f"{key}/{probe}"
        with _errors(url, "write check"):
            s3_client().put_object(Bucket=bucket, Key=key, Body=b"probe")
            s3_client().delete_object(Bucket=bucket, Key=key)

    def escapes(self, root: str, url: str) -> str | None:
        return None

    def local_model_dir(self, url: str, cache_root: str) -> str:
        """Every object under ``prefix/`` is downloaded once per node into
        ``<cache_root>/<last part>-<digest>/``, where the digest covers the URL and each
        object's key, ETag and size: a re-uploaded model gets a new directory, an unchanged
        one is reused without a download (one listing per call). Concurrent callers
        (several actors on one node) each download to a temp directory and the first
        rename wins. Keys are checked like untrusted paths (no ``..``).
        """
        bucket, key = _split(url)
        prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        objects = sorted(
            (o["Key"], str(o.get("ETag", "")), int(o.get("Size", 0)))
            for o in _listing(bucket, prefix)
            if not o["Key"].endswith("/")
        )
        if not objects:
            raise StorageError(url, "no model here (no objects under this prefix)")
        digest = hashlib.sha256(url.encode())
        for obj_key, etag, size in objects:
            digest.update(f"\0{obj_key}\0{etag}\0{size}".encode())
        name = (key.rstrip("/").rsplit("/", 1)[-1] or bucket) + "-" + digest.hexdigest()[:16]
        target = os.path.join(cache_root, name)
        if os.path.isfile(os.path.join(target, ".complete")):
            return target
        try:
            os.makedirs(cache_root, exist_ok=True)
            tmp = tempfile.mkdtemp(dir=cache_root, prefix=f".{name}.tmp-")
        except OSError as e:
            reason = f"create model cache failed: {e.strerror or e}"
            raise StorageError(cache_root, reason, type(e).__name__) from e
        try:
            for obj_key, _etag, _size in objects:
                rel = obj_key[len(prefix) :]
                parts = rel.split("/")
                if any(p in ("", ".", "..") for p in parts) or "\\" in rel:
                    raise StorageError(
                        f"s3://{bucket}/{obj_key}", "unsafe key in a model directory"
                    )
                dest = os.path.join(tmp, *parts)
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with _errors(f"s3://{bucket}/{obj_key}", "download"):
                    s3_client().download_file(bucket, obj_key, dest)
            open(os.path.join(tmp, ".complete"), "wb").close()
            try:
                os.rename(tmp, target)  # atomic; fails if another caller got there first
            except OSError:
                if not os.path.isfile(os.path.join(target, ".complete")):
                    raise
            else:
                log.info("downloaded model %s to %s", url, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target
