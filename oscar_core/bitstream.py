"""The OSCAR container format, version 4 (version 3 is still read).

One image per stream; the stream's length is known to whoever holds it (a file, a Parquet
binary cell), so it is not repeated inside. All multi-byte integers are big-endian::

    off  len  field
    0    1    magic 0x4F ("O")
    1    1    format version (high nibble, = 4) | rate index (low nibble, 0..15; the codec
              checks it against its ladder)
    2    2    H, original image height in pixels (uint16, >= 1)
    4    2    W, original image width in pixels (uint16, >= 1)
    6    4    4 x int8 q: per-channel RMS of z0 = 2 ** (q / 16), the norms the decoder
              rescales z~ to (log scale, 1/16 octave steps, 0.0039 .. 245)
    10   1    probability model of the payload (:class:`ProbabilityModel`): 0 = uniform
              (every index 1/K), 1 = the rate's static pmf (``model.safetensors``),
              2 = the rate's context model (``context.safetensors``, ``context.py``);
              3..255 are reserved and refused
    11   L    payload: range-coded VQ indices, L = n - 15 (framing in ``entropy.py``; the
              context model's symbol order and frequencies in ``context.py``)
    end  4    CRC-32 (zlib.crc32) over the 4-byte model id, then every preceding byte

The encoder codes the indices under each probability model the model directory has and
keeps the shortest payload, so a stream never costs more than uniform (= fixed-length)
indices plus the range coder's seal and the one model byte.

The model id (first 4 bytes of SHA-256 over the model's config + weights, then its context
model: ``OscarModel.model_id``) is not written: it seeds the CRC. A stream read with another
model than the one that wrote it fails the CRC check exactly as a corrupted stream does
(false match: 2**-32), so decoding with the wrong model is still refused, and a reader
holding several models finds the right one by trying their ids (:func:`crc_matches`). Batch
outputs also keep the id per row (Parquet ``model_id``).

Overhead: 11 fixed bytes + 4 CRC = 15 bytes. The lowest rate's nominal size is 96 bytes on
a 768x512 image (0.00195 bpp), so every header byte is about 1% of its bpp.

History
    Version 4 (2026-12): the probability-model byte at offset 10 (the context model of
    ``context.py`` codes the indices given their decoded neighbours: 20-40% fewer payload
    bytes than the static pmf on Kodak). Version 3 streams still decode: their layout is
    version 4's without byte 10, their payload is always the static pmf, and their CRC is
    seeded with the id the model had before context models existed
    (``OscarModel.base_model_id``: config + weights only), so every format-3 stream a model
    wrote still decodes after ``oscar fit-context`` adds a context model to it.
    Version 3 (2026-12): 6 bytes fewer than version 2 -- magic 1 byte instead of "OS",
    version and rate share a byte, the model id moved into the CRC -- and the payload is
    ``constriction``'s range coder instead of compressai's rANS (~4 bytes less per stream,
    ``entropy.py``). Version 2 streams ("OS", 0x02, ...) are recognised and refused with a
    message naming the version; decode them with a release from before 2026-12.
    Version 1 (never released) carried the padded latent size, the RMS as float16 and a
    varint payload length, all derivable or not worth their bytes.

Why these choices
    * RMS rather than the L2 norm of each latent channel: the RMS does not grow with the
      image size (the L2 norm grows with sqrt(h*w)). A log code gives the same relative
      precision (+-2.2%) at every scale. ``Header`` rounds the values it is given to the
      code, so the header the encoder builds equals the header the decoder parses.
    * The probability model in a whole byte, not in spare bits: no field has spare bits
      (the rate nibble serves 16-rate ladders, the sides use all 16 bits), and a byte reads
      without bit arithmetic (``oscar info`` prints it).
    * CRC at the end: the writer computes it in one pass over what it has written, and the
      reader checks it after the magic/version/length checks but before interpreting any
      other field, so corruption (including truncation or extra bytes, which the CRC
      catches since the payload runs to the end) is reported as corruption rather than as
      whatever odd field value it happens to produce.

Parsing never allocates or loops based on an unchecked field: every field has a fixed
offset and the payload is a slice of the input.
"""

from __future__ import annotations

import math
import operator
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

from oscar_core.errors import BitstreamError

MAGIC = b"O"
VERSION = 4  # what pack writes
FORMAT3 = 3  # still read (static-pmf payload, no probability-model byte)
READABLE_VERSIONS = (FORMAT3, VERSION)
LEGACY_V2_PREFIX = b"OS\x02"  # magic + version of format 2 (read: refused with its name)
MODEL_ID_BYTES = 4
MAX_RATE_INDEX = 15
MAX_DIM = 0xFFFF  # uint16
CRC_BYTES = 4
RMS_STEPS_PER_OCTAVE = 16  # RMS = 2 ** (q / 16), q int8


class ProbabilityModel(IntEnum):
    """Byte 10 of a format-4 stream: which probability model coded the payload."""

    UNIFORM = 0  # every index 1/K: fixed-length indices plus the coder's seal
    STATIC = 1  # the rate's static pmf (the only model of format 3)
    CONTEXT = 2  # the rate's context model: P(index | decoded neighbours)


_FIXED = struct.Struct(">1sBHH4b")  # magic, version << 4 | rate, H, W, rms codes
FORMAT3_HEADER_BYTES = _FIXED.size  # 10
FIXED_HEADER_BYTES = FORMAT3_HEADER_BYTES + 1  # 11: + the probability-model byte
MIN_STREAM_BYTES = FIXED_HEADER_BYTES + CRC_BYTES  # empty payload: 15 bytes
MIN_FORMAT3_BYTES = FORMAT3_HEADER_BYTES + CRC_BYTES  # 14


def rms_code(value: float) -> int:
    """The int8 log code of an RMS value (clamped to the representable 0.0039 .. 245)."""
    if value <= 0:
        return -128
    q = round(RMS_STEPS_PER_OCTAVE * math.log2(value))
    return max(-128, min(127, q))


def rms_value(code: int) -> float:
    return 2.0 ** (code / RMS_STEPS_PER_OCTAVE)


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
    """Decoded header fields. ``rms`` is rounded to its 1/16-octave log code on creation.

    ``version`` 3 headers (parsed from format-3 streams) always have the static pmf."""

    model_id: bytes
    rate_index: int
    height: int
    width: int
    rms: tuple[float, float, float, float]
    version: int = VERSION
    probability_model: ProbabilityModel = ProbabilityModel.STATIC

    def __post_init__(self) -> None:
        # Programmer errors when building a header to pack: ValueError, not BitstreamError.
        _check_model_id(self.model_id)
        if isinstance(self.version, bool) or self.version not in READABLE_VERSIONS:
            raise ValueError(f"version={self.version!r}, should be one of {READABLE_VERSIONS}")
        ints = {"rate_index": (0, MAX_RATE_INDEX), "height": (1, MAX_DIM), "width": (1, MAX_DIM)}
        for name, (lo, hi) in ints.items():
            object.__setattr__(self, name, _check_int(name, getattr(self, name), lo, hi))
        code = _check_int("probability_model", self.probability_model, 0, max(ProbabilityModel))
        if self.version == FORMAT3 and code != ProbabilityModel.STATIC:
            raise ValueError(f"a format-3 header has the static pmf, got probability_model={code}")
        object.__setattr__(self, "probability_model", ProbabilityModel(code))
        try:
            rms = tuple(float(v) for v in self.rms)
        except (TypeError, ValueError):
            raise ValueError(f"rms must be 4 floats, got {self.rms!r}") from None
        if len(rms) != 4:
            raise ValueError(f"rms must have 4 values, got {len(rms)}")
        for v in rms:
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"rms values must be finite and >= 0, got {rms}")
        object.__setattr__(self, "rms", tuple(rms_value(rms_code(v)) for v in rms))

    @property
    def rms_codes(self) -> tuple[int, ...]:
        return tuple(rms_code(v) for v in self.rms)

    @property
    def header_bytes(self) -> int:
        """Bytes before the payload: 11 (format 4) or 10 (format 3)."""
        return FIXED_HEADER_BYTES if self.version == VERSION else FORMAT3_HEADER_BYTES


def _check_model_id(model_id: object) -> bytes:
    if not isinstance(model_id, bytes) or len(model_id) != MODEL_ID_BYTES:
        raise ValueError(f"model_id must be {MODEL_ID_BYTES} bytes, got {model_id!r}")
    return model_id


def _crc(model_id: bytes, body: bytes) -> int:
    """CRC-32 of ``model_id + body`` (the id is never written; see the module docstring)."""
    return zlib.crc32(body, zlib.crc32(model_id))


def _stored_and_computed_crc(data: bytes, model_id: bytes) -> tuple[int, int]:
    """The stream's CRC trailer, and the CRC of what precedes it under ``model_id``."""
    return int.from_bytes(data[-CRC_BYTES:], "big"), _crc(model_id, data[:-CRC_BYTES])


def pack(header: Header, payload: bytes) -> bytes:
    """Serialise ``header`` and ``payload`` (layout in the module docstring) in the header's
    format version: 4 for every header the codec builds; 3 re-emits a parsed format-3
    header."""
    if not isinstance(header, Header):
        raise ValueError(f"header must be a Header, got {type(header).__name__}")
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise ValueError(f"payload must be bytes, got {type(payload).__name__}")
    body = _FIXED.pack(
        MAGIC,
        header.version << 4 | header.rate_index,
        header.height,
        header.width,
        *header.rms_codes,
    )
    if header.version == VERSION:
        body += bytes([header.probability_model])
    body += bytes(payload)
    return body + struct.pack(">I", _crc(header.model_id, body))


def format_version(data: object) -> int:
    """The format version of a stream (3 or 4), after the checks that need no model: type,
    length, magic, version. Raises :class:`BitstreamError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BitstreamError(f"bitstream must be bytes, got {type(data).__name__}")
    data = bytes(data)
    n = len(data)
    if data[:3] == LEGACY_V2_PREFIX:
        raise BitstreamError(
            "format version 2 (written before 2026-12); this reader reads versions "
            f"{READABLE_VERSIONS}: decode it with an earlier release and re-encode"
        )
    if n < MIN_FORMAT3_BYTES:
        raise BitstreamError(f"bitstream too short: {n} bytes, need at least {MIN_FORMAT3_BYTES}")
    if data[:1] != MAGIC:
        raise BitstreamError(f"bad magic {data[:1]!r}, expected {MAGIC!r}")
    version = data[1] >> 4
    if version not in READABLE_VERSIONS:
        raise BitstreamError(
            f"unsupported format version {version} (this reader: {READABLE_VERSIONS})"
        )
    if version == VERSION and n < MIN_STREAM_BYTES:
        raise BitstreamError(f"bitstream too short: {n} bytes, need at least {MIN_STREAM_BYTES}")
    return version


def crc_matches(data: bytes, model_id: bytes) -> bool:
    """Whether ``data`` is an intact stream written by the model ``model_id`` (no other
    field is interpreted; ``False`` for anything malformed). For a format-3 stream pass the
    model's ``base_model_id`` (the module docstring)."""
    try:
        format_version(data)
    except BitstreamError:
        return False
    stored, computed = _stored_and_computed_crc(bytes(data), _check_model_id(model_id))
    return stored == computed


def unpack(
    data: bytes, model_id: bytes, format3_model_id: bytes | None = None
) -> tuple[Header, bytes]:
    """Parse and validate a stream written by model ``model_id``.

    A format-3 stream's CRC is checked against ``format3_model_id`` (default ``model_id``):
    the model's id without its context model (``OscarModel.base_model_id``), the id
    format-3 writers seeded it with. Every problem with ``data`` raises
    :class:`BitstreamError`; an id that is not 4 bytes is a programmer error
    (``ValueError``).
    """
    model_id = _check_model_id(model_id)
    format3_id = model_id if format3_model_id is None else _check_model_id(format3_model_id)
    # 1. Length and the fixed identification fields.
    version = format_version(data)
    data = bytes(data)
    n = len(data)
    seed = model_id if version == VERSION else format3_id
    # 2. Integrity (and the model), before interpreting the remaining fields. The payload
    #    runs to the CRC, so a truncated or extended stream fails here too.
    stored, computed = _stored_and_computed_crc(data, seed)
    if stored != computed:
        raise BitstreamError(
            f"CRC mismatch: stored {stored:08x}, computed {computed:08x} for model "
            f"{seed.hex()} (the {n}-byte format-{version} stream is corrupted, truncated or "
            "has bytes appended, or another model wrote it)"
        )
    # 3. Field semantics (a stream with a valid CRC can still be hand-crafted).
    _, version_rate, height, width, *codes = _FIXED.unpack_from(data)
    if height == 0 or width == 0:
        raise BitstreamError(f"zero image dimension: {width}x{height}")
    model = ProbabilityModel.STATIC
    if version == VERSION:
        code = data[FORMAT3_HEADER_BYTES]
        if code > max(ProbabilityModel):
            raise BitstreamError(
                f"probability model {code} is reserved (known: "
                + ", ".join(f"{m.value} = {m.name.lower()}" for m in ProbabilityModel)
                + ")"
            )
        model = ProbabilityModel(code)
    try:  # re-validates; cannot fail after the checks above, but must never leak ValueError
        header = Header(
            model_id=seed,
            rate_index=version_rate & 0x0F,
            height=height,
            width=width,
            rms=tuple(rms_value(q) for q in codes),
            version=version,
            probability_model=model,
        )
    except ValueError as e:
        raise BitstreamError(f"invalid header: {e}") from None
    return header, data[header.header_bytes : -CRC_BYTES]
