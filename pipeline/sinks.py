"""Decoded images out: WebDataset tar shards or plain files, under safe, contained paths.

A sample key comes from a Parquet file, which may have been written by anyone: it is
untrusted. ``safe_key`` accepts only relative POSIX paths that stay inside the output
directory and rejects the rest with a reason (the caller records it as a failed row).
Rejecting rather than rewriting: a rewritten ``../x`` could silently collide with a real
key ``x``, and the user can fix a key they can see in the report.

Keys and field names are the pipeline's ``str`` for bytes (``samples.name_from_bytes``):
a name that is not UTF-8 is written back with its original bytes (tar member names and
local file names are bytes; an S3 object name must be UTF-8, so such a key fails there).

The decoded image goes under the ``--format`` extension, unless that format cannot hold it
(WebP stops at 16383 px a side, JPEG at 65500): then it is written as PNG, which can
(``encode_decoded``), and the caller reports it. A carried field is never overwritten: when
one already has the image's name (an ``x.png`` mask beside the ``x.jpg`` image, decoded
``--format png``), the image takes ``oscar.png`` (``oscar2.png``, ... if that is taken too;
``image_name``), and the caller reports that.

Both sinks take ``add(key, {ext: bytes})`` and write ``<key>.<ext>`` entries:

* ``TarSink``: one tar per decoded Parquet, written with webdataset's ``TarWriter`` straight
  into ``storage.open_write`` (on S3 a multipart upload, one 8 MiB part in memory; locally a
  temp file beside the target): nothing is staged, memory and disk stay flat in the shard's
  size, and the tar appears at its URL whole, at ``close``, or never (``abort``);
* ``FileSink``: one file per entry under ``<out>/<name>/`` (local or s3); locally, the
  resolved path is checked to stay under the root even through symlinks.
"""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image
from webdataset import TarWriter

from . import storage
from .samples import NAME_ENCODING, NAME_ERRORS, name_bytes

log = logging.getLogger(__name__)

FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}  # --format -> Pillow format
LOSSLESS_FALLBACK = "png"  # holds any size the codec decodes (up to 65535 a side)
RENAMED_IMAGE_STEM = "oscar"  # the image's field on a clash: oscar.png, oscar2.png, ...
MAX_KEY_CHARS = 1024
MAX_COMPONENT_BYTES = 255  # the usual filesystem name limit
WDS_KEY = "__key__"  # the sample key in a webdataset dict


class UnsafeKey(ValueError):
    """A key (or field extension) that cannot be written safely; the message says why."""


def _check_chars(text: str, what: str) -> None:
    bad = next((c for c in text if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise UnsafeKey(f"{what} {text!r} contains control character {bad!r}")
    if "\\" in text:
        raise UnsafeKey(f"{what} {text!r} contains a backslash")


def safe_key(key: object) -> str:
    """Return ``key`` if it is a safe relative path for ``<key>.<ext>``, else raise UnsafeKey.

    Rejected: non-strings, empty keys, NUL and other control characters, backslashes,
    absolute paths, ``.``/``..``/empty components, a drive prefix (``C:``), components over
    255 bytes, and a ``.`` in the last component (WebDataset would split the key there).
    """
    if not isinstance(key, str) or not key:
        raise UnsafeKey(f"key {key!r} is empty or not a string")
    if len(key) > MAX_KEY_CHARS:
        raise UnsafeKey(f"key of {len(key)} characters exceeds {MAX_KEY_CHARS}")
    _check_chars(key, "key")
    if key.startswith("/"):
        raise UnsafeKey(f"key {key!r} is an absolute path")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafeKey(f"key {key!r} has an empty, '.' or '..' path component")
    if len(parts[0]) >= 2 and parts[0][1] == ":":
        raise UnsafeKey(f"key {key!r} starts with a drive prefix")
    if any(len(name_bytes(p)) > MAX_COMPONENT_BYTES for p in parts):
        raise UnsafeKey(f"key {key!r} has a path component over {MAX_COMPONENT_BYTES} bytes")
    if "." in parts[-1]:
        raise UnsafeKey(f"key {key!r} has a '.' in its last component")
    return key


def safe_ext(ext: object) -> str:
    """A field extension (``jpg``, ``seg.png``, ``json``) that stays one file name."""
    if not isinstance(ext, str) or not ext or "/" in ext or ext.startswith("."):
        raise UnsafeKey(f"field extension {ext!r} is empty or contains a path separator")
    _check_chars(ext, "field extension")
    return ext


def encode_image(image: np.ndarray, fmt: str) -> bytes:
    """(H, W, 3) uint8 -> file bytes in ``fmt`` (png lossless; jpg/webp at quality 95)."""
    if fmt not in FORMATS:
        raise ValueError(f'Invalid format "{fmt}", should be one of {sorted(FORMATS)}')
    buf = io.BytesIO()
    options = {"quality": 95} if fmt in ("jpg", "webp") else {}
    Image.fromarray(image).save(buf, FORMATS[fmt], **options)
    return buf.getvalue()


def encode_decoded(image: np.ndarray, fmt: str) -> tuple[bytes, str, str | None]:
    """(H, W, 3) uint8 -> (file bytes, extension, why not ``fmt`` or None).

    When Pillow cannot write the image as ``fmt`` (a WebP over 16383 px a side, a JPEG over
    65500), it is written losslessly as PNG instead and the third value says why; if PNG
    fails too, that error is raised.
    """
    try:
        return encode_image(image, fmt), fmt, None
    except (OSError, ValueError) as exc:  # Pillow: ValueError (WebP), OSError (JPEG)
        if fmt == LOSSLESS_FALLBACK:
            raise
        h, w = image.shape[:2]
        why = f"{fmt} cannot hold this {w}x{h} image ({type(exc).__name__}: {exc}); "
        return encode_image(image, LOSSLESS_FALLBACK), LOSSLESS_FALLBACK, why + "written as png"


def image_name(ext: str, carried: dict[str, bytes]) -> str:
    """The field name for the decoded image: ``ext``, or, when a carried field already has
    that name, the first free of ``oscar.<ext>``, ``oscar2.<ext>``, ... (deterministic)."""
    name, n = ext, 1
    while name in carried:
        name = f"{RENAMED_IMAGE_STEM}{n if n > 1 else ''}.{ext}"
        n += 1
    return name


class _Sink:
    """Shared bookkeeping: key checks, duplicate detection, bytes written."""

    def __init__(self) -> None:
        self._keys: set[str] = set()
        self.bytes_out = 0

    def _entries(self, key: str, files: dict[str, bytes]) -> list[tuple[str, bytes]]:
        key = safe_key(key)
        if key in self._keys:
            raise UnsafeKey(f"duplicate key {key!r}: an earlier row already wrote it")
        entries = [(f"{key}.{safe_ext(ext)}", data) for ext, data in files.items()]
        self._keys.add(key)
        self.bytes_out += sum(len(d) for _, d in entries)
        return entries


class TarSink(_Sink):
    """A WebDataset shard at ``url``: members ``<key>.<ext>``, grouped by key, in order.

    Written with webdataset's ``TarWriter`` (PAX headers, so long keys fit) as a stream
    into ``storage.open_write(url)``, one ``write`` per field: ``TarWriter`` sorts a
    sample's fields, and we keep the image first, then the carried fields in their original
    order. Reproducible: mtime 0, mode 0644, no owner names.
    """

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self._out = storage.open_write(url)
        self._writer = TarWriter(
            self._out, encoder=False, keep_meta=True, mode=0o644, mtime=0, user="", group=""
        )
        # Names are written back with their original bytes, whatever the locale: PAX stores
        # a UTF-8 name as is and any other as bytes (hdrcharset=BINARY), via these settings.
        self._writer.tarstream.encoding = NAME_ENCODING
        self._writer.tarstream.errors = NAME_ERRORS

    def add(self, key: str, files: dict[str, bytes]) -> None:
        if WDS_KEY in files:
            raise UnsafeKey(f"field extension {WDS_KEY!r} is reserved by WebDataset")
        for name, data in self._entries(key, files):
            self._writer.write({WDS_KEY: key, name[len(key) + 1 :]: data})

    def close(self) -> None:
        """Finish the tar (its end-of-archive blocks) and publish it atomically."""
        with self._out:  # discards unless published
            self._writer.close()
            self._out.publish()

    def abort(self) -> None:
        """Drop the tar: nothing appears at the URL (an S3 upload is aborted)."""
        self._out.discard()


class FileSink(_Sink):
    """Files ``<root>/<key>.<ext>`` (local directory or s3 prefix)."""

    def __init__(self, root: str) -> None:
        super().__init__()
        self.root = root.rstrip("/")
        self._store = storage.storage_for(self.root)

    def add(self, key: str, files: dict[str, bytes]) -> None:
        for name, data in self._entries(key, files):
            url = f"{self.root}/{name}"
            # Defence in depth: safe_key already forbids "..", but a symlinked directory
            # inside a local output could still point elsewhere.
            real = self._store.escapes(self.root, url)
            if real is not None:
                raise UnsafeKey(f"key {key!r} resolves outside the output directory ({real})")
            self._store.put_bytes(url, data)

    def close(self) -> None:
        """Nothing to publish: each file was written whole."""

    def abort(self) -> None:
        """Files already written stay (a re-run overwrites them)."""


def open_sink(output: str, *, as_files: bool) -> TarSink | FileSink:
    return FileSink(output) if as_files else TarSink(output)
