"""The OSCAR container format, version 2.

One image per stream. All multi-byte integers are big-endian::

    off  len  field
    0    2    magic b"OS"
    2    1    format version (= 2)
    3    4    model id: first 4 bytes of SHA-256 over the model's config + weights
    7    1    rate index (0..15; the codec checks it against its ladder)
    8    2    H, original image height in pixels (uint16, >= 1)
    10   2    W, original image width in pixels (uint16, >= 1)
    12   8    4 x float16: per-channel RMS of z0, the norms the decoder rescales z~ to
    20   1-5  L, payload length, unsigned LEB128 varint (minimal encoding, L < 2**32)
    ..   L    payload: rANS bytes of the VQ indices (see ``entropy.py``)
    end  4    CRC-32 (zlib.crc32) over every preceding byte

Overhead: 20 fixed bytes + 1 varint byte (payloads < 128 bytes) + 4 CRC = 25 bytes; at most
29. The lowest rate produces ~80-byte payloads on a Kodak image, so every header byte shows
in its bpp (one byte = 0.00002 bpp at 768x512, 1% of rate 0's nominal 0.0020).

Version 1 also stored the padded latent height and width (4 bytes); they follow from
(H, W) and the rate's padding rule, so version 2 derives them (``Codec.parse``) instead.

Why these choices
    * RMS rather than the L2 norm of each latent channel: the RMS does not grow with the
      image size (the L2 norm grows with sqrt(h*w)), so it stays well inside float16's range
      (max 65504) for any image, and float16 halves the cost against float32. The encoder
      rounds the RMS to float16 itself before use, so encoder and decoder agree exactly.
    * varint for L: one byte for the small payloads that dominate at low rates, yet no
      ceiling on the payload size beyond the 4 GiB we allow. Only the minimal encoding is
      accepted, so every (header, payload) pair has exactly one byte representation.
    * CRC at the end: the writer computes it in one pass over what it has written, and the
      reader checks it after the length checks but before interpreting any field beyond the
      fixed magic/version/length ones, so corruption is reported as corruption rather than
      as whatever odd field value it happens to produce.
    * Latent dims are derived, not stored: the padding rule is the model's, so a stored copy
      could only disagree with it (version 1 carried them and rejected any disagreement).

Parsing never allocates or loops based on an unchecked field: the varint loop is bounded by
5 bytes and the payload is a slice of the input.
"""

from __future__ import annotations

import math
import operator
import struct
import zlib
from dataclasses import dataclass

from oscar_core.errors import BitstreamError

MAGIC = b"OS"
VERSION = 2
MODEL_ID_BYTES = 4
MAX_RATE_INDEX = 15
MAX_DIM = 0xFFFF  # uint16
MAX_PAYLOAD_BYTES = (1 << 32) - 1
VARINT_MAX_BYTES = 5  # ceil(32 / 7)
CRC_BYTES = 4

_FIXED = struct.Struct(">2sB4sBHH4e")  # magic, version, model id, rate, H, W, rms
FIXED_HEADER_BYTES = _FIXED.size  # 20
HEADER_BYTES_MIN = FIXED_HEADER_BYTES + 1  # fixed fields + 1-byte varint
HEADER_BYTES_MAX = FIXED_HEADER_BYTES + VARINT_MAX_BYTES
MIN_STREAM_BYTES = HEADER_BYTES_MIN + CRC_BYTES  # empty payload: 25 bytes


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        v = operator.index(value)  # accepts numpy integers, rejects floats
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if not lo <= v <= hi:
        raise ValueError(f"{name}={v} outside [{lo}, {hi}]")
    return v


@dataclass(frozen=True)
class Header:
    """Decoded header fields. ``rms`` is stored as float16 on disk (round-trip is lossy)."""

    model_id: bytes
    rate_index: int
    height: int
    width: int
    rms: tuple[float, float, float, float]
    version: int = VERSION

    def __post_init__(self) -> None:
        # Programmer errors when building a header to pack: ValueError, not BitstreamError.
        if not isinstance(self.model_id, bytes) or len(self.model_id) != MODEL_ID_BYTES:
            raise ValueError(f"model_id must be {MODEL_ID_BYTES} bytes, got {self.model_id!r}")
        ints = {
            "version": (VERSION, VERSION),
            "rate_index": (0, MAX_RATE_INDEX),
            "height": (1, MAX_DIM),
            "width": (1, MAX_DIM),
        }
        for name, (lo, hi) in ints.items():
            object.__setattr__(self, name, _check_int(name, getattr(self, name), lo, hi))
        try:
            rms = tuple(float(v) for v in self.rms)
        except (TypeError, ValueError):
            raise ValueError(f"rms must be 4 floats, got {self.rms!r}") from None
        if len(rms) != 4:
            raise ValueError(f"rms must have 4 values, got {len(rms)}")
        for v in rms:
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"rms values must be finite and >= 0, got {rms}")
            try:
                struct.pack(">e", v)
            except (OverflowError, struct.error):
                raise ValueError(f"rms value {v} overflows float16") from None
        # "+ 0.0" turns -0.0 into 0.0, so the sign bit on disk is always clear.
        object.__setattr__(self, "rms", tuple(v + 0.0 for v in rms))


def _encode_varint(value: int) -> bytes:
    """Minimal unsigned LEB128."""
    if not 0 <= value <= MAX_PAYLOAD_BYTES:
        raise ValueError(f"varint value {value} outside [0, {MAX_PAYLOAD_BYTES}]")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _decode_varint(data: bytes, offset: int) -> tuple[int, int]:
    """Return ``(value, n_bytes)``; the caller guarantees 5 readable bytes from ``offset``."""
    value = 0
    for i in range(VARINT_MAX_BYTES):  # bounded by a constant, never by the data
        byte = data[offset + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            n = i + 1
            break
    else:
        raise BitstreamError(f"payload length varint longer than {VARINT_MAX_BYTES} bytes")
    if n > 1 and byte == 0:
        raise BitstreamError("payload length varint is not minimally encoded")
    if value > MAX_PAYLOAD_BYTES:
        raise BitstreamError(f"payload length {value} exceeds {MAX_PAYLOAD_BYTES}")
    return value, n


def pack(header: Header, payload: bytes) -> bytes:
    """Serialise ``header`` and ``payload`` (layout in the module docstring)."""
    if not isinstance(header, Header):
        raise ValueError(f"header must be a Header, got {type(header).__name__}")
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise ValueError(f"payload must be bytes, got {type(payload).__name__}")
    payload = bytes(payload)
    body = (
        _FIXED.pack(
            MAGIC,
            header.version,
            header.model_id,
            header.rate_index,
            header.height,
            header.width,
            *header.rms,
        )
        + _encode_varint(len(payload))
        + payload
    )
    return body + struct.pack(">I", zlib.crc32(body))


def unpack(data: bytes) -> tuple[Header, bytes]:
    """Parse and validate a stream; every problem raises :class:`BitstreamError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BitstreamError(f"bitstream must be bytes, got {type(data).__name__}")
    data = bytes(data)
    n = len(data)
    # 1. Length and the fixed identification fields.
    if n < MIN_STREAM_BYTES:
        raise BitstreamError(f"bitstream too short: {n} bytes, need at least {MIN_STREAM_BYTES}")
    if data[:2] != MAGIC:
        raise BitstreamError(f"bad magic {data[:2]!r}, expected {MAGIC!r}")
    if data[2] != VERSION:
        raise BitstreamError(f"unsupported format version {data[2]} (this reader: {VERSION})")
    # 2. Payload length vs the file length. n >= 25 so the 5 varint bytes at 20 exist.
    length, nv = _decode_varint(data, FIXED_HEADER_BYTES)
    expected = FIXED_HEADER_BYTES + nv + length + CRC_BYTES
    if n < expected:
        raise BitstreamError(
            f"truncated: header declares a {length}-byte payload, so the stream should be "
            f"{expected} bytes, got {n}"
        )
    if n > expected:
        raise BitstreamError(
            f"{n - expected} trailing bytes after a {length}-byte payload ({expected}-byte "
            f"stream expected, got {n})"
        )
    # 3. Integrity, before interpreting the remaining fields.
    stored = int.from_bytes(data[-CRC_BYTES:], "big")
    computed = zlib.crc32(data[:-CRC_BYTES])
    if stored != computed:
        raise BitstreamError(f"CRC mismatch: stored {stored:08x}, computed {computed:08x}")
    # 4. Field semantics (a stream with a valid CRC can still be hand-crafted).
    _, version, model_id, rate, height, width, *rms = _FIXED.unpack_from(data)
    if rate > MAX_RATE_INDEX:
        raise BitstreamError(f"rate index {rate} outside 0..{MAX_RATE_INDEX}")
    if height == 0 or width == 0:
        raise BitstreamError(f"zero image dimension: {width}x{height}")
    for v in rms:
        if not math.isfinite(v):
            raise BitstreamError(f"non-finite latent RMS {v}")
        if math.copysign(1.0, v) < 0:
            raise BitstreamError(f"negative latent RMS {v}")
    try:  # re-validates; cannot fail after the checks above, but must never leak ValueError
        header = Header(
            model_id=model_id,
            rate_index=rate,
            height=height,
            width=width,
            rms=tuple(rms),
            version=version,
        )
    except ValueError as e:
        raise BitstreamError(f"invalid header: {e}") from None
    start = FIXED_HEADER_BYTES + nv
    return header, data[start : start + length]
