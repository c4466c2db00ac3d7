"""Tests for oscar_core.bitstream: exact layout (format 4, and format 3 still read), round
trip, and rejection of bad streams."""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oscar_core.bitstream import (
    FIXED_HEADER_BYTES,
    FORMAT3_HEADER_BYTES,
    MAGIC,
    MIN_STREAM_BYTES,
    Header,
    ProbabilityModel,
    crc_matches,
    format_version,
    pack,
    rms_code,
    rms_value,
    unpack,
)
from oscar_core.errors import BitstreamError

# Bounded and without the example database (no .hypothesis/ files left in the repo).
FAST = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def make_header(**kw: object) -> Header:
    fields: dict[str, object] = dict(
        model_id=b"\x12\x34\x56\x78",
        rate_index=3,
        height=375,
        width=500,
        rms=(0.8123, 1.234567, 0.0, 3.14159),
    )
    fields.update(kw)
    return Header(**fields)  # type: ignore[arg-type]


PAYLOAD = bytes(range(90))  # a typical lowest-rate payload size
MODEL = b"\x12\x34\x56\x78"  # make_header's model id: seeds the CRC


def raw_stream(
    *,
    magic: bytes = MAGIC,
    version: int = 4,
    model_id: bytes = MODEL,
    rate: int = 0,
    dims: tuple[int, int] = (64, 48),
    rms_codes: tuple[int, int, int, int] = (0,) * 4,  # 2 ** 0 = 1.0
    probability_model: int | None = 2,  # None: no byte (format 3)
    payload: bytes = b"\x01\x02\x03\x04\x05\x06\x07\x08",
) -> bytes:
    """Build a stream field by field, bypassing Header validation, with a correct CRC
    (seeded with ``model_id``)."""
    body = magic + bytes([version << 4 | rate]) + struct.pack(">2H", *dims)
    body += struct.pack(">4b", *rms_codes)
    if probability_model is not None:
        body += bytes([probability_model])
    body += payload
    return body + struct.pack(">I", zlib.crc32(model_id + body))


def test_layout_is_byte_exact() -> None:
    h = make_header(probability_model=ProbabilityModel.CONTEXT)
    s = pack(h, PAYLOAD)
    assert FIXED_HEADER_BYTES == 11 and MIN_STREAM_BYTES == 15 and FORMAT3_HEADER_BYTES == 10
    assert len(s) == 11 + len(PAYLOAD) + 4
    assert s[:1] == b"O" and s[1] == 0x43  # version 4 << 4 | rate 3
    assert struct.unpack(">2H", s[2:6]) == (375, 500)
    # rms (0.8123, 1.234567, 0.0, 3.14159) -> round(16 log2 v), 0 clamped to -128
    assert struct.unpack(">4b", s[6:10]) == (-5, 5, -128, 26)
    assert s[10] == 2  # the context model coded the payload
    assert s[11:-4] == PAYLOAD
    assert h.model_id not in s  # not written: it seeds the CRC
    assert s[-4:] == struct.pack(">I", zlib.crc32(h.model_id + s[:-4]))
    assert s == raw_stream(rate=3, dims=(375, 500), rms_codes=(-5, 5, -128, 26), payload=PAYLOAD)
    assert [m.value for m in ProbabilityModel] == [0, 1, 2]  # uniform, static, context


def test_format_3_is_read_and_reemitted() -> None:
    """Format 3: format 4 without byte 10, always the static pmf; its CRC is seeded with the
    id the model had without its context model (``format3_model_id``)."""
    base = b"\x0a\x0b\x0c\x0d"
    s3 = raw_stream(version=3, model_id=base, rate=3, probability_model=None, payload=PAYLOAD)
    assert format_version(s3) == 3 and format_version(pack(make_header(), b"")) == 4
    header, payload = unpack(s3, MODEL, base)
    assert (header.version, header.probability_model, payload) == (
        3,
        ProbabilityModel.STATIC,
        PAYLOAD,
    )
    assert header.model_id == base and header.header_bytes == 10
    assert pack(header, payload) == s3  # the parsed header re-emits the same bytes
    with pytest.raises(BitstreamError, match="for model 12345678 .*format-3 stream"):
        unpack(s3, MODEL)  # format3_model_id defaults to model_id
    # a format-4 stream is never checked against the format-3 id
    s4 = pack(make_header(model_id=base), PAYLOAD)
    with pytest.raises(BitstreamError, match="CRC mismatch"):
        unpack(s4, MODEL, base)
    with pytest.raises(ValueError, match="format-3 header has the static pmf"):
        make_header(version=3, probability_model=ProbabilityModel.CONTEXT)
    assert crc_matches(s3, base) and not crc_matches(s3, MODEL)


@pytest.mark.parametrize("code", [3, 17, 255])
def test_reserved_probability_models_are_refused(code: int) -> None:
    with pytest.raises(BitstreamError, match=f"probability model {code} is reserved"):
        unpack(raw_stream(probability_model=code), MODEL)


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 16384])
def test_round_trip(n: int) -> None:
    h = make_header(rms=(0.1, 65504.0, 1e-7, 2.0))
    assert h.rms == (rms_value(-53), rms_value(127), rms_value(-128), 2.0)  # rounded, clamped
    payload = np.random.default_rng(n).bytes(n)
    h2, p2 = unpack(pack(h, payload), MODEL)
    assert p2 == payload
    assert h2 == h  # the header the encoder builds is the header the decoder parses
    assert (h2.model_id, h2.rate_index, h2.height, h2.width) == (MODEL, 3, 375, 500)
    assert h2.version == 4 and h2.probability_model == ProbabilityModel.STATIC
    assert unpack(pack(h2, p2), MODEL) == (h2, p2)  # idempotent once rounded


def test_model_id_seeds_the_crc() -> None:
    s = pack(make_header(), PAYLOAD)
    other = b"\x12\x34\x56\x79"
    assert crc_matches(s, MODEL) and not crc_matches(s, other)
    assert not crc_matches(s[:-1], MODEL) and not crc_matches(b"junk", MODEL)
    with pytest.raises(BitstreamError, match="for model 12345679.*another model wrote it"):
        unpack(s, other)
    with pytest.raises(ValueError, match="model_id must be 4 bytes"):
        unpack(s, b"abc")


def test_version_2_streams_are_named() -> None:
    v2 = b"OS\x02" + b"abcd" + bytes(9) + PAYLOAD + bytes(4)  # a version-2 layout
    with pytest.raises(BitstreamError, match="format version 2 .*earlier release"):
        unpack(v2, MODEL)


def test_rms_code_is_a_log_scale_with_bounded_error() -> None:
    for code in range(-128, 128):
        assert rms_code(rms_value(code)) == code
    rng = np.random.default_rng(1)
    for v in rng.uniform(0.004, 240, 2000):
        assert abs(rms_value(rms_code(v)) / v - 1) <= 2 ** (1 / 32) - 1 + 1e-12  # +-2.2%
    assert rms_code(0.0) == rms_code(1e-30) == -128 and rms_code(1e9) == 127


def test_header_validation() -> None:
    for bad in (
        dict(model_id=b"abc"),
        dict(model_id="abcd"),
        dict(rate_index=16),
        dict(rate_index=-1),
        dict(height=0),
        dict(width=65536),
        dict(rms=(1.0, 2.0, 3.0)),
        dict(rms=(1.0, 2.0, 3.0, math.nan)),
        dict(rms=(1.0, 2.0, 3.0, -1.0)),
        dict(rms=(1.0, 2.0, 3.0, math.inf)),
        dict(version=1),  # version 1 streams (with latent dims) are not written any more
        dict(version=5),
        dict(probability_model=3),
        dict(probability_model=-1),
        dict(height=375.0),
    ):
        with pytest.raises(ValueError):
            make_header(**bad)
    assert make_header(rms=(-0.0, 0.0, 1.0, 1.0)).rms[:2] == (rms_value(-128),) * 2
    with pytest.raises(ValueError):
        pack(make_header(), "text")  # type: ignore[arg-type]


def test_specific_errors() -> None:
    s = pack(make_header(), PAYLOAD)
    cases = [
        ("nope", "must be bytes"),
        (s[:10], "too short: 10 bytes"),
        (s[:14], "too short: 14 bytes, need at least 15"),
        (b"P" + s[1:], "bad magic b'P'"),
        (s[:1] + b"\x13" + s[2:], "unsupported format version 1"),
        (s[:1] + b"\x53" + s[2:], "unsupported format version 5"),
        (s[:-1], "CRC mismatch.*truncated"),
        (s + b"\x00", "CRC mismatch.*appended"),
        (s[:-4] + bytes(4), "CRC mismatch"),
        (raw_stream(dims=(0, 5)), "zero image dimension"),
    ]
    for data, msg in cases:
        with pytest.raises(BitstreamError, match=msg.replace("(", r"\(")):
            unpack(data, MODEL)  # type: ignore[arg-type]


def test_every_truncation_fails() -> None:
    s = pack(make_header(), PAYLOAD)
    for n in range(len(s)):
        with pytest.raises(BitstreamError):
            unpack(s[:n], MODEL)


def test_bit_flips_fail() -> None:
    s = pack(make_header(), PAYLOAD)
    nbits = len(s) * 8
    rng = np.random.default_rng(0)
    for i in range(2000):
        k = 1 if i < 1000 else int(rng.integers(2, 9))
        buf = bytearray(s)
        for bit in rng.choice(nbits, size=k, replace=False):
            buf[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(BitstreamError):
            unpack(bytes(buf), MODEL)


@FAST
@given(st.binary(max_size=120))
def test_arbitrary_bytes(data: bytes) -> None:
    for candidate in (data, MAGIC + b"\x30" + data, MAGIC + b"\x40" + data):
        try:
            header, payload = unpack(candidate, MODEL)
        except BitstreamError:
            continue
        assert isinstance(header, Header) and isinstance(payload, bytes)


@FAST
@given(payload=st.binary(max_size=64), rate=st.integers(0, 15), model=st.integers(0, 2))
def test_arbitrary_payload_with_valid_crc(payload: bytes, rate: int, model: int) -> None:
    s = raw_stream(payload=payload, rate=rate, probability_model=model)
    header, p = unpack(s, MODEL)
    assert p == payload and header.rate_index == rate and header.rms == (1.0,) * 4
    assert header.probability_model == model
    s3 = raw_stream(payload=payload, rate=rate, version=3, probability_model=None)
    assert unpack(s3, MODEL) == (Header(MODEL, rate, 64, 48, (1.0,) * 4, 3), payload)


_DIM = st.sampled_from([0, 1, 7, 8, 9, 375, 4096, 65534, 65535])


@FAST
@given(
    dims=st.tuples(_DIM, _DIM),
    rms_codes=st.tuples(*[st.sampled_from([-128, -1, 0, 1, 127])] * 4),
    rate=st.sampled_from([0, 1, 14, 15]),  # the rate nibble holds any 0..15
)
def test_extreme_header_fields(
    dims: tuple[int, int], rms_codes: tuple[int, int, int, int], rate: int
) -> None:
    s = raw_stream(dims=dims, rms_codes=rms_codes, rate=rate)
    if min(dims) >= 1:  # every int8 RMS code is a valid value
        header, _ = unpack(s, MODEL)
        assert (header.height, header.width) == dims and header.rms_codes == rms_codes
        assert header.rate_index == rate
    else:
        with pytest.raises(BitstreamError):
            unpack(s, MODEL)
