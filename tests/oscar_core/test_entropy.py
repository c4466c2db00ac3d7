"""Tests for oscar_core.entropy: round trips, rate, and safety on hostile payloads."""

from __future__ import annotations

import struct
from pathlib import Path

import compressai
import numpy as np
import pytest
from compressai import ans

from oscar_core.entropy import (
    MAX_K,
    MAX_SYMBOLS,
    MIN_CODED_SYMBOLS,
    IndexCoder,
    decode_read_bound,
    fixed_length_bits,
    pmf_from_histogram,
    uniform_pmf,
)
from oscar_core.errors import BitstreamError


def skewed_pmf(K: int) -> np.ndarray:
    """Zipf-like PMF: a realistic VQ index distribution, far from uniform."""
    p = 1.0 / np.arange(1, K + 1) ** 1.3
    return p / p.sum()


@pytest.mark.parametrize("K", [16, 256, 1024, 2048])
@pytest.mark.parametrize("kind", ["uniform", "skewed"])
def test_round_trip(K: int, kind: str) -> None:
    rng = np.random.default_rng(K)
    pmf = uniform_pmf(K) if kind == "uniform" else skewed_pmf(K)
    coder = IndexCoder(pmf)
    x = rng.choice(K, size=(7, 300), p=pmf)
    x[0, :2] = [0, K - 1]  # both extremes of the codebook, including the rarest symbol
    data = coder.encode(x)
    y = coder.decode(data, x.size)
    assert y.dtype == np.int64 and y.shape == (x.size,)
    np.testing.assert_array_equal(y, x.reshape(-1))
    # Within the rANS constant overhead (8-byte flush + word alignment) of the ideal cost.
    assert len(data) * 8 <= coder.ideal_bits(x) + 12 * 8


@pytest.mark.parametrize("n", range(0, 2 * MIN_CODED_SYMBOLS + 1))
def test_tiny_inputs(n: int) -> None:
    # compressai's encoder overflows its buffer on 0-2 symbols; we pad to MIN_CODED_SYMBOLS.
    coder = IndexCoder(skewed_pmf(64))
    x = np.full(n, 63, dtype=np.int32)  # the least probable symbol: the worst case
    np.testing.assert_array_equal(coder.decode(coder.encode(x), n), x)


def test_skewed_beats_fixed_length() -> None:
    K, n = 1024, 4096
    pmf = skewed_pmf(K)
    coder = IndexCoder(pmf)
    x = np.random.default_rng(0).choice(K, size=n, p=pmf)
    data = coder.encode(x)
    assert len(data) * 8 < 0.8 * fixed_length_bits(n, K)
    assert coder.ideal_bits(x) < fixed_length_bits(n, K)


def test_uniform_costs_about_fixed_length() -> None:
    K, n = 256, 4000
    coder = IndexCoder(uniform_pmf(K))
    x = np.random.default_rng(1).integers(0, K, size=n)
    assert abs(len(coder.encode(x)) * 8 - fixed_length_bits(n, K)) <= 16 * 8


def test_helpers() -> None:
    assert fixed_length_bits(10, 1024) == 100
    assert fixed_length_bits(10, 1000) == 100
    assert fixed_length_bits(3, 2) == 3
    assert fixed_length_bits(0, 16) == 0
    p = uniform_pmf(8)
    assert p.dtype == np.float64 and p.shape == (8,) and np.isclose(p.sum(), 1.0)
    h = pmf_from_histogram(np.array([10, 0, 30, 0]))
    assert np.isclose(h.sum(), 1.0) and np.all(h > 0) and h[2] > h[0] > h[1]
    np.testing.assert_allclose(pmf_from_histogram(np.zeros(5)), uniform_pmf(5))
    with pytest.raises(ValueError):
        pmf_from_histogram(np.array([1.0, -1.0]))


@pytest.mark.parametrize(
    "pmf, reason",
    [
        (np.array([0.5, np.nan]), "NaN"),
        (np.array([0.5, np.inf]), "infinite"),
        (np.array([0.5, -0.1, 0.6]), "negative"),
        (np.zeros(4), "zero"),
        (np.ones(1), "K=1"),
        (np.ones(MAX_K + 1), f"K={MAX_K + 1}"),
        (np.ones((2, 2)), "1-D"),
    ],
)
def test_bad_pmf(pmf: np.ndarray, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        IndexCoder(pmf)


def test_bad_indices() -> None:
    coder = IndexCoder(uniform_pmf(16))
    for bad in (np.array([0, 16]), np.array([-1, 3]), np.array([0.5, 1.0])):
        with pytest.raises(ValueError):
            coder.encode(bad)


def test_count_limits() -> None:
    coder = IndexCoder(uniform_pmf(16))
    data = coder.encode(np.arange(16))
    with pytest.raises(BitstreamError, match="MAX_SYMBOLS"):
        coder.decode(data, MAX_SYMBOLS + 1)
    with pytest.raises(BitstreamError):
        coder.decode(data, -1)
    with pytest.raises(BitstreamError):
        coder.decode("not bytes", 4)  # type: ignore[arg-type]


def _check_hostile(coder: IndexCoder, data: bytes, count: int) -> None:
    """The only acceptable outcomes: a well-formed array, or BitstreamError."""
    try:
        y = coder.decode(data, count)
    except BitstreamError:
        return
    assert y.shape == (count,) and y.dtype == np.int64
    assert y.size == 0 or (y.min() >= 0 and y.max() < coder.K)


@pytest.mark.parametrize("K", [16, 1024])
def test_garbage_payloads(K: int) -> None:
    rng = np.random.default_rng(K + 7)
    coder = IndexCoder(skewed_pmf(K))
    for i in range(300):
        # Mostly word-aligned lengths so that the garbage reaches the C++ decoder.
        n_bytes = int(rng.integers(0, 64)) * 4 + (int(rng.integers(0, 4)) if i % 5 == 0 else 0)
        data = bytes([255]) * n_bytes if i % 7 == 0 else rng.bytes(n_bytes)
        _check_hostile(coder, data, int(rng.integers(0, 400)))


def test_truncated_and_extended_payloads() -> None:
    rng = np.random.default_rng(3)
    K = 256
    coder = IndexCoder(skewed_pmf(K))
    x = rng.choice(K, size=500, p=coder.pmf)
    data = coder.encode(x)
    for cut in range(len(data) + 1):
        _check_hostile(coder, data[:cut], x.size)
    for extra in range(1, 40):
        _check_hostile(coder, data + rng.bytes(extra), x.size)
        _check_hostile(coder, data, x.size + extra)  # more symbols than were coded


def test_decoder_reads_stay_within_bound() -> None:
    """Drive compressai's decoder directly on a buffer padded exactly to decode_read_bound,
    followed by a sentinel region: if any read went past the bound, filling the sentinel
    with 0xFF instead of 0x00 would change the output. Includes a stream crafted to enter
    the bypass path of the usual tail-mass CDF (state lands on the tail, then 15-nibbles)."""
    rng = np.random.default_rng(5)
    dec = ans.RansDecoder()
    for K in (16, 1024):
        coder = IndexCoder(skewed_pmf(K))
        cdf = coder._cdf  # the coder's CDF with its empty tail interval
        for i in range(300):
            count = int(rng.integers(1, 200))
            if i % 3 == 0:
                data = rng.bytes(int(rng.integers(0, 64)) * 4)
            elif i % 3 == 1:
                words = [cdf[K - 1], 0] + [15] * int(rng.integers(0, 40))
                data = struct.pack(f"<{len(words)}I", *words)
            else:
                data = b"\xff" * (int(rng.integers(0, 64)) * 4)
            buf = data + bytes(max(0, decode_read_bound(count) - len(data)))
            outs = [
                dec.decode_with_indexes(
                    buf + fill * 4096 + bytes(4096), [0] * count, [cdf], [len(cdf)], [0]
                )
                for fill in (b"\x00", b"\xff")
            ]
            assert outs[0] == outs[1], "decoder read past decode_read_bound"
            assert 0 <= min(outs[0]) and max(outs[0]) < K, "bypass path reached"


def test_compressai_built_without_asserts() -> None:
    """Our CDF ends with a zero-width interval, which compressai's debug-only assert_cdfs
    rejects (abort). Release wheels are built with NDEBUG: the extension must not import
    __assert_fail. If this fails, a compressai upgrade changed that and entropy.py must be
    revisited."""
    ext = [p for p in Path(compressai.__file__).parent.glob("ans*.so")]
    assert ext, "compressai rANS extension not found"
    assert b"__assert_fail" not in ext[0].read_bytes()
