"""Storage by URL: shard lists, streaming reads, atomic publish, model directories.

The batch jobs read input shards and write results either to local directories or to an
S3-compatible object store (``s3://bucket/key``). Job code calls the functions here with
URLs and never branches on the scheme: ``storage_for(url)`` picks the backend once per call
(``LocalStorage`` or ``S3Storage``, both implementing ``storage_base.Storage``), and each
function hands the URL to it.

* ``expand_shards`` turns user specs (brace ranges, globs, ``.txt`` lists, ``s3://``
  prefixes with a glob) into a sorted list of concrete URLs;
* ``open_read`` streams (an S3 object is never held whole in memory); ``open_seekable``
  reads only the byte ranges asked for (a Parquet footer, then a row group at a time);
* ``open_write`` streams a new object (S3: a multipart upload, one part in memory) and
  publishes it whole; ``atomic_put`` / ``atomic_put_file`` publish bytes or a local file:
  a reader never sees a partial object at the final name;
* ``check_writable`` fails a job at start-up, not hours later, when the output is unusable;
* ``local_model_dir`` gives a local copy of a model directory (an s3 one is cached per node).

Failure rules (``storage_base``): every error is a one-line ``StorageError(url, reason)``
naming the URL; S3 calls are retried with backoff by the client before that.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, BinaryIO

import braceexpand

from .storage_base import ObjectWriter, Storage, parse_url
from .storage_local import LocalStorage
from .storage_s3 import S3Storage

log = logging.getLogger(__name__)

_GLOB_CHARS = re.compile(r"[*?\[]")
_BACKENDS: dict[str, Storage] = {"file": LocalStorage(), "s3": S3Storage()}


def storage_for(url: str) -> Storage:
    """The backend for ``url``'s scheme (ValueError for a scheme we do not serve)."""
    return _BACKENDS[parse_url(url).scheme]


# ----------------------------------------------------------------------- shard specs


def _expand_one(pattern: str) -> list[str]:
    """Brace-expand one pattern, then resolve globs (local filesystem or s3 listing)."""
    out: list[str] = []
    for item in braceexpand.braceexpand(pattern):
        if _GLOB_CHARS.search(parse_url(item).key):
            out.extend(storage_for(item).glob(item))
        else:
            out.append(item)  # a literal name: listed as given, like WebDataset does
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
    """Open for streaming reads (an s3 body is read as consumed, 1 MiB buffer)."""
    return storage_for(url).open_read(url)


def read_bytes(url: str) -> bytes:
    return storage_for(url).read_bytes(url)


def open_seekable(url: str) -> BinaryIO:
    """Open for random access that fetches only what is read (a Parquet footer, a row
    group): a local file, or ranged GETs on S3."""
    return storage_for(url).open_seekable(url)


def exists(url: str) -> bool:
    return storage_for(url).exists(url)


def size(url: str) -> int:
    """Size in bytes of one object/file (StorageError when it is missing)."""
    return storage_for(url).size(url)


def list_prefix(url: str) -> list[str]:
    """All objects whose name starts with ``url`` (recursive, like an S3 prefix), sorted."""
    return storage_for(url).list_prefix(url)


def put_bytes(url: str, data: bytes) -> None:
    storage_for(url).put_bytes(url, data)


def delete(url: str) -> None:
    """Delete an object/file; deleting a missing one is not an error (as on S3)."""
    storage_for(url).delete(url)


def open_write(url: str) -> ObjectWriter:
    """``with open_write(url) as out: out.write(...); out.publish()``: the object appears
    whole at ``publish`` (atomically), or not at all when the block ends without it
    (``storage_base.ObjectWriter``). Memory and local disk stay flat in its size."""
    return storage_for(url).open_write(url)


def atomic_put(url: str, data: bytes) -> None:
    """Write ``data`` so readers see either the old object or the whole new one."""
    storage_for(url).atomic_put(url, data)


def atomic_put_file(url: str, local_path: str) -> None:
    """Publish a local file to ``url`` atomically (a multipart upload above 8 MiB on S3)."""
    storage_for(url).atomic_put_file(url, local_path)


def remove_stale_temps(url: str) -> list[str]:
    """Delete what atomic writes to ``url`` left behind when their writer was killed
    (SIGKILL, OOM: no ``finally`` ran): ``.<name>.tmp-*`` files next to a local path, the
    unfinished multipart uploads to an S3 key. Returns what was removed. Call it only when
    no writer of ``url`` can still be running (a job does, after its workers are done)."""
    return storage_for(url).remove_stale_temps(url)


def check_writable(url: str) -> None:
    """Fail early, with a clear StorageError, if ``url`` (an output dir/prefix) is unusable.

    Writes and deletes a small probe object, which catches a missing bucket, denied access,
    bad credentials, an unreachable endpoint and unwritable directories alike.
    """
    storage_for(url).check_writable(url)
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

    A local path is returned as is; an ``s3://bucket/prefix`` is downloaded once per node
    into ``cache_root`` (default ``model_cache_root()``) and reused while its objects are
    unchanged (``S3Storage.local_model_dir``).
    """
    if not isinstance(url, str):  # a Path (or None: the codec's default model) as is
        return url
    return storage_for(url).local_model_dir(url, cache_root or model_cache_root())


def parse_env_exports(text: str) -> dict[str, str]:
    """``export KEY=VALUE`` lines (as ``infra/local_s3 start|env`` prints them) -> a dict."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("export ") and "=" in line:
            key, _, value = line[len("export ") :].partition("=")
            env[key.strip()] = value.strip().strip("'\"")
    return env
