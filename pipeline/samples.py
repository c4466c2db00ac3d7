"""Tar stream -> samples: the reading stages of the shard pipeline, as plain generators.

    tar_members(stream)            tar members (name, bytes), or an error record
      -> group_by_key(members)     RawSample: key, index, {ext: bytes}, or an error
      -> decode_samples(raws)      Sample: an RGB array + carried metadata, or an error

Each stage is a generator over the previous one, so a shard is read as a stream: only the
current member (and the current sample's fields) are in memory, never the whole shard.
Tests call each stage directly on an in-memory tar.

Failures are data: anything wrong with one sample (a corrupt or non-image payload, a missing
image, a zero-byte image, a duplicated key, a decompression bomb) becomes a sample with
``error`` set, and the stream goes on. A truncated member or a corrupt tar tail cannot be
skipped over in a stream, so it ends the shard's stream with an error record. Only a storage
error (the network, not the data) is raised: the runner retries the whole shard.

Grouping follows WebDataset: the key is the member path up to the first dot of its basename
(``a/b/000123.seg.png`` -> key ``a/b/000123``, field ``seg.png``); members of one sample are
adjacent in the tar.

Names are bytes in a tar, and scraped tars hold names that are not UTF-8 (``caf\\xe9.jpg``).
Member names are read as UTF-8 with ``surrogateescape`` (Python's rule for file names: each
byte that is not UTF-8 becomes one lone surrogate U+DC80..U+DCFF), so inside the pipeline a
key or field name is a ``str`` that maps back to its exact bytes (``name_bytes``). Where a
name leaves as text (a Parquet string, a message) it goes through ``name_text``: UTF-8, each
byte that is not UTF-8 written ``\\xNN``; the exact bytes travel beside it (``key_bytes``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import posixpath
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps

from oscar_core.codec import DEFAULT_MAX_PIXELS
from oscar_core.images import MAX_SIDE, to_rgb_array

log = logging.getLogger(__name__)

# Image fields, in the order a sample's image is picked when it has several.
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "avif", "bmp", "tif", "tiff", "gif", "ppm", "jp2")
# The only Pillow decoders we run on untrusted bytes. Why a list: Pillow otherwise sniffs
# dozens of formats, some of which shell out (EPS -> Ghostscript) or are rarely hardened.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "BMP", "TIFF", "GIF", "PPM", "JPEG2000")
DEFAULT_MAX_MEMBER_BYTES = 256 << 20  # one tar member is read whole; bound it
# Key of the record that ends a stream when the tar itself is damaged (no sample key known).
STREAM_ERROR_KEY = "__tar_stream__"


@dataclass
class Member:
    """One regular file of the tar, or an error (``data`` is None then)."""

    name: str
    data: bytes | None
    error: str | None = None


@dataclass
class RawSample:
    """The members of one key, not yet decoded. ``fields`` maps extension -> bytes."""

    key: str
    index: int  # position in the shard, counting every record (ok or error)
    fields: dict[str, bytes] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Sample:
    """A decoded sample, or an error record (``image`` is None, ``error`` says why)."""

    key: str
    index: int
    image: np.ndarray | None = None  # (H, W, 3) uint8, EXIF orientation applied
    image_ext: str | None = None  # the field the image came from ("jpg", "png", ...)
    source_format: str | None = None  # Pillow's format name ("JPEG", "PNG", ...)
    source_mode: str | None = None  # Pillow's mode before RGB conversion ("RGBA", "I;16", ...)
    source_frames: int | None = None  # frames in the source; only the first is coded
    source_bytes: int | None = None
    source_sha256: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # JSON-safe carried fields
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def pixels(self) -> int:
        """H x W of the image, 0 for an error sample (what the pixel budget counts)."""
        return 0 if self.image is None else self.image.shape[0] * self.image.shape[1]


class SampleError(ValueError):
    """A sample-level failure; the message becomes the row's ``error_message``."""


# ------------------------------------------------------------------------------- names

NAME_ENCODING = "utf-8"  # tar member names are read (and decoded tars written) with this
NAME_ERRORS = "surrogateescape"  # ... and this: every byte survives, UTF-8 or not
_SURROGATE = re.compile("[\udc80-\udcff]")


def name_bytes(name: str) -> bytes:
    """A key or field name as the exact bytes it had in the tar."""
    return name.encode(NAME_ENCODING, NAME_ERRORS)


def name_from_bytes(raw: bytes) -> str:
    """Inverse of ``name_bytes``: the pipeline's ``str`` for a name of any bytes."""
    return raw.decode(NAME_ENCODING, NAME_ERRORS)


def name_text(name: str) -> str:
    """A name (or a message quoting one) as valid UTF-8 text: the name's bytes decoded as
    UTF-8, each byte that is not UTF-8 written as ``\\xNN`` (``caf\\xe9``). Not reversible
    on its own (a real backslash reads the same): ``name_bytes`` is the exact form."""
    return name_bytes(name).decode(NAME_ENCODING, "backslashreplace")


def metadata_json(fields: dict[str, Any]) -> str:
    """Carried fields as one JSON object (sorted by name), valid UTF-8 whatever the names.

    A field name that is not UTF-8 keeps its lone surrogates as JSON escapes (``"\\udce9"``),
    which ``json.loads`` turns back into the same ``str``, hence the same bytes.
    """
    text = json.dumps(fields, ensure_ascii=False, sort_keys=True)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


# --------------------------------------------------------------------------- stage 1: tar


def _spying_tarinfo(seen: list[tarfile.HeaderError]) -> type[tarfile.TarInfo]:
    """A TarInfo class that records why header parsing stopped.

    Why: in stream mode ``TarFile.next()`` treats a damaged header after the first member
    as the end of the archive and returns None silently, which would drop the rest of the
    shard without a trace. ``fromtarfile`` is where that error is raised, so we note it and
    tell a clean end (a zero block) from a damaged or truncated one.
    """

    class _TarInfo(tarfile.TarInfo):
        @classmethod
        def fromtarfile(cls, tf: tarfile.TarFile) -> tarfile.TarInfo:
            try:
                return super().fromtarfile(tf)
            except tarfile.HeaderError as exc:
                seen.append(exc)
                raise

    return _TarInfo


def _end_problem(seen: list[tarfile.HeaderError]) -> str | None:
    """None for a clean end of archive, else why the member list stopped."""
    if not seen or isinstance(seen[-1], tarfile.EOFHeaderError):
        return None  # an empty archive, or the end-of-archive zero block
    last = seen[-1]
    if isinstance(last, tarfile.EmptyHeaderError):
        return "tar stream ends without the end-of-archive marker (truncated shard?)"
    if isinstance(last, tarfile.TruncatedHeaderError):
        return "tar stream ends inside a member header (truncated shard)"
    return f"corrupt tar header ({last}); the rest of the shard is unreadable"


def tar_members(
    stream: BinaryIO, *, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
) -> Iterator[Member]:
    """Yield the regular files of a tar stream (plain or compressed), in order.

    Reads with ``mode="r|*"``: strictly sequential, one member in memory at a time. Damage to
    the tar itself yields one final ``Member`` with ``error`` set; its ``name`` is the member
    being read when it happened ("" when no member is to blame).
    """
    seen: list[tarfile.HeaderError] = []
    current = ""  # the member whose data the stream is positioned in
    try:
        tf = tarfile.open(
            fileobj=stream,
            mode="r|*",
            tarinfo=_spying_tarinfo(seen),
            encoding=NAME_ENCODING,  # explicit: the locale must not change a key's bytes
            errors=NAME_ERRORS,
        )
    except (tarfile.TarError, EOFError) as exc:
        yield Member("", None, f"not a readable tar stream: {exc}")
        return
    with tf:
        try:
            for info in tf:
                tf.members = []  # stream mode keeps every TarInfo; drop them to stay flat
                current = info.name
                if info.isdir():
                    continue
                if not info.isfile():
                    yield Member(info.name, None, "not a regular file (link or device)")
                elif info.size > max_member_bytes:
                    yield Member(
                        info.name, None, f"member too large: {info.size} > {max_member_bytes}"
                    )
                else:
                    fobj = tf.extractfile(info)
                    data = fobj.read() if fobj else b""
                    current = ""  # read whole: a later failure belongs to the next header
                    yield Member(info.name, data)
        except (tarfile.TarError, EOFError) as exc:
            # A truncated member ("unexpected end of data") or bad compressed data: the
            # stream cannot be resynchronised, so it ends here with a record.
            yield Member(current, None, f"tar stream broken: {exc}")
            return
        problem = _end_problem(seen)
        if problem:
            yield Member("", None, problem)


# ------------------------------------------------------------------------ stage 2: keys


def split_name(name: str) -> tuple[str, str]:
    """``dir/000123.seg.png`` -> (``dir/000123``, ``seg.png``); WebDataset's key rule."""
    name = name[2:] if name.startswith("./") else name
    dirname, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return (posixpath.join(dirname, stem) if dirname else stem), ext.lower()


def group_by_key(members: Iterable[Member]) -> Iterator[RawSample]:
    """Group adjacent members sharing a key into RawSamples, numbered in shard order.

    A key met again after other keys, or a field repeated within a key, makes an error
    record for the repeat (the first occurrence stays valid): the output never holds two
    good rows for one key.
    """
    seen: dict[str, int] = {}  # key -> index of its first sample (keys only: small)
    index = 0
    group: RawSample | None = None

    def flush() -> Iterator[RawSample]:
        nonlocal group, index
        if group is not None:
            yield group
            index += 1
            group = None

    for member in members:
        key, ext = split_name(member.name) if member.name else (STREAM_ERROR_KEY, "")
        if group is not None and key == group.key:
            if member.error and not group.error:
                group.error = f"{ext or 'member'}: {member.error}"
            elif ext in group.fields and not group.error:
                group.error = f"duplicate field {ext!r} in key {key!r}"
            elif member.data is not None:
                group.fields[ext] = member.data
            continue
        yield from flush()
        group = RawSample(key, index)
        if member.data is not None:
            group.fields[ext] = member.data
        if not member.name:
            group.error = member.error
        elif not posixpath.basename(key):
            group.key, group.error = member.name, "member name has an empty key (leading dot)"
        elif key in seen:
            group.error = f"duplicate key: first seen at index {seen[key]}"
        elif member.error:
            group.error = f"{ext or 'member'}: {member.error}"
        seen.setdefault(group.key, index)
    yield from flush()


# --------------------------------------------------------------------- stage 3: decode


def carry_field(data: bytes) -> str | dict[str, str]:
    """A field as JSON-safe metadata: text stays a string, binary becomes {"base64": ...}."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def restore_field(value: Any) -> bytes:
    """Inverse of ``carry_field``."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and isinstance(value.get("base64"), str):
        return base64.b64decode(value["base64"], validate=True)
    raise ValueError(f"cannot restore carried field {value!r}"[:300])


def restore_fields(metadata: str | None) -> dict[str, bytes]:
    """A row's ``metadata`` JSON (``metadata_json`` of ``carry_field`` values) -> the
    carried fields, name -> exact bytes. ValueError when it is not such an object."""
    fields = json.loads(metadata or "{}")
    if not isinstance(fields, dict):
        raise ValueError(f"metadata is not a JSON object: {metadata!r}"[:300])
    return {name: restore_field(value) for name, value in fields.items()}


@dataclass
class DecodedImage:
    array: np.ndarray  # (H, W, 3) uint8
    format: str
    mode: str
    frames: int


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode untrusted image bytes with limits; raises SampleError with a reason.

    The pixel limit is checked from the header (``Image.open`` is lazy) before any pixel is
    decoded. Animations: the first frame is used, the frame count recorded.
    """
    if not data:
        raise SampleError("empty image (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:  # Pillow's own, coarser limit
        raise SampleError(f"decompression bomb: {exc}") from None
    except Image.UnidentifiedImageError:
        raise SampleError("not a decodable image (unknown or disallowed format)") from None
    except Exception as exc:  # noqa: BLE001 - Pillow plugins raise many types on bad headers
        raise SampleError(f"cannot read image header: {type(exc).__name__}: {exc}") from None
    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise SampleError(
                f"too many pixels: {width}x{height} = {width * height} exceeds max_pixels = "
                f"{max_pixels} (decompression-bomb guard; raise it with --max-pixels)"
            )
        if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
            raise SampleError(f"image size {width}x{height} outside 1..{MAX_SIDE} per side")
        fmt, mode, frames = img.format or "?", img.mode, int(getattr(img, "n_frames", 1))
        try:
            img.seek(0)
            oriented = ImageOps.exif_transpose(img)  # loads frame 0, applies orientation
            array = to_rgb_array(oriented)
        except Exception as exc:  # noqa: BLE001 - truncated/corrupt data: any decoder error
            raise SampleError(f"cannot decode {fmt} image: {type(exc).__name__}: {exc}") from None
    return DecodedImage(array, fmt, mode, frames)


def decode_samples(
    raws: Iterable[RawSample], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Iterator[Sample]:
    """RawSample -> Sample: pick the image field, decode it, carry the other fields."""
    for raw in raws:
        sample = Sample(raw.key, raw.index, error=raw.error)
        image_ext = next((e for e in IMAGE_EXTS if e in raw.fields), None)
        sample.metadata = {e: carry_field(d) for e, d in raw.fields.items() if e != image_ext}
        if image_ext is not None:
            data = raw.fields[image_ext]
            sample.image_ext = image_ext
            sample.source_bytes = len(data)
            sample.source_sha256 = hashlib.sha256(data).hexdigest()
        if sample.error is None:
            if image_ext is None:
                fields = ", ".join(sorted(raw.fields)) or "none"
                sample.error = f"no image field (fields: {fields})"
            else:
                try:
                    img = decode_image(raw.fields[image_ext], max_pixels=max_pixels)
                except SampleError as exc:
                    sample.error = f"{image_ext}: {exc}"
                else:
                    sample.image = img.array
                    sample.source_format = img.format
                    sample.source_mode = img.mode
                    sample.source_frames = img.frames
        if sample.error:
            log.debug("sample %r (index %d): %s", sample.key, sample.index, sample.error)
        yield sample


def read_samples(
    stream: BinaryIO,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
) -> Iterator[Sample]:
    """The three stages chained: a tar stream -> decoded samples and error records."""
    members = tar_members(stream, max_member_bytes=max_member_bytes)
    return decode_samples(group_by_key(members), max_pixels=max_pixels)
