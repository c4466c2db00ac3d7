"""Tests for oscar_core.entropy: round trips, rate, and safety on hostile payloads."""

from __future__ import annotations

import numpy as np
import pytest

from oscar_core.entropy import (
    MAX_K,
    MAX_SYMBOLS,
    SEAL_BYTES,
    IndexCoder,
    fixed_length_bits,
    max_payload_bytes,
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
    # Within the range coder's seal (at most two words) of the ideal cost, never below it.
    assert coder.ideal_bits(x) <= len(data) * 8 <= coder.ideal_bits(x) + SEAL_BYTES * 8
    assert not data.endswith(b"\0")  # trailing zero bytes are dropped (the framing)
    assert len(data) <= max_payload_bytes(x.size)


@pytest.mark.parametrize("n", range(0, 17))
def test_tiny_inputs(n: int) -> None:
    coder = IndexCoder(skewed_pmf(64))
    x = np.full(n, 63, dtype=np.int32)  # the least probable symbol: the worst case
    data = coder.encode(x)
    assert (n == 0) == (data == b"")  # no symbols, no bytes
    np.testing.assert_array_equal(coder.decode(data, n), x)


def test_small_payload_overhead() -> None:
    """The lowest rate codes ~96 indices of a 256-code book: the seal is what shows. Mean
    overhead over the ideal cost ~2.3 bytes (compressai's rANS, version 2: ~6.4)."""
    rng = np.random.default_rng(0)
    pmf = rng.dirichlet(np.full(256, 3.0))
    coder = IndexCoder(pmf)
    extra = []
    for _ in range(200):
        x = rng.choice(256, size=96, p=pmf)
        extra.append(len(coder.encode(x)) - coder.ideal_bits(x) / 8)
    assert 0 <= min(extra) and max(extra) <= SEAL_BYTES and np.mean(extra) < 3.5


def test_bytes_are_stable() -> None:
    """Golden bytes: the payload format must not change with a library upgrade (the
    integer frequencies, constriction's range coder, big-endian words, zeros stripped).
    If this fails, old streams no longer decode: bump the bitstream version instead."""
    coder = IndexCoder(skewed_pmf(16))
    x = np.array([0, 1, 2, 3, 15, 0, 0, 7, 3, 1, 0, 2])
    assert coder.encode(x).hex() == "33ba2b4855e8d865"
    np.testing.assert_array_equal(coder.decode(bytes.fromhex("33ba2b4855e8d865"), 12), x)


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
        n_bytes = int(rng.integers(0, 260))
        data = bytes([255]) * n_bytes if i % 7 == 0 else rng.bytes(n_bytes)
        _check_hostile(coder, data, int(rng.integers(0, 400)))


def test_too_long_payload_is_rejected() -> None:
    coder = IndexCoder(uniform_pmf(16))
    with pytest.raises(BitstreamError, match="longer than any coding of 3 symbols"):
        coder.decode(bytes(max_payload_bytes(3) + 1), 3)
    with pytest.raises(BitstreamError, match="for 0 symbols"):
        coder.decode(b"\x01", 0)


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
