"""The local-filesystem backend of ``Storage``: plain paths and ``file://`` URLs.

Writes (``open_write``, hence ``atomic_put*``) go straight to a ``.<name>.tmp-*`` file in
the target's directory (no copy staged elsewhere), are fsynced, then renamed over the
target (atomic on POSIX); a writer killed before the rename leaves only that temp
(``remove_stale_temps``). ``OSError`` becomes ``StorageError`` naming the URL.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
import uuid
from collections.abc import Iterator
from typing import BinaryIO

from .storage_base import ObjectWriter, Storage, StorageError, parse_url

_FILE_PREFIX = "file://"


@contextlib.contextmanager
def _errors(url: str, action: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        if isinstance(e, StorageError):
            raise
        raise StorageError(url, f"{action} failed: {e.strerror or e}", type(e).__name__) from e


def _path(url: str) -> str:
    return parse_url(url).path


class _TempThenRename(ObjectWriter):
    """Writes ``.<name>.tmp-*`` beside the target; ``publish`` fsyncs and renames it over
    the target, ``discard`` deletes it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._path = _path(url)
        self._file: BinaryIO | None = None
        self._published = False
        d = os.path.dirname(os.path.abspath(self._path))
        with _errors(url, "open for writing"):
            os.makedirs(d, exist_ok=True)
            fd, self._tmp = tempfile.mkstemp(dir=d, prefix=f".{os.path.basename(self._path)}.tmp-")
        self._file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> int:
        if self._published:
            raise ValueError(f"{self.url}: write after publish")
        if self._file is None:  # after discard, dropped
            return len(data)
        with _errors(self.url, "write"):
            return self._file.write(data)

    def publish(self) -> None:
        if self._file is None:
            raise ValueError(f"{self.url}: publish after publish or discard")
        try:
            with _errors(self.url, "atomic write"):
                self._file.flush()
                os.fsync(self._file.fileno())  # data on disk before the name points at it
                self._file.close()
                os.replace(self._tmp, self._path)
            self._file, self._published = None, True
        finally:
            self.discard()

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._tmp)


class LocalStorage(Storage):
    """Files on this machine (on a cluster: the same path must exist on every node)."""

    def open_read(self, url: str) -> BinaryIO:
        with _errors(url, "open"):
            return open(_path(url), "rb")

    def open_seekable(self, url: str) -> BinaryIO:
        return self.open_read(url)  # a local file seeks

    def exists(self, url: str) -> bool:
        return os.path.exists(_path(url))

    def size(self, url: str) -> int:
        with _errors(url, "stat"):
            return os.path.getsize(_path(url))

    def list_prefix(self, url: str) -> list[str]:
        # Walk the directory holding the prefix and keep paths that start with it.
        path = _path(url)
        root = path if path.endswith(os.sep) or os.path.isdir(path) else os.path.dirname(path)
        scheme = _FILE_PREFIX if url.startswith(_FILE_PREFIX) else ""
        out = []
        for dirpath, _dirs, files in os.walk(root or "."):
            for name in files:
                full = os.path.join(dirpath, name)
                if not root:  # a bare relative prefix: compare without the "./" walk adds
                    full = os.path.normpath(full)
                if full.startswith(path):
                    out.append(scheme + full)
        return sorted(out)

    def glob(self, pattern: str) -> list[str]:
        scheme = _FILE_PREFIX if pattern.startswith(_FILE_PREFIX) else ""
        return [scheme + p for p in glob.glob(_path(pattern)) if os.path.isfile(p)]

    def put_bytes(self, url: str, data: bytes) -> None:
        path = _path(url)
        with _errors(url, "write"):
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)

    def open_write(self, url: str) -> ObjectWriter:
        return _TempThenRename(url)

    def delete(self, url: str) -> None:
        with _errors(url, "delete"), contextlib.suppress(FileNotFoundError):
            os.remove(_path(url))

    def remove_stale_temps(self, url: str) -> list[str]:
        """Delete the ``.<name>.tmp-*`` files next to the target (what ``open_write``
        leaves when killed before its rename)."""
        d, name = os.path.split(os.path.abspath(_path(url)))
        stale = sorted(glob.glob(os.path.join(d, glob.escape(f".{name}.tmp-") + "*")))
        for temp in stale:
            self.delete(temp)
        return stale

    def check_writable(self, url: str) -> None:
        """Create the directory, then write and delete a small probe file in it."""
        path = _path(url)
        with _errors(url, "write check"):
            os.makedirs(path, exist_ok=True)
            probe = os.path.join(path, f".oscar-write-probe-{uuid.uuid4().hex}")
            with open(probe, "wb") as f:
                f.write(b"probe")
            os.remove(probe)

    def escapes(self, root: str, url: str) -> str | None:
        real_root = os.path.realpath(_path(root))
        real = os.path.realpath(_path(url))
        return None if os.path.commonpath([real, real_root]) == real_root else real

    def local_model_dir(self, url: str, cache_root: str) -> str:
        return _path(url)
