"""Static-PMF range coding of vector-quantiser indices, and the framing every coder shares.

``IndexCoder`` codes the VQ indices of one image with a single static distribution (one PMF
per model / rate, shipped with the weights; the uniform PMF is the fixed-length fallback)
through ``constriction``'s range coder (Rust, with Python bindings). We do not hand-write a
range coder; this module quantises the PMF, frames the coder's words as bytes
(:func:`frame`, :func:`unframe`) and validates what comes in and back
(:func:`check_indices`, :func:`check_payload`); the context model (``context.py``) codes with
the same coder and framing, and a stream's header says which model coded it.

The PMF the coder uses
    The float PMF is quantised once to 16-bit integer frequencies (compressai's
    ``pmf_to_quantized_cdf``: every symbol gets a frequency >= 1, they sum to 2**16), and
    those integers are what ``constriction`` receives (``Categorical(freqs, perfect=True)``,
    which represents them exactly at its 24-bit precision). Encoder and decoder therefore
    agree on integers, not on float rounding inside a library, and a symbol ``s`` costs
    exactly ``-log2 q(s)`` bits with ``q(s) = freq(s) / 2**16`` (:meth:`IndexCoder.ideal_bits`).

Payload framing (byte by byte)
    ``constriction`` emits 32-bit words. The payload is those words big-endian, with the
    trailing zero bytes removed (the coder's sealed final word often ends in zero bits, and
    its decoder reads missing words as zeros, so nothing is lost); the decoder pads the
    payload with zeros to whole words. Zero symbols give an empty payload.

Cost model
    ``len(encode(x)) <= ideal_bits(x) / 8 + 8``; measured mean overhead ~2.3 bytes per
    stream (96 symbols of a 256-code book: 95.8 bytes for 93.4 ideal). The previous coder,
    compressai's 64-bit rANS, flushed an 8-byte state and wrote whole words: ~6.4 bytes over
    ideal, about 4% of the lowest rate's ~96-byte payload (bitstream version 2;
    ``bitstream.py``).

Safety of :meth:`IndexCoder.decode` on hostile input
    The decoder is memory-safe Rust: it never reads outside the array it is given, and a
    missing word reads as zero. Work is linear in ``count`` (capped at :data:`MAX_SYMBOLS`,
    and by the caller's pixel limit before that). Every symbol it can return lies in
    ``[0, K)`` by construction; we range-check anyway. Data that no encoder could have
    produced raises inside ``constriction`` (an ``AssertionError``, or ``ValueError``); any
    exception from it becomes :class:`BitstreamError`. A payload longer than any encoding
    of ``count`` symbols (:func:`max_payload_bytes`) is rejected up front.
"""

from __future__ import annotations

import math

import constriction
import numpy as np
from compressai._CXX import pmf_to_quantized_cdf

from oscar_core.errors import BitstreamError

PRECISION = 16  # bits of the integer frequencies (every symbol >= 1 of 2**16)
MIN_K = 2
MAX_K = (1 << PRECISION) // 2  # every symbol needs a frequency >= 1, with room to spare
MAX_SYMBOLS = 1 << 24  # cap on `count` from a (possibly hostile) header
SEAL_BYTES = 8  # a sealed range coder adds at most two 32-bit words to the ideal cost
DEFAULT_HISTOGRAM_FLOOR = 1e-6


def uniform_pmf(K: int) -> np.ndarray:
    """Uniform PMF over ``K`` symbols (float64, shape ``(K,)``)."""
    if not MIN_K <= K <= MAX_K:
        raise ValueError(f"K={K} outside the supported range [{MIN_K}, {MAX_K}]")
    return np.full(K, 1.0 / K, dtype=np.float64)


def pmf_from_histogram(counts: np.ndarray, floor: float = DEFAULT_HISTOGRAM_FLOOR) -> np.ndarray:
    """Normalised PMF from index counts, with ``floor`` (relative mass) added to every symbol.

    The floor keeps symbols unseen in the training histogram codable at a bounded cost
    (about ``-log2(floor)`` bits) instead of relying on the 16-bit quantiser's minimum.
    All-zero counts give the uniform PMF.
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1:
        raise ValueError(f"counts must be 1-D, got shape {c.shape}")
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise ValueError("counts must be finite and non-negative")
    if not (math.isfinite(floor) and floor >= 0):
        raise ValueError(f"floor must be finite and non-negative, got {floor}")
    total = c.sum()
    if total <= 0:
        return uniform_pmf(c.shape[0])
    p = c / total + floor
    return p / p.sum()


def fixed_length_bits(n: int, K: int) -> int:
    """Bits for ``n`` indices written as plain ``ceil(log2 K)``-bit integers."""
    if n < 0 or K < 1:
        raise ValueError(f"need n >= 0 and K >= 1, got n={n}, K={K}")
    return n * (K - 1).bit_length()


def max_payload_bytes(count: int, precision: int = PRECISION) -> int:
    """A bound on the payload of ``count`` symbols whose frequencies are >= 1 of
    ``2**precision``: each costs at most ``precision`` bits plus the range coder's rounding
    loss (far below one bit), then the seal. :meth:`IndexCoder.encode`: precision 16; the
    context model (``context.py``): 24, the coder's own precision."""
    return (count * (precision + 1) + 7) // 8 + SEAL_BYTES


def frame(words: np.ndarray) -> bytes:
    """The coder's sealed 32-bit words -> payload bytes: big-endian, trailing zero bytes
    removed (module docstring)."""
    return np.asarray(words, dtype=np.uint32).astype(">u4").tobytes().rstrip(b"\0")


def check_payload(data: object, count: object, precision: int = PRECISION) -> tuple[bytes, int]:
    """Validate an untrusted payload and symbol count before decoding: ``(bytes, count)``.

    Raises :class:`BitstreamError` for a non-bytes payload, a count that is not an integer
    in ``[0, MAX_SYMBOLS]``, a payload longer than any coding of ``count`` symbols
    (:func:`max_payload_bytes`) or bytes for zero symbols."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BitstreamError(f"entropy payload must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if isinstance(count, bool) or not isinstance(count, int | np.integer):
        raise BitstreamError(f"symbol count must be an integer, got {count!r}")
    count = int(count)
    if count < 0 or count > MAX_SYMBOLS:
        raise BitstreamError(f"symbol count {count} outside [0, MAX_SYMBOLS={MAX_SYMBOLS}]")
    limit = max_payload_bytes(count, precision)
    if len(data) > limit:
        raise BitstreamError(
            f"entropy payload of {len(data)} bytes is longer than any coding of {count} "
            f"symbols (at most {limit})"
        )
    if count == 0 and data:
        raise BitstreamError(f"entropy payload of {len(data)} bytes for 0 symbols")
    return data, count


def unframe(data: bytes) -> np.ndarray:
    """Payload bytes -> the coder's 32-bit words (zero-padded to whole words), (n,) uint32."""
    return np.frombuffer(data + bytes(-len(data) % 4), dtype=">u4").astype(np.uint32)


def check_indices(indices: np.ndarray, K: int) -> np.ndarray:
    """Indices to code (any shape, C order) -> flat int64; ``ValueError`` for non-integers,
    more than :data:`MAX_SYMBOLS` or an index outside ``[0, K)``."""
    arr = np.asarray(indices)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"indices must be integers, got dtype {arr.dtype}")
    flat = arr.reshape(-1)
    if flat.size > MAX_SYMBOLS:
        raise ValueError(f"{flat.size} indices exceed MAX_SYMBOLS={MAX_SYMBOLS}")
    if flat.size:
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi >= K:
            bad = lo if lo < 0 else hi
            raise ValueError(f"index {bad} outside the codebook [0, {K})")
    return flat.astype(np.int64)


class IndexCoder:
    """Range coder for indices in ``[0, K)`` under one static PMF."""

    def __init__(self, pmf: np.ndarray) -> None:
        try:
            p = np.asarray(pmf, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"pmf is not a numeric array: {e}") from e
        if p.ndim != 1:
            raise ValueError(f"pmf must be 1-D, got shape {p.shape}")
        K = p.shape[0]
        if not MIN_K <= K <= MAX_K:
            raise ValueError(f"pmf has K={K} symbols, outside [{MIN_K}, {MAX_K}]")
        if not np.all(np.isfinite(p)):
            raise ValueError("pmf contains NaN or infinite values")
        if np.any(p < 0):
            raise ValueError("pmf contains negative values")
        total = float(p.sum())
        if not total > 0:
            raise ValueError("pmf sums to zero")
        self.K = K
        self.pmf = p / total
        cdf = [int(v) for v in pmf_to_quantized_cdf(self.pmf.tolist(), PRECISION)]
        # pmf_to_quantized_cdf gives every symbol a frequency >= 1 and ends at 2**16.
        if len(cdf) != K + 1 or cdf[0] != 0 or cdf[-1] != 1 << PRECISION:
            raise ValueError("quantised CDF is malformed")  # would be a compressai change
        freqs = np.diff(np.asarray(cdf, dtype=np.int64))
        if np.any(freqs < 1):
            raise ValueError("quantised CDF gives a symbol zero frequency")
        # Integer-valued floats: perfect=True represents them exactly (module docstring).
        self._model = constriction.stream.model.Categorical(freqs.astype(np.float64), perfect=True)
        self._code_bits = PRECISION - np.log2(freqs.astype(np.float64))  # -log2 q(s)

    def encode(self, indices: np.ndarray) -> bytes:
        """Code ``indices`` (any shape, C order) to bytes; ``decode`` returns them flattened."""
        flat = check_indices(indices, self.K)
        encoder = constriction.stream.queue.RangeEncoder()
        if flat.size:
            encoder.encode(flat.astype(np.int32), self._model)
        return frame(encoder.get_compressed())  # (n,) uint32, sealed

    def decode(self, data: bytes, count: int) -> np.ndarray:
        """Decode ``count`` indices (int64, shape ``(count,)``) from untrusted ``data``.

        Raises :class:`BitstreamError` for anything wrong with ``data`` or ``count``.
        """
        data, count = check_payload(data, count)
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        try:
            decoder = constriction.stream.queue.RangeDecoder(unframe(data))
            out = decoder.decode(self._model, count)
        except Exception as e:  # noqa: BLE001 - constriction raises AssertionError/ValueError
            raise BitstreamError(f"entropy payload does not decode: {e}") from None
        arr = np.asarray(out, dtype=np.int64)
        if arr.shape != (count,):
            raise BitstreamError(f"entropy decoder returned {arr.shape}, expected ({count},)")
        bad = np.flatnonzero((arr < 0) | (arr >= self.K))
        if bad.size:  # unreachable by construction; kept as defence in depth
            raise BitstreamError(
                f"entropy payload decodes to symbol {int(arr[bad[0]])} outside the codebook "
                f"(K={self.K})"
            )
        return arr

    def ideal_bits(self, indices: np.ndarray) -> float:
        """``-sum log2 q(s)`` over ``indices`` under the coder's quantised PMF ``q``."""
        flat = check_indices(indices, self.K)
        return float(self._code_bits[flat].sum())
