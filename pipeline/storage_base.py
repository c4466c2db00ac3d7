"""The storage contract: the interface both backends implement, its one error type, URLs.

A URL is ``s3://bucket/key``, ``file:///path`` or a plain local path (``parse_url``).
``Storage`` is what a backend offers; ``LocalStorage`` (``storage_local.py``) and
``S3Storage`` (``storage_s3.py``) implement it, and ``pipeline.storage`` picks one per URL,
once (``storage_for``). Every method takes and returns URLs as the caller spells them (a
``file://`` prefix stays on), so results and errors name what the user wrote.

Failure rules, for every backend:

* every failure is a ``StorageError(url, reason, code)``: an ``OSError`` whose message is
  one line, ``<url>: <action> failed: <why>``; credentials never appear in it;
* reads stream: ``open_read`` holds a bounded buffer, never the whole object;
* writes stream: ``open_write`` holds a bounded buffer (S3: one multipart part), never the
  whole object;
* a publish is atomic: readers of ``open_write(...).publish()``, ``atomic_put`` and
  ``atomic_put_file`` see the old object or the whole new one; a writer that fails or is
  dropped before ``publish`` leaves nothing at the URL, and one killed mid-write leaves at
  most a temp that is not the object (a local temp file, an unfinished S3 multipart
  upload: ``remove_stale_temps``);
* deleting a missing object is not an error (as on S3).
"""

from __future__ import annotations

import re
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, BinaryIO

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


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


@dataclass(frozen=True)
class Location:
    """A parsed URL: ``scheme`` is "s3" or "file"; for files ``bucket`` is "" and ``key``
    is the local path."""

    scheme: str
    bucket: str
    key: str

    @property
    def path(self) -> str:
        return self.key

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.scheme == "s3" else self.key


def parse_url(url: str) -> Location:
    """Split ``s3://bucket/key``, ``file:///path`` or a plain path into a Location."""
    m = _SCHEME_RE.match(url)
    if m is None:
        return Location("file", "", url)
    scheme = m.group(1).lower()
    rest = url[m.end() :]
    if scheme == "file":
        return Location("file", "", rest)
    if scheme == "s3":
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise ValueError(f"{url!r}: an s3 URL needs a bucket (s3://bucket/key)")
        return Location("s3", bucket, key)
    raise ValueError(f"{url!r}: unsupported URL scheme {scheme!r} (use s3:// or a local path)")


class ObjectWriter(ABC):
    """A new object being written to ``url``, in order, then published whole.

    ``write`` appends (a file object's ``write``: ``tarfile`` and ``shutil`` write to it);
    ``publish()`` makes the object appear at ``url`` at once, replacing any old one;
    ``discard()`` drops what was written, and what is written after (a producer's finaliser
    flushing late, as ``tarfile``'s does); a write after ``publish`` is an error. Leaving
    the ``with`` block without ``publish`` discards, so an exception, or a writer
    garbage-collected half-way, never publishes a part.
    """

    url: str

    @abstractmethod
    def write(self, data: bytes) -> int: ...

    @abstractmethod
    def publish(self) -> None:
        """Finish the object and make it visible at ``url`` (atomically)."""

    @abstractmethod
    def discard(self) -> None:
        """Drop what was written (nothing appears at ``url``); no-op after ``publish``."""

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


class Storage(ABC):
    """One storage backend. Each method takes full URLs of this backend's scheme."""

    # -- reading --------------------------------------------------------------------------
    @abstractmethod
    def open_read(self, url: str) -> BinaryIO:
        """A file object for sequential reads, buffered (memory stays flat)."""

    def read_bytes(self, url: str) -> bytes:
        with self.open_read(url) as f:
            return f.read()

    @abstractmethod
    def open_seekable(self, url: str) -> BinaryIO:
        """A seekable file object that reads only the byte ranges asked for (a Parquet
        footer, then one row group's column chunks), never the whole object up front."""

    @abstractmethod
    def exists(self, url: str) -> bool: ...

    @abstractmethod
    def size(self, url: str) -> int:
        """Bytes of one object (StorageError when it is missing)."""

    @abstractmethod
    def list_prefix(self, url: str) -> list[str]:
        """Every object whose URL starts with ``url`` (recursive, like an S3 prefix), sorted."""

    @abstractmethod
    def glob(self, pattern: str) -> list[str]:
        """Objects matching a glob (``*``, ``?``, ``[...]``; never across a ``/``)."""

    # -- writing --------------------------------------------------------------------------
    def put_bytes(self, url: str, data: bytes) -> None:
        """A plain write, for files written whole by one writer: need not be atomic (an
        object store's PUT is anyway, hence this default)."""
        self.atomic_put(url, data)

    @abstractmethod
    def open_write(self, url: str) -> ObjectWriter:
        """A streaming writer of a new object at ``url`` (see ``ObjectWriter``): memory
        stays bounded whatever the object's size, and nothing is staged elsewhere."""

    def atomic_put(self, url: str, data: bytes) -> None:
        """Publish ``data``: readers see either the old object or the whole new one."""
        with self.open_write(url) as out:
            out.write(data)
            out.publish()

    def atomic_put_file(self, url: str, local_path: str) -> None:
        """Publish a local file atomically (streamed through ``open_write``)."""
        with self.open_write(url) as out, open(local_path, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            out.publish()

    @abstractmethod
    def delete(self, url: str) -> None:
        """Delete one object; a missing one is not an error."""

    @abstractmethod
    def remove_stale_temps(self, url: str) -> list[str]:
        """Delete what atomic writes to ``url`` left when their writer was killed (SIGKILL,
        OOM: no ``finally`` ran); returns what it removed. Call it only when no writer of
        ``url`` can still be running (a job does, after its workers are done)."""

    @abstractmethod
    def check_writable(self, url: str) -> None:
        """Fail with a clear StorageError now if ``url`` (an output dir/prefix) is unusable."""

    @abstractmethod
    def escapes(self, root: str, url: str) -> str | None:
        """Where ``url`` really lands when that is outside ``root`` (a symlink under a local
        root pointing elsewhere), else None. Object stores have no links."""

    # -- model directories ----------------------------------------------------------------
    @abstractmethod
    def local_model_dir(self, url: str, cache_root: str) -> str:
        """A local directory holding the model directory at ``url`` (cached under
        ``cache_root`` when it has to be downloaded)."""
