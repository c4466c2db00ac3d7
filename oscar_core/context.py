"""The context model: the probability of a VQ index given its already-decoded neighbours.

The static pmf (``entropy.py``) ignores where an index sits; the model's codebooks are used
nearly uniformly, so it saves almost nothing. Neighbouring indices are far from independent
(smooth regions repeat codes, and a code's neighbours are near it in codebook space), so
each index is coded under a distribution built from its four causal neighbours::

        TL  T  TR            x at (i, j); TL = (i-1, j-1), T = (i-1, j), TR = (i-1, j+1),
        L   x                L = (i, j-1); a neighbour outside the grid is "absent" (-1)

    f(x) =   w_0          * static[x]                          (the rate's histogram)
           + sum_n w_t(n) * table_n[group(n), x]                (n in L, T, TL, TR)
           + sum_n w_c(n) * 2**16 * [x == n]                    (copy the neighbour)

``group`` maps each of the K codewords to one of G <= 64 clusters (k-means on the
codebook, fixed when fitted), so a table has G + 1 rows (row G: the neighbour is absent).
The 9 weights ``w`` depend on the *class* of the position, 8 bits: which neighbours agree
(L=T, L=TL, T=TL, T=TR, L=TR) and which are absent (L, T, TR). The weight of an absent
neighbour's copy term moves to ``w_0``. Fitting (``fitting.py``) estimates the tables from
a model's indices on training images and the weights by EM on held-out halves.

Integers only, so every machine derives the same frequencies
    ``static`` and every table row are integers >= 1 summing to 2**16; the weights of a
    class are integers summing to 2**8 with ``w_0 >= 1``. So every frequency is an integer
    >= 1 and every row sums to exactly 2**24 (int64 numpy arithmetic: exact, whatever the
    CPU, SIMD width, thread count or batch). The range coder (constriction's ``Categorical``
    family, ``perfect=False``, float64 input) then maps a row ``f`` to its 24-bit fixed-point
    CDF as ``floor(C(s) * (2**24 - K) / 2**24) + s`` with ``C(s) = f[0] + .. + f[s-1]``
    (``LazyContiguousCategoricalEntropyModel``): the partial sums are integers below 2**24,
    the scale ``(2**24 - K) / 2**24`` is a dyadic fraction, and their product is below 2**48,
    so every float operation in it is exact in float64: no rounding happens anywhere. Each
    frequency depends only on the position's neighbours and the stored tables, never on how
    many symbols are computed at once, so the encoder (all positions in one pass) and the
    decoder (one wavefront at a time) derive identical rows; golden bytes pin them
    (tests/oscar_core/test_context.py).

Coding (wavefront order, the range coder, the choice among models): ``context_coder.py``.

Storage: ``context.safetensors`` in the model directory (integer tensors ``{r}.groups``,
``{r}.static``, ``{r}.tables``, ``{r}.weights`` per rate ``r``); it is part of the model id
(``OscarModel.model_id``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

CONTEXT_NAME = "context.safetensors"
CONTEXT_FORMAT = "1"  # metadata "format": the layout below
TABLE_BITS = 16  # static and table rows sum to 2**16
WEIGHT_BITS = 8  # the weights of a class sum to 2**8
FREQ_BITS = TABLE_BITS + WEIGHT_BITS  # every frequency row sums to 2**24
MAX_GROUPS = 64
NEIGHBOURS = ("left", "top", "top_left", "top_right")
OFFSETS = ((0, -1), (-1, 0), (-1, -1), (-1, 1))  # (di, dj) of each neighbour
N_NEIGHBOURS = len(NEIGHBOURS)
N_COMPONENTS = 1 + 2 * N_NEIGHBOURS  # static, a table per neighbour, a copy per neighbour
N_CLASSES = 256  # 8 class bits (``context_class``)
FIELDS = ("groups", "static", "tables", "weights")  # per rate, in RateContext order


_EQ_A = np.array([0, 0, 1, 1, 0])  # class bits 0-4: neighbour pairs (L,T) (L,TL) (T,TL)
_EQ_B = np.array([1, 2, 2, 3, 3])  # (T,TR) (L,TR), in [L, T, TL, TR] columns
_ABSENT = np.array([0, 1, 3])  # class bits 5-7: L, T, TR absent


def context_class(nb: np.ndarray) -> np.ndarray:
    """Neighbours (m, 4) int64 [L, T, TL, TR], -1 = absent -> class (m,) int64 in [0, 256).

    Bits 0-4: L=T, L=TL, T=TL, T=TR, L=TR (both present and equal); bits 5-7: L, T, TR
    absent (TL is absent exactly when L or T is)."""
    first = nb[:, _EQ_A]
    bits = np.concatenate([(first == nb[:, _EQ_B]) & (first >= 0), nb[:, _ABSENT] < 0], axis=1)
    return np.packbits(bits, axis=1, bitorder="little")[:, 0].astype(np.int64)


def neighbours(padded: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Neighbours of positions (i, j) from ``padded`` = the grid inside a -1 border
    ((h+1, w+2): one row above, one column each side) -> (m, 4) int64 [L, T, TL, TR]."""
    row = padded.shape[1]
    return padded.reshape(-1)[neighbour_positions((1 + i) * row + 1 + j, row)]


def neighbour_positions(at: np.ndarray, row: int) -> np.ndarray:
    """Flat positions (m,) in a padded grid with rows of ``row`` -> their neighbours' (m, 4)."""
    return at[:, None] + np.array([di * row + dj for di, dj in OFFSETS])


def _check_table(name: str, a: np.ndarray, shape: tuple[int, ...], total: int) -> np.ndarray:
    if a.shape != shape or a.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integers of shape {shape}, got {a.dtype} {a.shape}")
    a = a.astype(np.int64)
    if a.min() < 1 or np.any(a.sum(axis=-1) != total):
        raise ValueError(f"{name}: entries must be >= 1 and every row must sum to {total}")
    return a


@dataclass(frozen=True, eq=False)
class RateContext:
    """The integer tables of one rate (validated on creation: ``ValueError``)."""

    groups: np.ndarray  # (K,) in [0, G): the k-means cluster of each codeword
    static: np.ndarray  # (K,) >= 1, sums to 2**16
    tables: np.ndarray  # (4, G + 1, K) >= 1, rows sum to 2**16; row G: neighbour absent
    weights: np.ndarray  # (256, 9) >= 0, rows sum to 2**8, column 0 (static) >= 1

    def __post_init__(self) -> None:
        groups = np.asarray(self.groups)
        if groups.ndim != 1 or groups.dtype.kind not in "iu" or not 2 <= groups.size:
            raise ValueError(f"groups: expected (K,) integers, got {groups.dtype} {groups.shape}")
        K = groups.size
        G = int(groups.max()) + 1
        if groups.min() < 0 or G > MAX_GROUPS:
            raise ValueError(f"groups must lie in [0, {MAX_GROUPS}), got [{groups.min()}, {G})")
        static = _check_table("static", np.asarray(self.static), (K,), 1 << TABLE_BITS)
        tables = np.asarray(self.tables)
        tables = _check_table("tables", tables, (N_NEIGHBOURS, G + 1, K), 1 << TABLE_BITS)
        weights = np.asarray(self.weights)
        if weights.shape != (N_CLASSES, N_COMPONENTS) or weights.dtype.kind not in "iu":
            raise ValueError(f"weights: expected ({N_CLASSES}, {N_COMPONENTS}) integers")
        weights = weights.astype(np.int64)
        if weights.min() < 0 or weights[:, 0].min() < 1:
            raise ValueError("weights must be >= 0, the static weight >= 1")
        if np.any(weights.sum(axis=1) != 1 << WEIGHT_BITS):
            raise ValueError(f"the weights of every class must sum to {1 << WEIGHT_BITS}")
        object.__setattr__(self, "groups", groups.astype(np.int64))
        object.__setattr__(self, "static", static)
        object.__setattr__(self, "tables", tables)
        object.__setattr__(self, "weights", weights)
        # Derived, for ``frequencies``: every row of static and tables in one (1 + 4 (G+1), K)
        # float32 array (integers < 2**16: exact), the row of neighbour n with value v at
        # 1 + n (G+1) + group(v) (group(-1) = G), and the weights as float32 (<= 256).
        rows = np.concatenate([static[None], tables.reshape(-1, K)]).astype(np.float32)
        object.__setattr__(self, "_rows", rows)
        object.__setattr__(self, "_group_of", np.concatenate([[G], groups]).astype(np.int64))
        object.__setattr__(self, "_row_offset", 1 + np.arange(N_NEIGHBOURS) * (G + 1))
        object.__setattr__(self, "_weights", weights.astype(np.float32))

    @property
    def K(self) -> int:
        return self.groups.size

    @property
    def G(self) -> int:
        return self.tables.shape[1] - 1

    def _mixture(self, nb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Neighbours (m, 4) -> (weights of static + 4 tables (m, 5), their table rows
        (m, 4), copy weights (m, 4), zero where the neighbour is absent)."""
        absent = nb < 0
        w = self._weights[context_class(nb)]  # (m, 9)
        copy_w = np.where(absent, np.float32(0), w[:, 1 + N_NEIGHBOURS :])
        mix = w[:, : 1 + N_NEIGHBOURS].copy()
        # an absent neighbour's copy weight goes to the static term: rows keep their sum
        mix[:, 0] += np.where(absent, w[:, 1 + N_NEIGHBOURS :], np.float32(0)).sum(axis=1)
        return mix, self._group_of[nb + 1] + self._row_offset, copy_w

    def frequencies(self, nb: np.ndarray) -> np.ndarray:
        """Neighbours (m, 4) [L, T, TL, TR] (-1 = absent) -> frequencies (m, K) float64,
        every entry an integer >= 1, every row summing to exactly 2**24 (module docstring).

        Integer arithmetic in float dtypes, exact: every value is a non-negative integer,
        every product (w <= 2**8 times t < 2**16) is below 2**24 and every partial sum of a
        row is at most the row's total 2**24, and float32 represents every integer up to
        2**24 exactly; so each operation is exact in any order, blocking or SIMD width, and
        the float64 rows constriction takes hold the same integers."""
        mix, rows, copy_w = self._mixture(nb)
        f = mix[:, :1] * self._rows[0]  # (m, K) float32, the static term
        f += np.einsum("mn,mnk->mk", mix[:, 1:], self._rows[rows])  # the 4 table terms
        f = f.astype(np.float64)
        m = np.arange(nb.shape[0])
        np.add.at(f, (m[:, None], np.maximum(nb, 0)), copy_w * (1 << TABLE_BITS))  # copies
        return f

    def frequency_of(self, nb: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``frequencies(nb)[k, x[k]]`` for each k without building the rows: (m,)."""
        mix, rows, copy_w = self._mixture(nb)
        f = (mix[:, 0] * self._rows[0, x]).astype(np.float64)
        for n in range(N_NEIGHBOURS):
            f += mix[:, 1 + n] * self._rows[rows[:, n], x]
        return f + ((nb == x[:, None]) * copy_w).sum(axis=1) * (1 << TABLE_BITS)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The tensors stored in ``context.safetensors`` (compact dtypes)."""
        return {
            f"{prefix}.groups": self.groups.astype(np.uint16),
            f"{prefix}.static": self.static.astype(np.int32),
            f"{prefix}.tables": self.tables.astype(np.uint16),  # entries <= 2**16 - 1
            f"{prefix}.weights": self.weights.astype(np.uint16),
        }


@dataclass(frozen=True, eq=False)
class ContextModel:
    """The context model of every rate of a model (``rates[r]`` for ladder rate ``r``)."""

    rates: tuple[RateContext, ...]
    images: int = 0  # training images it was fitted on (metadata, not part of the id)

    def digest(self) -> bytes:
        """SHA-256 over every stored tensor (name, dtype, shape, bytes), in name order."""
        h = hashlib.sha256(f"oscar-context-{CONTEXT_FORMAT}".encode())
        for name, a in sorted(self.arrays().items()):
            h.update(f"{name}|{a.dtype}|{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        return h.digest()

    def with_rate(self, rate_index: int, tables: RateContext) -> ContextModel:
        """This model with rate ``rate_index``'s tables replaced (``OscarModel.take_rates``)."""
        rates = list(self.rates)
        rates[rate_index] = tables
        return ContextModel(tuple(rates), self.images)

    def arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for r, rc in enumerate(self.rates):
            out.update(rc.arrays(str(r)))
        return out

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONTEXT_NAME
        metadata = {"format": CONTEXT_FORMAT, "images": str(self.images)}
        save_file(self.arrays(), str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, directory: str | Path, codebook_sizes: list[int]) -> ContextModel:
        """Read and validate ``context.safetensors`` for a ladder with these K per rate."""
        path = Path(directory) / CONTEXT_NAME
        try:
            with safe_open(str(path), framework="numpy") as f:
                metadata = f.metadata() or {}
            arrays = load_file(str(path))
        except (OSError, ValueError, SafetensorError) as exc:
            raise ValueError(f"{path}: not a readable safetensors file: {exc}") from exc
        if metadata.get("format") != CONTEXT_FORMAT:
            raise ValueError(
                f"{path}: format {metadata.get('format')!r}, expected {CONTEXT_FORMAT!r}"
            )
        expected = {f"{r}.{k}" for r in range(len(codebook_sizes)) for k in FIELDS}
        if set(arrays) != expected:
            raise ValueError(
                f"{path}: tensors {sorted(set(arrays) ^ expected)[:6]} missing or unexpected "
                f"for a {len(codebook_sizes)}-rate ladder"
            )
        rates = []
        for r, K in enumerate(codebook_sizes):
            try:
                rc = RateContext(*(arrays[f"{r}.{k}"] for k in FIELDS))
            except ValueError as exc:
                raise ValueError(f"{path}: rate {r}: {exc}") from None
            if rc.K != K:
                raise ValueError(f"{path}: rate {r} has K={rc.K}, the ladder says {K}")
            rates.append(rc)
        try:
            images = int(metadata.get("images", "0"))
        except ValueError:
            images = 0
        return cls(tuple(rates), images)
