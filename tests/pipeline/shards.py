"""Helpers that build test shards in memory: images in any mode/format, tars, damaged tars."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib

import numpy as np
from PIL import Image

from tests.conftest import smooth_image


class NonSeekable(io.RawIOBase):
    """A read-only stream without seek/tell: proves a stage reads strictly sequentially."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        chunk = self._buf.read(len(b))
        b[: len(chunk)] = chunk
        return len(chunk)


def image_bytes(
    height: int, width: int, seed: int = 0, fmt: str = "PNG", mode: str = "RGB", **save
) -> bytes:
    """A smooth synthetic image encoded as ``fmt`` after converting to ``mode``."""
    if mode == "I;16":
        gray = smooth_image(height, width, seed, channels=1).astype(np.uint16) * 257
        img = Image.fromarray(gray)
    else:
        img = Image.fromarray(smooth_image(height, width, seed)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def exif_rotated_jpeg(height: int, width: int, orientation: int = 6) -> bytes:
    """A JPEG stored as ``width x height`` whose EXIF says to rotate it (6: 90 deg CW)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return image_bytes(height, width, seed=4, fmt="JPEG", exif=exif.tobytes())


def png_with_size(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width x height`` (a decompression-bomb header, tiny file)."""
    data = bytearray(image_bytes(8, 8))
    ihdr = 8 + 8  # signature, then length + "IHDR"
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def tar_bytes(
    entries: list[tuple[str | bytes, bytes | None]],
    *,
    gzip: bool = False,
    format: int = tarfile.PAX_FORMAT,  # noqa: A002 - tarfile's own name for it
) -> bytes:
    """A tar (optionally .tar.gz) holding ``entries`` in order. A name given as bytes is
    written as those bytes (scraped tars hold names that are not UTF-8: GNU and ustar store
    them raw, PAX with hdrcharset=BINARY); data None makes a symlink member."""
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf,
        mode="w:gz" if gzip else "w",
        format=format,
        encoding="utf-8",
        errors="surrogateescape",
    ) as tf:
        for name, data in entries:
            if isinstance(name, bytes):
                name = name.decode("utf-8", "surrogateescape")
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, "elsewhere"
                tf.addfile(info)
                continue
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def member_offset(tar: bytes, name: str) -> int:
    """Byte offset of the header block of member ``name`` in an uncompressed tar."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        return tf.getmember(name).offset


def truncate_in_member(tar: bytes, name: str, keep: int = 100) -> bytes:
    """The tar cut ``keep`` bytes into the data of member ``name``."""
    return tar[: member_offset(tar, name) + 512 + keep]


def corrupt_header(tar: bytes, name: str) -> bytes:
    """The tar with the header block of member ``name`` overwritten with garbage."""
    off = member_offset(tar, name)
    return tar[:off] + b"\xab" * 512 + tar[off + 512 :]
