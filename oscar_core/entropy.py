"""Static-CDF rANS coding of vector-quantiser indices.

The VQ indices of one image are coded with a single static distribution (one PMF per
model / rate, shipped with the weights) through compressai's 64-bit rANS coder. We do not
hand-write a range coder; this module only prepares the CDF, guards the C++ calls and
validates what comes back.

Cost model
    A symbol ``s`` costs ``-log2 q(s)`` bits, where ``q`` is the 16-bit quantised PMF the
    coder really uses (``freq(s) / 2**16``); :meth:`IndexCoder.ideal_bits` returns that sum.
    rANS adds a constant overhead: the 64-bit final state is flushed (8 bytes) and output is
    written in 32-bit words, so ``len(encode(x)) <= ideal_bits(x) / 8 + 12`` in practice.
    :func:`fixed_length_bits` is the baseline of plain ``ceil(log2 K)``-bit indices.

Safety of :meth:`IndexCoder.decode` on hostile input
    compressai's decoder (``rans_interface.cpp``, ``RansDecoder::decode_with_indexes``) never
    bounds-checks its input buffer. Reading it, the reads are:

    * ``Rans64DecInit``: two 32-bit words;
    * ``Rans64DecAdvance``: at most one 32-bit word per symbol (renormalisation refill);
    * the *bypass* path, taken when the decoded symbol is the last CDF entry
      (``s == cdf_size - 2``, the "tail" that the usual ``pmf + [tail_mass]`` recipe adds):
      ``Rans64DecGetBits`` reads a word per 4-bit call, the escape loop runs while nibbles
      are 15 and the raw-value loop then runs ``n_bypass`` (up to 15x the escape count)
      times. With zero padding the state can become 0, after which *every* call reads a new
      word, so one hostile bypass symbol can read ~15 words per input word, and more from a
      state synthesised by the arithmetic. No small per-symbol bound exists (measured: a
      168-byte hostile stream makes 2 symbols read > 2 KiB).

    We therefore make the bypass path unreachable instead of bounding it: the coder's CDF is
    the K-symbol quantised CDF (``cdf[K] == 2**16``) followed by a duplicated ``2**16``
    entry. The decoder picks ``s`` as the first entry greater than ``cum_freq < 2**16``, so
    ``s <= K - 1 < K == cdf_size - 2`` and the bypass branch can never run. (This CDF breaks
    the strict-monotonicity ``assert`` in compressai's debug-only ``assert_cdfs``; the
    released extension is built with ``NDEBUG`` -- it does not import ``__assert_fail``,
    which the tests check.) Valid indices lie in ``[0, K)`` so the encoder never uses bypass
    either. The total read is then at most ``8 + 4 * count`` bytes
    (:func:`decode_read_bound`), so decode runs on a zero-padded copy at least that long,
    ``count`` is capped at :data:`MAX_SYMBOLS`, and every decoded symbol is range-checked.

    The encoder has a related bug: its output buffer holds one word per symbol but the
    flush alone writes two, so encoding 0-2 symbols corrupts the heap (observed: a crash).
    :meth:`IndexCoder.encode` therefore always codes at least :data:`MIN_CODED_SYMBOLS`
    symbols, appending the most probable one; ``decode(data, count)`` just stops after
    ``count``.
"""

from __future__ import annotations

import math

import numpy as np
from compressai import ans
from compressai._CXX import pmf_to_quantized_cdf

from oscar_core.errors import BitstreamError

PRECISION = 16  # compressai's rANS works with 16-bit frequencies (hard-coded in C++)
MIN_K = 2
MAX_K = (1 << PRECISION) // 2  # every symbol needs a frequency >= 1, with room to spare
MAX_SYMBOLS = 1 << 24  # cap on `count` from a (possibly hostile) header: 64 MiB of padding
# At most M/2 + 3 output words for M symbols (<= 16 bits each, plus the 2-word flush) must
# fit the encoder's M-word buffer: M >= 6 suffices, 8 leaves margin.
MIN_CODED_SYMBOLS = 8
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


def decode_read_bound(count: int) -> int:
    """Most bytes compressai's decoder can read for ``count`` symbols with our CDF.

    Two words of initial state plus at most one refill word per symbol; the bypass path
    that could read more is unreachable (see the module docstring).
    """
    return 8 + 4 * count


class IndexCoder:
    """rANS coder for indices in ``[0, K)`` under one static PMF."""

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
        # Duplicated final entry: an empty "tail" interval, so the bypass path is dead code.
        self._cdf = cdf + [1 << PRECISION]
        self._code_bits = PRECISION - np.log2(freqs.astype(np.float64))  # -log2 q(s)
        self._mode = int(np.argmax(freqs))  # cheapest symbol, used to pad tiny inputs

    def _check_indices(self, indices: np.ndarray) -> np.ndarray:
        arr = np.asarray(indices)
        if arr.dtype.kind not in "iu":
            raise ValueError(f"indices must be integers, got dtype {arr.dtype}")
        flat = arr.reshape(-1)
        if flat.size > MAX_SYMBOLS:
            raise ValueError(f"{flat.size} indices exceed MAX_SYMBOLS={MAX_SYMBOLS}")
        if flat.size:
            lo, hi = int(flat.min()), int(flat.max())
            if lo < 0 or hi >= self.K:
                bad = lo if lo < 0 else hi
                raise ValueError(f"index {bad} outside the codebook [0, {self.K})")
        return flat.astype(np.int64)

    def encode(self, indices: np.ndarray) -> bytes:
        """Code ``indices`` (any shape, C order) to bytes; ``decode`` returns them flattened."""
        flat = self._check_indices(indices)
        n = flat.size
        symbols = flat.astype(np.int32).tolist()
        if n < MIN_CODED_SYMBOLS:  # see module docstring: compressai's small-input overflow
            symbols += [self._mode] * (MIN_CODED_SYMBOLS - n)
        m = len(symbols)
        data = ans.RansEncoder().encode_with_indexes(
            symbols, [0] * m, [self._cdf], [len(self._cdf)], [0]
        )
        return bytes(data)

    def decode(self, data: bytes, count: int) -> np.ndarray:
        """Decode ``count`` indices (int64, shape ``(count,)``) from untrusted ``data``.

        Raises :class:`BitstreamError` for anything wrong with ``data`` or ``count``; never
        reads outside the (padded) buffer.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise BitstreamError(f"entropy payload must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if isinstance(count, bool) or not isinstance(count, int | np.integer):
            raise BitstreamError(f"symbol count must be an integer, got {count!r}")
        count = int(count)
        if count < 0 or count > MAX_SYMBOLS:
            raise BitstreamError(f"symbol count {count} outside [0, MAX_SYMBOLS={MAX_SYMBOLS}]")
        # Cheap structural checks on what our encoder can have produced: whole 32-bit words,
        # at least the 2-word flush, at most the encoder's one-word-per-symbol buffer.
        n_coded = max(count, MIN_CODED_SYMBOLS)
        if len(data) % 4 or not 8 <= len(data) <= 4 * n_coded:
            raise BitstreamError(
                f"entropy payload of {len(data)} bytes cannot encode {count} symbols "
                f"(need a multiple of 4 in [8, {4 * n_coded}])"
            )
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        # Zero-pad so that every read the decoder can make stays inside our buffer.
        need = decode_read_bound(count)
        padded = data + bytes(max(0, need - len(data)) + 8)
        out = ans.RansDecoder().decode_with_indexes(
            padded, [0] * count, [self._cdf], [len(self._cdf)], [0]
        )
        arr = np.asarray(out, dtype=np.int64)
        if arr.shape != (count,):
            raise BitstreamError(f"entropy decoder returned {arr.shape}, expected ({count},)")
        bad = np.flatnonzero((arr < 0) | (arr >= self.K))
        if bad.size:  # unreachable with our CDF; kept as defence in depth
            raise BitstreamError(
                f"entropy payload decodes to symbol {int(arr[bad[0]])} outside the codebook "
                f"(K={self.K})"
            )
        return arr

    def ideal_bits(self, indices: np.ndarray) -> float:
        """``-sum log2 q(s)`` over ``indices`` under the coder's quantised PMF ``q``."""
        flat = self._check_indices(indices)
        return float(self._code_bits[flat].sum())
