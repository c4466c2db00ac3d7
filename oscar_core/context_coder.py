"""Coding index grids: the context model's range coder, and the per-stream choice of model.

``ContextCoder`` codes one rate's index grids under its ``context.RateContext`` (the
frequencies, exact integers, are ``context.py``'s); ``StreamCoder`` codes a grid under every
probability model the rate has and keeps the shortest payload.

Symbol order (what the payload holds)
    Wavefronts ``t = 2 i + j`` (t = 0, 1, ..., 2 (h - 1) + w - 1), in each one rows ``i``
    ascending. Every neighbour of a position lies on an earlier wavefront (L: t - 1,
    TR: t - 1, T: t - 2, TL: t - 3), so the decoder decodes a whole wavefront with one call
    (``2 h + w`` calls for an ``h x w`` grid, instead of ``h w``). The payload is
    ``constriction``'s range coder over that sequence, framed as in ``entropy.py``.
    Cost: ~0.05-0.1 ms per wavefront plus the frequency rows (K per index); a Kodak image
    decodes in 4-50 ms (bench section 7). A very wide grid cannot do better than ``w``
    steps (each row is a chain of left neighbours): a 1-row strip of 2000 codes takes
    ~0.1-0.2 s.

Safety on hostile payloads
    As ``IndexCoder.decode``: the payload length is bounded before decoding
    (``max_payload_bytes`` at 24 bits per symbol), work is linear in the symbol count (the
    caller bounds it by its pixel limit), memory per wavefront is ``min(h, w) x K``
    frequencies, every decoded symbol is in ``[0, K)``, and anything constriction raises
    becomes :class:`BitstreamError`.
"""

from __future__ import annotations

from functools import lru_cache

import constriction
import numpy as np

from .bitstream import ProbabilityModel
from .context import FREQ_BITS, RateContext, neighbour_positions
from .entropy import IndexCoder, check_indices, check_payload, frame, unframe, uniform_pmf
from .errors import BitstreamError

CODER_BITS = 24  # constriction's Categorical precision (a symbol costs at most 24 bits)
CHUNK_ELEMENTS = 1 << 16  # frequencies the encoder builds at once (in cache; 2**21: 1.4x slower)
_FAMILY = constriction.stream.model.Categorical(perfect=False)


@lru_cache(maxsize=8)
def wavefronts(h: int, w: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The coding order of an (h, w) grid: per wavefront t = 2 i + j, the flat positions of
    its symbols (rows ascending) and of their neighbours in the padded (h+1, w+2) grid
    (``neighbours``): ((m,), (m, 4))."""
    out = []
    for t in range(2 * (h - 1) + w if h and w else 0):
        i = np.arange(max(0, -(-(t - w + 1) // 2)), min(h - 1, t // 2) + 1, dtype=np.int64)
        if i.size:  # empty for odd t when w == 1
            at = (1 + i) * (w + 2) + 1 + t - 2 * i  # j = t - 2 i
            out.append((at, neighbour_positions(at, w + 2)))
    return tuple(out)


class ContextCoder:
    """Range coding of one rate's index grids under its :class:`RateContext`."""

    def __init__(self, tables: RateContext) -> None:
        self.tables = tables
        self.K = tables.K

    def _chunks(self, grid: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """A full grid (h, w) -> (its padded (h+1, w+2) copy, the flat positions of its
        symbols in coding order, in chunks of about ``CHUNK_ELEMENTS / K``)."""
        h, w = grid.shape
        padded = np.full((h + 1, w + 2), -1, dtype=np.int64)
        padded[1:, 1:-1] = grid
        order = np.concatenate([np.zeros(0, np.int64), *(at for at, _ in wavefronts(h, w))])
        step = max(1, CHUNK_ELEMENTS // self.K)
        return padded, [order[s : s + step] for s in range(0, order.size, step)]

    def _grid(self, grid: np.ndarray) -> np.ndarray:
        arr = np.asarray(grid)
        if arr.ndim != 2:
            raise ValueError(f"the context model codes a 2-D index grid, got shape {arr.shape}")
        return check_indices(arr, self.K).reshape(arr.shape)

    def encode(self, grid: np.ndarray) -> bytes:
        """Code an index grid (h, w) in wavefront order -> payload bytes."""
        padded, chunks = self._chunks(self._grid(grid))
        flat, row = padded.reshape(-1), padded.shape[1]
        encoder = constriction.stream.queue.RangeEncoder()
        for at in chunks:
            f = self.tables.frequencies(flat[neighbour_positions(at, row)])
            encoder.encode(flat[at].astype(np.int32), _FAMILY, f)
        return frame(encoder.get_compressed())

    def ideal_bits(self, grid: np.ndarray) -> float:
        """``-sum log2 (f(x) / 2**24)`` over the grid (the range coder adds its seal and the
        fixed-point rounding, a fraction of a bit per thousand symbols)."""
        padded, chunks = self._chunks(self._grid(grid))
        flat, row = padded.reshape(-1), padded.shape[1]
        bits = 0.0
        for at in chunks:
            f = self.tables.frequency_of(flat[neighbour_positions(at, row)], flat[at])
            bits += float(np.sum(FREQ_BITS - np.log2(f)))
        return bits

    def decode(self, data: bytes, height: int, width: int) -> np.ndarray:
        """Decode an (height, width) grid (int64) from untrusted ``data``; every problem
        with ``data`` raises :class:`BitstreamError`."""
        if height < 0 or width < 0:
            raise BitstreamError(f"grid {height}x{width} has a negative side")
        data, count = check_payload(data, height * width, CODER_BITS)
        if count == 0:
            return np.zeros((height, width), dtype=np.int64)
        padded = np.full((height + 1, width + 2), -1, dtype=np.int64)
        flat = padded.reshape(-1)  # a view: decoded symbols land in ``padded``
        try:
            decoder = constriction.stream.queue.RangeDecoder(unframe(data))
            for at, nb_at in wavefronts(height, width):
                flat[at] = decoder.decode(_FAMILY, self.tables.frequencies(flat[nb_at]))
        except Exception as e:  # noqa: BLE001 - constriction raises AssertionError/ValueError
            raise BitstreamError(f"context-coded payload does not decode: {e}") from None
        grid = padded[1:, 1:-1]
        if grid.min() < 0 or grid.max() >= self.K:  # unreachable by construction
            raise BitstreamError(f"context-coded payload decodes outside the codebook (K={self.K})")
        return np.ascontiguousarray(grid)


class StreamCoder:
    """One rate's probability models and the per-stream choice among them.

    ``encode`` codes an index grid under every model the rate has (uniform, static pmf,
    context model when fitted) and keeps the shortest payload (on a tie the first of
    uniform, static, context: the cheapest to decode), so a stream never costs more than
    fixed-length indices plus the coder's seal. The header says which (bitstream byte 10).
    """

    def __init__(self, static: IndexCoder, context: RateContext | None = None) -> None:
        self.K = static.K
        self.coders: dict[ProbabilityModel, IndexCoder | ContextCoder] = {
            ProbabilityModel.UNIFORM: IndexCoder(uniform_pmf(self.K)),
            ProbabilityModel.STATIC: static,
        }
        if context is not None:
            if context.K != self.K:
                raise ValueError(f"context model has K={context.K}, the rate has {self.K}")
            self.coders[ProbabilityModel.CONTEXT] = ContextCoder(context)

    def payloads(self, grid: np.ndarray) -> dict[ProbabilityModel, bytes]:
        """The payload of an (h, w) index grid under each of the rate's models."""
        return {model: coder.encode(grid) for model, coder in self.coders.items()}

    def encode(self, grid: np.ndarray) -> tuple[ProbabilityModel, bytes]:
        """(the model of the shortest payload, that payload)."""
        return min(self.payloads(grid).items(), key=lambda kv: (len(kv[1]), kv[0]))

    def decode(self, model: ProbabilityModel, data: bytes, height: int, width: int) -> np.ndarray:
        """Decode an (height, width) grid coded under ``model``; :class:`BitstreamError` for
        anything wrong with ``data``, or a model this rate does not have."""
        coder = self.coders.get(ProbabilityModel(model))
        if coder is None:
            raise BitstreamError(
                f"the stream was coded with the {ProbabilityModel(model).name.lower()} "
                "probability model, which this model directory does not have (oscar fit-context)"
            )
        if isinstance(coder, ContextCoder):
            return coder.decode(data, height, width)
        return coder.decode(data, height * width).reshape(height, width)
