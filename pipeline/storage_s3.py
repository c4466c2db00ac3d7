"""The S3 side of ``pipeline.storage``: the process-wide boto3 client, botocore errors as
``StorageError``, prefix listings, the streaming body behind ``open_read`` and the
temp-key-then-copy publish behind ``atomic_put``.

``pipeline.storage`` re-exports ``StorageError``, ``s3_client`` and ``reset_s3_client``; job
code imports them from there.  Credentials come from boto3's default chain and are never
logged.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from .storage import Location

# Friendly explanations for the S3 error codes a user can fix themselves.
_DENIED = "access denied (check the bucket policy / user permissions)"
_HINTS = {
    "NoSuchBucket": "the bucket does not exist",
    **dict.fromkeys(["NoSuchKey", "404"], "no such object"),
    **dict.fromkeys(["AccessDenied", "403"], _DENIED),
    "InvalidAccessKeyId": "bad credentials: the server does not know this access key",
    "SignatureDoesNotMatch": "bad credentials: the secret key does not match",
}


class StorageError(OSError):
    """A storage operation failed; ``url`` names the object, ``reason`` says why."""

    def __init__(self, url: str, reason: str, code: str | None = None) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        # OSError pickles its args positionally; keep all fields for Ray / multiprocessing.
        return (type(self), (self.url, self.reason, self.code))


# --------------------------------------------------------------------------- S3 client

_client_lock = threading.Lock()
_client: tuple[int, Any] | None = None  # (pid, client): a forked child must build its own


def s3_client() -> Any:
    """The process-wide boto3 S3 client (thread-safe; rebuilt after fork).

    Endpoint (``AWS_ENDPOINT_URL``), region and credentials come from boto3's standard
    environment/config chain.  Adaptive retries absorb throttling (503 SlowDown) from the
    store when many workers hit it at once.
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
def _s3_errors(url: str, action: str) -> Iterator[None]:
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


# --------------------------------------------------------------------- listing, reads


def _s3_listing(bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    """The ``list_objects_v2`` entry of every object under ``prefix`` (all pages)."""
    with _s3_errors(f"s3://{bucket}/{prefix}", "list"):
        pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            yield from page.get("Contents", [])


def _s3_keys(bucket: str, prefix: str) -> Iterator[str]:
    for obj in _s3_listing(bucket, prefix):
        yield obj["Key"]


def _s3_objects(bucket: str, prefix: str) -> list[tuple[str, str, int]]:
    """(key, ETag, size) of every object under ``prefix``, sorted by key."""
    return sorted(
        (obj["Key"], str(obj.get("ETag", "")), int(obj.get("Size", 0)))
        for obj in _s3_listing(bucket, prefix)
    )


class _S3Body(io.RawIOBase):
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
        with _s3_errors(self._url, "read"):
            return self._body.readinto(b)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


# ---------------------------------------------------------------- atomic publish


def _s3_atomic(loc: Location, url: str, upload: Any) -> None:
    """Upload to ``<key>.tmp-<uuid>``, server-side copy to the key, delete the temp.

    The final key only ever holds a complete object whatever the upload path (single PUT
    or multipart); a crashed writer leaves a ``.tmp-`` key, never a truncated result.
    """
    client = s3_client()
    tmp_key = f"{loc.key}.tmp-{uuid.uuid4().hex}"
    try:
        with _s3_errors(url, "upload"):
            upload(client, tmp_key)
        with _s3_errors(url, "publish (copy)"):
            # Managed copy: a single CopyObject, or multipart copy above 5 GB.
            client.copy({"Bucket": loc.bucket, "Key": tmp_key}, loc.bucket, loc.key)
    finally:
        with contextlib.suppress(ClientError, BotoCoreError):
            client.delete_object(Bucket=loc.bucket, Key=tmp_key)
