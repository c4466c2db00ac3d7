"""Storage helpers for the pipeline: URLs, shard lists, streaming reads, atomic publish.

The batch jobs read input shards and write results either to local directories or to an
S3-compatible object store (``s3://bucket/key``).  This module hides the difference behind a
few functions so job code never branches on the scheme:

* ``parse_url`` / ``expand_shards`` turn user specs (brace ranges, globs, ``.txt`` lists,
  ``s3://`` prefixes with a glob) into a sorted list of concrete URLs;
* ``open_read`` streams (an S3 object is never held whole in memory);
* ``atomic_put`` / ``atomic_put_file`` publish so that a reader never sees a partial object
  at the final name;
* ``check_writable`` fails a job at start-up, not hours later, when the output is unusable.

Errors from botocore and the local filesystem become ``StorageError(url, reason)`` so callers
catch one type and the message always names the URL.  Credentials come from boto3's default
chain and are never logged.  The S3 client, its error translation, listings and the S3 halves
of ``open_read`` / ``atomic_put`` are in ``storage_s3.py``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import hashlib
import io
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

import braceexpand

# The S3 client, error translation and listings live in storage_s3.py; the public names
# (StorageError, s3_client, reset_s3_client) are re-exported here.
from .storage_s3 import (  # noqa: F401
    StorageError,
    _s3_atomic,
    _s3_errors,
    _s3_keys,
    _s3_objects,
    _S3Body,
    reset_s3_client,
    s3_client,
)

log = logging.getLogger(__name__)

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_GLOB_CHARS = re.compile(r"[*?\[]")


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


@contextlib.contextmanager
def _local_errors(url: str, action: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        if isinstance(e, StorageError):
            raise
        raise StorageError(url, f"{action} failed: {e.strerror or e}", type(e).__name__) from e


# ----------------------------------------------------------------------- shard specs


def _s3_glob(loc: Location) -> list[str]:
    """Match an s3 key pattern like the shell: ``*`` and ``?`` never cross a ``/``."""
    first_glob = _GLOB_CHARS.search(loc.key)
    prefix = loc.key[: first_glob.start()] if first_glob else loc.key  # list as little as we can
    parts = loc.key.split("/")
    out = []
    for key in _s3_keys(loc.bucket, prefix):
        kparts = key.split("/")
        if len(kparts) == len(parts) and all(map(fnmatch.fnmatchcase, kparts, parts)):
            out.append(f"s3://{loc.bucket}/{key}")
    return out


def _expand_one(pattern: str) -> list[str]:
    """Brace-expand one pattern, then resolve globs (local filesystem or s3 listing)."""
    out: list[str] = []
    for item in braceexpand.braceexpand(pattern):
        loc = parse_url(item)
        if not _GLOB_CHARS.search(loc.key):
            out.append(item)  # a literal name: listed as given, like WebDataset does
        elif loc.scheme == "s3":
            out.extend(_s3_glob(loc))
        else:
            prefix = "file://" if item.startswith("file://") else ""
            out.extend(prefix + p for p in glob.glob(loc.path) if os.path.isfile(p))
    return out


def expand_shards(spec: str) -> list[str]:
    """Turn a shard spec into a sorted, de-duplicated list of URLs.

    ``spec`` may be a brace range (``s3://b/in/{000000..000009}.tar``), a glob (``/data/*.tar``,
    ``s3://b/in/*.tar``), or a ``.txt`` file (local or s3) listing one URL or pattern per line,
    ``#`` starting a comment line.  Raises ValueError naming the spec when nothing matches.
    """
    spec = spec.strip()
    if spec.endswith(".txt") and not _GLOB_CHARS.search(spec) and "{" not in spec:
        lines = read_bytes(spec).decode("utf-8").splitlines()
        patterns = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    else:
        patterns = [spec]
    urls = sorted({u for p in patterns for u in _expand_one(p)})
    if not urls:
        raise ValueError(f"shard spec {spec!r} matched nothing")
    log.debug("expanded %r to %d shards", spec, len(urls))
    return urls


# ------------------------------------------------------------------- object access


def open_read(url: str) -> BinaryIO:
    """Open for streaming reads.  For s3 the HTTP body is read as consumed (1 MiB buffer),
    never held whole in memory."""
    loc = parse_url(url)
    if loc.scheme == "s3":
        with _s3_errors(url, "open"):
            body = s3_client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"]
        return cast(BinaryIO, io.BufferedReader(_S3Body(url, body), buffer_size=1 << 20))
    with _local_errors(url, "open"):
        return open(loc.path, "rb")


def read_bytes(url: str) -> bytes:
    with open_read(url) as f:
        return f.read()


def put_bytes(url: str, data: bytes) -> None:
    loc = parse_url(url)
    if loc.scheme == "s3":
        with _s3_errors(url, "put"):
            s3_client().put_object(Bucket=loc.bucket, Key=loc.key, Body=data)
        return
    with _local_errors(url, "write"):
        os.makedirs(os.path.dirname(os.path.abspath(loc.path)), exist_ok=True)
        with open(loc.path, "wb") as f:
            f.write(data)


def exists(url: str) -> bool:
    loc = parse_url(url)
    if loc.scheme == "file":
        return os.path.exists(loc.path)
    try:
        with _s3_errors(url, "head"):
            s3_client().head_object(Bucket=loc.bucket, Key=loc.key)
    except StorageError as e:
        if e.code in ("404", "NoSuchKey", "NoSuchBucket"):
            return False
        raise
    return True


def size(url: str) -> int:
    """Size in bytes of one object/file (StorageError when it is missing)."""
    loc = parse_url(url)
    if loc.scheme == "s3":
        with _s3_errors(url, "head"):
            return int(s3_client().head_object(Bucket=loc.bucket, Key=loc.key)["ContentLength"])
    with _local_errors(url, "stat"):
        return os.path.getsize(loc.path)


def list_prefix(url: str) -> list[str]:
    """All objects whose name starts with ``url`` (recursive, like an S3 prefix), sorted."""
    loc = parse_url(url)
    if loc.scheme == "s3":
        return sorted(f"s3://{loc.bucket}/{k}" for k in _s3_keys(loc.bucket, loc.key))
    # Local: walk the directory holding the prefix and keep paths that start with it.
    path = loc.path
    root = path if path.endswith(os.sep) or os.path.isdir(path) else os.path.dirname(path)
    scheme = "file://" if url.startswith("file://") else ""
    out = []
    for dirpath, _dirs, files in os.walk(root or "."):
        for name in files:
            full = os.path.join(dirpath, name)
            if not root:  # a bare relative prefix: compare without the "./" walk adds
                full = os.path.normpath(full)
            if full.startswith(path):
                out.append(scheme + full)
    return sorted(out)


def delete(url: str) -> None:
    """Delete an object/file; deleting a missing one is not an error (as on S3)."""
    loc = parse_url(url)
    if loc.scheme == "s3":
        with _s3_errors(url, "delete"):
            s3_client().delete_object(Bucket=loc.bucket, Key=loc.key)
        return
    with _local_errors(url, "delete"), contextlib.suppress(FileNotFoundError):
        os.remove(loc.path)


# ---------------------------------------------------------------- atomic publish


def _local_atomic(path: str, write: Any) -> None:
    """Write via a temp file in the same directory, then rename (atomic on POSIX)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{os.path.basename(path)}.tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # data on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def remove_stale_temps(url: str) -> list[str]:
    """Delete what atomic writes to ``url`` left behind when their writer was killed
    (SIGKILL, OOM: no ``finally`` ran): ``<key>.tmp-<uuid>`` objects on S3, ``.<name>.tmp-*``
    files next to a local path. Returns the URLs removed. Call it only when no writer of
    ``url`` can still be running (a job does, after its workers are done)."""
    loc = parse_url(url)
    if loc.scheme == "s3":
        stale = list_prefix(f"{url}.tmp-")
    else:
        d, name = os.path.split(os.path.abspath(loc.path))
        stale = sorted(glob.glob(os.path.join(d, glob.escape(f".{name}.tmp-") + "*")))
    for u in stale:
        delete(u)
    return stale


def atomic_put(url: str, data: bytes) -> None:
    """Write ``data`` so readers see either the old object or the whole new one."""
    loc = parse_url(url)
    if loc.scheme == "s3":
        _s3_atomic(loc, url, lambda c, k: c.put_object(Bucket=loc.bucket, Key=k, Body=data))
        return
    with _local_errors(url, "atomic write"):
        _local_atomic(loc.path, lambda f: f.write(data))


def atomic_put_file(url: str, local_path: str) -> None:
    """Publish a local file to ``url`` atomically (multipart upload for big files on S3)."""
    loc = parse_url(url)
    if loc.scheme == "s3":
        _s3_atomic(loc, url, lambda c, k: c.upload_file(local_path, loc.bucket, k))
        return

    with _local_errors(url, "atomic write"), open(local_path, "rb") as src:
        _local_atomic(loc.path, lambda f: shutil.copyfileobj(src, f, 1 << 20))


def check_writable(url: str) -> None:
    """Fail early, with a clear StorageError, if ``url`` (an output dir/prefix) is unusable.

    Writes and deletes a small probe object, which catches a missing bucket, denied access,
    bad credentials, an unreachable endpoint and unwritable directories alike.
    """
    loc = parse_url(url)
    probe = f".oscar-write-probe-{uuid.uuid4().hex}"
    if loc.scheme == "s3":
        key = loc.key + probe if not loc.key or loc.key.endswith("/") else f"{loc.key}/{probe}"
        with _s3_errors(url, "write check"):
            s3_client().put_object(Bucket=loc.bucket, Key=key, Body=b"probe")
            s3_client().delete_object(Bucket=loc.bucket, Key=key)
        return
    with _local_errors(url, "write check"):
        os.makedirs(loc.path, exist_ok=True)
        path = os.path.join(loc.path, probe)
        with open(path, "wb") as f:
            f.write(b"probe")
        os.remove(path)
    log.debug("%s is writable", url)


# ------------------------------------------------------------------- model directories

MODEL_CACHE_ENV = "OSCAR_MODEL_CACHE"  # where s3 model directories are cached on a node


def model_cache_root() -> str:
    """``$OSCAR_MODEL_CACHE``, else ``$XDG_CACHE_HOME/oscar/models`` (``~/.cache/...``)."""
    if os.environ.get(MODEL_CACHE_ENV):
        return os.environ[MODEL_CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "oscar", "models")


def local_model_dir(url: Any, cache_root: str | None = None) -> Any:
    """A local directory holding the model directory at ``url`` (``config.json`` +
    ``model.safetensors``, or anything else under it).

    A local path is returned as is. For ``s3://bucket/prefix`` every object under
    ``prefix/`` is downloaded once per node into ``<cache>/<last part>-<digest>/``, where the
    digest covers the URL and each object's key, ETag and size: a re-uploaded model gets a
    new directory, an unchanged one is reused without a download (one listing per call).
    Concurrent callers (several actors on one node) each download to a temp directory and
    the first rename wins. Keys are checked like untrusted paths (no ``..``).
    """
    if not isinstance(url, str):  # a Path (or None: the codec's default model) as is
        return url
    loc = parse_url(url)
    if loc.scheme == "file":
        return loc.path
    prefix = loc.key.rstrip("/") + "/" if loc.key.strip("/") else ""
    objects = [o for o in _s3_objects(loc.bucket, prefix) if not o[0].endswith("/")]
    if not objects:
        raise StorageError(url, "no model here (no objects under this prefix)")
    digest = hashlib.sha256(url.encode())
    for key, etag, size in objects:
        digest.update(f"\0{key}\0{etag}\0{size}".encode())
    name = (loc.key.rstrip("/").rsplit("/", 1)[-1] or loc.bucket) + "-" + digest.hexdigest()[:16]
    root = cache_root or model_cache_root()
    target = os.path.join(root, name)
    if os.path.isfile(os.path.join(target, ".complete")):
        return target
    with _local_errors(root, "create model cache"):
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=root, prefix=f".{name}.tmp-")
    try:
        for key, _etag, _size in objects:
            rel = key[len(prefix) :]
            parts = rel.split("/")
            if any(p in ("", ".", "..") for p in parts) or "\\" in rel:
                raise StorageError(f"s3://{loc.bucket}/{key}", "unsafe key in a model directory")
            dest = os.path.join(tmp, *parts)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with _s3_errors(f"s3://{loc.bucket}/{key}", "download"):
                s3_client().download_file(loc.bucket, key, dest)
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


def parse_env_exports(text: str) -> dict[str, str]:
    """``export KEY=VALUE`` lines (as ``infra/local_s3 start|env`` prints them) -> a dict."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("export ") and "=" in line:
            key, _, value = line[len("export ") :].partition("=")
            env[key.strip()] = value.strip().strip("'\"")
    return env
